"""Regenerate docs/CLI.md from the commands' own --help (run: .venv/bin/python scripts/cli_docs.py).

Every leaf command, in the order the CLI declares them, after the top-level help. Pass
--check to exit 1 when docs/CLI.md is out of date instead of writing it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click
from click.testing import CliRunner

from agentd.cli import main

OUT = Path(__file__).resolve().parent.parent / "docs" / "CLI.md"
HEAD = (
    "# agentd CLI reference\n\nGenerated from `agentd COMMAND --help` by `scripts/cli_docs.py`. Exit codes: 0 ok,"
    " 1 check failed / not found, 2 usage or bad input, 3 daemon unreachable.\n"
)


def leaves(group: click.Group, path: list[str]) -> Iterator[list[str]]:
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            if cmd.invoke_without_command:  # a group that is a command itself (agentd peers)
                yield [*path, name]
            yield from leaves(cmd, [*path, name])
        else:
            yield [*path, name]


def render() -> str:
    runner = CliRunner()
    parts = [HEAD]
    for path in [[], *leaves(main, [])]:
        result = runner.invoke(main, [*path, "--help"], prog_name="agentd", terminal_width=78)  # what an 80-column terminal gives click
        assert result.exit_code == 0, result.output
        parts.append(f"## agentd {' '.join(path)}\n\n```\n{result.output.rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")
