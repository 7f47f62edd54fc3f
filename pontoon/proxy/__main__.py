"""`python -m pontoon.proxy --control PATH [--workers N]`: the host's userland proxy.

Started (detached) by the daemon through `pontoon.proxy.client.spawn`: this
process is the supervisor, which starts the workers; see
`pontoon.proxy.server` for the design.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
from pathlib import Path

from pontoon.proxy.server import run
from pontoon.proxy.supervisor import WorkerOptions
from pontoon.proxy.udp import DEFAULT_MAX_FLOWS


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    return len(os.sched_getaffinity(0)) or 1


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError("must be 1-1024")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pontoon.proxy", description="pontoon userland proxy"
    )
    parser.add_argument("--control", required=True, help="control socket path")
    parser.add_argument(
        "--udp-timeout", type=_positive, default=30.0, help="idle UDP flow lifetime (s)"
    )
    parser.add_argument(
        "--udp-max-flows", type=int, default=DEFAULT_MAX_FLOWS, help="flows per UDP mapping"
    )
    parser.add_argument(
        "--workers", type=_count, default=None, help="worker processes (default: one per CPU)"
    )
    parser.add_argument(
        "--accept-wakeup",
        choices=["exclusive", "all"],
        default="exclusive",
        help="wake one idle worker per TCP connection (EPOLLEXCLUSIVE), or all of them",
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info"
    )
    return parser.parse_args(argv)


def raise_fd_limit(target: int = 1 << 20) -> None:
    # Two fds per TCP connection, six while bytes are in flight: take many.
    # As root (CAP_SYS_RESOURCE) the hard limit itself may go up to nr_open.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        nr_open = hard
    want = min(target, nr_open)
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    raise_fd_limit()
    options = WorkerOptions(
        udp_timeout=args.udp_timeout,
        udp_max_flows=max(1, args.udp_max_flows),
        accept=args.accept_wakeup,
        log_level=args.log_level,
    )
    workers = args.workers or default_workers()
    return asyncio.run(run(Path(args.control), workers, options))


if __name__ == "__main__":
    sys.exit(main())
