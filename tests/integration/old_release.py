"""Run an earlier pontoon release next to the tree under test (issue 10, item 5).

`materialise(commit, dest)` writes that commit's `pontoon/` package into
DEST with `git archive` from this repository's history. A SimHost (or lab
host) given `pythonpath=str(dest)` then runs THAT release's pontoond and CLI
with the same virtualenv interpreter: PYTHONPATH comes before the editable
install on sys.path, so the old package shadows the new one. `materialise`
checks that this really happens by asking the interpreter where it imported
pontoon from.

The upgrade tests make their state with the old release's own code this way,
then start the daemon of the current tree on the same --root/--exec-root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The release whose stores the new core must take over (issue 10, item 5).
UPGRADE_FROM = "a2ce7c8"

# The modules an old daemon, CLI and userland proxy import first; each must
# come from the materialised tree.
_PROBE = (
    "import json, pontoon, pontoon.daemon.main, pontoon.cli.main, pontoon.proxy\n"
    "print(json.dumps([m.__file__ for m in (pontoon, pontoon.daemon.main, pontoon.cli.main,"
    " pontoon.proxy)]))\n"
)


class ReleaseMissing(RuntimeError):
    """The commit is not in this clone's history (a shallow clone?)."""


def materialise(commit: str, dest: Path) -> Path:
    """Extract `commit`'s pontoon/ package under `dest`; return `dest`, ready
    to be a SimHost's `pythonpath`."""
    _check_commit(commit)
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(
        ["git", "-C", str(REPO_ROOT), "archive", commit, "pontoon"], stdout=subprocess.PIPE
    )
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=False)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise ReleaseMissing(f"could not extract pontoon/ of {commit} into {dest}")
    assert_imports_from(dest)
    return dest


def _check_commit(commit: str) -> None:
    proc = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ReleaseMissing(
            f"commit {commit} (the release the upgrade test starts from) is not in the history "
            f"of {REPO_ROOT}: the upgrade test needs a full clone (`git fetch --unshallow`)"
        )


def assert_imports_from(tree: Path) -> None:
    """The venv interpreter with PYTHONPATH=tree, started from tree as the
    daemon is, imports pontoon from `tree` and not from the editable install."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=dict(os.environ, PYTHONPATH=str(tree)),
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files = [Path(f).resolve() for f in json.loads(out)]
    stray = [str(f) for f in files if not f.is_relative_to(tree.resolve())]
    assert not stray, f"PYTHONPATH={tree} does not shadow the installed pontoon: {stray}"
