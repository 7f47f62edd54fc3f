"""Every `pontoon` line in README.md and docs/*.md names commands and options
the CLI has (issue 16): parsed by the CLI's own parser, nothing run. The
integration test tests/integration/test_readme_tour.py runs them."""

from __future__ import annotations

import warnings

import click
import pytest

from pontoon.cli.main import cli
from tests.docs_commands import Command, commands, doc_files, readme_tour, shell_blocks


def doc_commands() -> list[tuple[str, Command]]:
    return [
        (path.name, cmd)
        for path in doc_files()
        for block in shell_blocks(path.read_text())
        for cmd in commands(block)
        if cmd.is_pontoon
    ]


def parse(argv: list[str]) -> click.Command:
    """The command `argv` reaches, its options and arguments checked."""
    command: click.Command = cli
    ctx = command.make_context("pontoon", list(argv))
    while isinstance(command, click.Group):
        with warnings.catch_warnings():  # click 8.2 moves protected_args into args
            warnings.simplefilter("ignore", DeprecationWarning)
            rest = [*ctx.protected_args, *ctx.args]
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        command, ctx = sub, sub.make_context(name, rest, parent=ctx)
    return command


@pytest.mark.parametrize(("doc", "cmd"), doc_commands(), ids=lambda x: getattr(x, "line", x))
def test_doc_line_parses(doc: str, cmd: Command) -> None:
    try:
        parse(cmd.argv[1:])
    except click.ClickException as exc:
        pytest.fail(f"{doc}: {cmd.line!r}: {exc.format_message()}")


def test_the_tour_is_read_from_the_readme() -> None:
    single, lab = readme_tour()
    lines = [c.line for c in single]
    create = lines.index("pontoon network create --subnet 10.60.0.0/24 other")
    assert create < next(i for i, line in enumerate(lines) if "connect --ip 10.60.0.9" in line)
    assert single[0].background and any(c.stdout_to == "topo.svg" for c in single)
    assert lab[0].argv[:3] == ["pontoon", "lab", "up"]


def test_parser_joins_continuations_and_quotes() -> None:
    block = "api -X POST -d '{\"a\":\n  1}' \\\n    http://x/y   # note\n\n# only a comment\n"
    (cmd,) = commands(block)
    assert cmd.argv == ["api", "-X", "POST", "-d", '{"a":\n  1}', "http://x/y"]


def test_a_wrong_option_is_caught() -> None:
    with pytest.raises(click.ClickException):
        parse(["network", "connect", "--nope", "other", "c1"])
