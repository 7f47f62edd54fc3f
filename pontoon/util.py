"""Small helpers shared by unrelated modules."""

from __future__ import annotations

from pathlib import Path


def last_line(path: Path) -> str:
    """The last non-empty line of a log file, or "" (for one-line error messages)."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""
