"""The userland proxy over IPv6 (issue 13's proxy part): IPv6-only and
dual-stack published sockets, TCP and UDP, backends of either family, and
UDP replies from the very address each client sent to. Runs the real proxy
(supervisor and two workers) in a namespace that dies with the check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("proxy_families.py")


def test_proxy_serves_both_families_and_answers_from_the_address_used():
    proc = subprocess.run(
        ["unshare", "--net", "--", sys.executable, str(SCRIPT)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answers == {check: "echo:hi" for check in answers}, answers
    assert len(answers) == 6
