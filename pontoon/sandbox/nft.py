"""Running an nft script in the current thread's network namespace.

Through the `nft` binary, not libnftables: a libnftables context opened late
in the daemon's life gets a socket above fd 1023, and Debian 12's libnftables
polls it with select(), which glibc answers by aborting the process. The
daemon's own long-lived context is opened at start-up, with a low fd.
"""

from __future__ import annotations

import subprocess


def run_script(script: str) -> None:
    # The child inherits the calling thread's network namespace.
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        raise OSError(f"nft: {proc.stderr.strip()}")
