"""The shell commands a reader can paste from README.md and docs/*.md, read from
the Markdown itself so that the tests replaying them keep the docs true
(issue 16)."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_LANGUAGES = ("", "sh", "shell", "console")


@dataclasses.dataclass
class Command:
    line: str  # as written, for messages
    argv: list[str]  # comments dropped, quotes resolved
    stdout_to: str = ""  # `> FILE`
    background: bool = False  # `&`

    @property
    def is_pontoon(self) -> bool:
        return bool(self.argv) and self.argv[0] == "pontoon"


def section(text: str, heading: str) -> str:
    """The Markdown under `heading` (any level) up to the next heading of the
    same or a higher level."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip("#").strip() == heading and line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            rest = []
            for later in lines[i + 1 :]:
                marks = len(later) - len(later.lstrip("#"))
                if later.startswith("#") and marks <= level and not in_fence(rest):
                    break
                rest.append(later)
            return "\n".join(rest)
    raise LookupError(f"no heading {heading!r}")


def in_fence(lines: list[str]) -> bool:
    return sum(1 for line in lines if FENCE.match(line)) % 2 == 1


def shell_blocks(text: str) -> list[str]:
    """Fenced blocks with no language or a shell one; `$ ` transcripts (output
    shown after a prompt) are examples to read, not to paste."""
    blocks, current, language = [], None, ""
    for line in text.splitlines():
        match = FENCE.match(line)
        if match and current is None:
            current, language = [], match.group(1)
        elif match and current is not None:
            if language in SHELL_LANGUAGES and not any(x.startswith("$ ") for x in current):
                blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def commands(block: str) -> list[Command]:
    """One Command per shell line (backslash continuations and quotes that
    span lines joined)."""
    out = []
    pending = ""
    for raw in block.replace("\\\n", " ").splitlines():
        line = f"{pending}\n{raw}" if pending else raw
        try:
            argv = shlex.split(line, comments=True)
        except ValueError:  # a quote still open: the command goes on
            pending = line
            continue
        pending = ""
        if not argv:
            continue
        cmd = Command(" ".join(line.split()), argv)
        if argv[-1] == "&":
            cmd.argv, cmd.background = argv[:-1], True
        if len(cmd.argv) >= 2 and cmd.argv[-2] == ">":
            cmd.stdout_to, cmd.argv = cmd.argv[-1], cmd.argv[:-2]
        out.append(cmd)
    if pending:
        raise ValueError(f"unclosed quote in: {pending!r}")
    return out


def readme_tour() -> tuple[list[Command], list[Command]]:
    """The README's short tour: the single-host block, then the lab block."""
    blocks = shell_blocks(section(README.read_text(), "A short tour"))
    if len(blocks) != 2:
        raise AssertionError(f"the tour has {len(blocks)} command blocks, expected 2")
    return commands(blocks[0]), commands(blocks[1])


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]
