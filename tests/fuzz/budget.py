"""Time-bounded runs of hypothesis harnesses.

Each harness is a `@given` function; `run_for` calls it again and again, each
call a fresh batch of random examples, until FUZZ_SECONDS have passed. The
test suite runs every harness for a few seconds (so CI exercises them all);
`make fuzz` runs each for FUZZ_SECONDS=60, or whatever the caller sets.
A failure prints the shrunk example and a `@reproduce_failure` blob."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from hypothesis import HealthCheck, Phase, settings

DEFAULT_SECONDS = 2.0


def fuzz_seconds() -> float:
    return float(os.environ.get("FUZZ_SECONDS", DEFAULT_SECONDS))


def fuzz_settings(batch: int = 200) -> settings:
    """`batch` examples per call; no example database (a CI clone starts empty
    and a developer's tree stays clean), no per-example deadline (the machine
    is shared, timing is noise), and no "explain" phase (its report of a
    failing example can lose the example's arguments)."""
    return settings(
        max_examples=batch,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def run_for(harness: Callable[[], None], seconds: float | None = None) -> int:
    """Run `harness` in rounds until the budget is spent (at least once);
    the number of rounds."""
    deadline = time.monotonic() + (fuzz_seconds() if seconds is None else seconds)
    rounds = 0
    while True:
        harness()
        rounds += 1
        if time.monotonic() >= deadline:
            return rounds
