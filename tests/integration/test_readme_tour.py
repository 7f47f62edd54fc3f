"""The README's short tour, replayed command by command from README.md itself
(issue 16): on a throwaway host with only `lo` (the daemon is the fixture's),
then the multi-host lab under a lab name of this run. A README line that
cannot run as written fails here."""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pontoon.lab import cluster
from pontoon.lab.hosts import bin_path
from tests.conftest import new_lab_name
from tests.docs_commands import ROOT, Command, commands, readme_tour, section, shell_blocks

pytestmark = pytest.mark.integration

DOCS = {name: ROOT / "docs" / f"{name}.md" for name in ("api", "dns", "overlay", "trace")}

# What some lines must print, beyond exiting 0 (keyed by the line's argv).
EXPECT = {
    ("pontoon", "port", "pub"): ["53/udp -> 0.0.0.0:5353", "80/tcp -> 0.0.0.0:12580"],
    ("pontoon", "exec", "c1", "getent", "hosts", "pub"): [" pub"],
    ("pontoon", "trace", "--from", "c1", "--to", "host:12580/tcp"): ["verdict: delivered"],
}


def check_output(cmd: Command, stdout: str) -> None:
    for expected in EXPECT.get(tuple(cmd.argv), []):
        assert expected in stdout, f"{cmd.line!r} printed:\n{stdout}"


def setup_lines(commands: list[Command]) -> list[Command]:
    """The tour starts the daemon and sets PATH: the fixture did both."""
    head = commands[:2]
    assert head[0].background and Path(head[0].argv[0]).name == "pontoond", head[0].line
    assert head[1].argv[0] == "export", head[1].line
    return commands[2:]


def replay(host, cmd: Command, workdir: Path) -> str:
    assert cmd.is_pontoon, f"not a pontoon command: {cmd.line!r}"
    proc = host.cli(*cmd.argv[1:], check=False)
    assert proc.returncode == 0, (
        f"doc line failed: {cmd.line}\n{proc.stdout}{proc.stderr}\n{host.log_tail()}"
    )
    check_output(cmd, proc.stdout)
    if cmd.stdout_to:
        (workdir / cmd.stdout_to).write_text(proc.stdout)
    return proc.stdout


def test_single_host_tour(make_host, tmp_path):
    """The README's tour, and docs/trace.md's examples on its state before the `rm`."""
    host = make_host()  # a namespace with only lo: no default route
    single, _ = readme_tour()
    trace_examples = [c for b in shell_blocks(DOCS["trace"].read_text()) for c in commands(b)]
    seen = []
    for cmd in setup_lines(single):
        if cmd.argv[:2] == ["pontoon", "rm"]:
            for example in trace_examples:
                replay(host, example, tmp_path)
        replay(host, cmd, tmp_path)
        seen.append(tuple(cmd.argv))
    assert set(EXPECT) <= set(seen), "an expectation names a line the README lost"
    svg = ET.fromstring((tmp_path / "topo.svg").read_text())
    assert svg.tag.endswith("svg")
    assert host.cli_json("ps", "-a", "--format", "json") == []
    assert [n["Name"] for n in host.cli_json("network", "ls", "--format", "json")] == ["bridge"]


def in_lab(lab: str, line: str) -> str:
    """A lab line, pointed at this run's lab: `--name LAB`, `lab://LAB/hN`."""
    line = line.replace("lab://", f"lab://{lab}/")
    return re.sub(r"\bpontoon lab (up|down|status)\b", rf"pontoon lab \1 --name {lab}", line)


def bash(script: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Lines as a reader pastes them into a shell, `pontoon` on the PATH."""
    env = {**os.environ, "PATH": f"{Path(bin_path('pontoon')).parent}:{os.environ['PATH']}"}
    env.pop("PONTOON_HOST", None)
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def replay_lab(lab: str, lines: list[Command], workdir: Path) -> None:
    try:
        for cmd in lines:
            proc = bash(in_lab(lab, cmd.line), workdir)
            assert proc.returncode == 0, f"doc line failed: {cmd.line}\n{proc.stdout}{proc.stderr}"
    finally:
        if (cluster.STATE_ROOT / lab).exists():
            cluster.down(lab)


def test_lab_tour(tmp_path):
    _, lab_lines = readme_tour()
    lab = new_lab_name()
    assert lab_lines[0].argv[:3] == ["pontoon", "lab", "up"]
    assert lab_lines[-1].argv[:3] == ["pontoon", "lab", "down"]
    replay_lab(lab, lab_lines, tmp_path)
    assert not (cluster.STATE_ROOT / lab / "state.json").exists()


def test_overlay_and_dns_docs(tmp_path):
    """docs/overlay.md's lab, with docs/dns.md's debugging lines run on it
    before `lab status` and `lab down`."""
    overlay = commands(shell_blocks(DOCS["overlay"].read_text())[1])
    debugging = commands(shell_blocks(section(DOCS["dns"].read_text(), "Debugging"))[0])
    end = next(i for i, c in enumerate(overlay) if c.argv[:3] == ["pontoon", "lab", "status"])
    assert overlay[0].argv[:3] == ["pontoon", "lab", "up"] and debugging
    replay_lab(new_lab_name(), overlay[:end] + debugging + overlay[end:], tmp_path)


def test_api_doc_examples(make_host, tmp_path):
    """docs/api.md's curl examples against a fresh daemon, as a shell runs them."""
    host = make_host()
    blocks = shell_blocks(DOCS["api"].read_text())
    assert len(blocks) == 2
    out = []
    for block in blocks:
        assert block.startswith("S=/run/pontoon/pontoon.sock\n"), block[:40]
        script = block.replace("S=/run/pontoon/pontoon.sock", f"S={host.socket}", 1)
        proc = bash(script, tmp_path)
        assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{host.log_tail()}"
        out.append(proc.stdout)
    assert out[0].strip() == "OK"
    # Every call answers without an error, but the last, which shows one.
    assert out[1].count('"message"') == 1, out[1]
    assert out[1].rstrip().endswith('{"message": "no such network: nope"} 404'), out[1]
    assert '{"StatusCode": 3}' in out[1]
    assert b"working" in (tmp_path / "job.stream").read_bytes()
    assert host.cli_json("ps", "-a", "--format", "json") == []
