"""`agentd label`: the right action for a decision, as a person says it; `agentd label export`: the labels as an eval set."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import click

from agentd.cli._common import _emit_json, _find, _load, config_option, json_option, main
from agentd.errors import AgentdError
from agentd.state.labels import MAX_BY, MAX_NOTE


class _LabelGroup(click.Group):
    """`agentd label ID ACTION` is short for `agentd label add ID ACTION`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["add", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_LabelGroup)
def label() -> None:
    """Labels: the right action for a decision. `agentd label ID ACTION [--note TEXT]
    [--by NAME]` records one (short for `agentd label add`); `agentd label export` writes
    the labelled decisions as an `agentd eval` set; `agentd report` measures each model on
    them. Approving a decision labels it with the requested action; `agentd reject ID
    --action A` labels it A.
    """


@label.command("add")
@config_option
@json_option
@click.argument("ident")
@click.argument("action")
@click.option("--note", default="", help=f"Why, kept with the label and in the audit trail (at most {MAX_NOTE} characters).")
@click.option("--by", default=None, help=f"Who labels, at most {MAX_BY} characters (default: the local user).")
def add(config_path: Path | None, as_json: bool, ident: str, action: str, note: str, by: str | None) -> None:
    """Record ACTION as the right action for a decision (the daemon must be running).

    IDENT is a decision id, a unique prefix of one (8+ characters), or an event id; ACTION
    is one of the decision's skill's actions. The decision itself is not changed. A
    decision may be labelled again: the latest label counts. Stored and audited.
    Example: agentd label 3f2a9c1e defrost --note "iced up; the door was shut"
    """
    import getpass

    from agentd.control.client import request
    from agentd.state import queries

    loaded = _load(config_path)
    who = by or f"local:{getpass.getuser()}"
    with contextlib.suppress(AgentdError):  # accept the short ids `agentd decisions` shows; else the daemon says what is wrong
        ident = _find(queries.open_readonly(loaded.config.data_dir), ident)["id"]
    row: dict[str, Any] = request(loaded.config.socket_path, {"op": "label", "id": ident, "action": action, "note": note, "by": who})
    if as_json:
        _emit_json(row)
    else:
        click.echo(f"{row['decision_id']}: labelled {row['action']} by {row['by']} (label {row['id']}, event {row['event_id']})")


@label.command("export")
@config_option
@click.option("--skill", default=None, help="Only this skill's decisions.")
@click.option("--since", "hours", type=click.FloatRange(0, 24 * 3650, min_open=True), default=None,
              help="Only decisions labelled in the last HOURS hours (by their latest label).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to FILE (replaced whole) instead of standard output.")
def export(config_path: Path | None, skill: str | None, hours: float | None, output: Path | None) -> None:
    """The labelled decisions as an `agentd eval` set: one JSON line per decision,
    {"id": EVENT_ID, "skill": ..., "data": THE_DECISION'S_INPUTS, "label": LATEST_LABEL},
    oldest label first. Reads the database directly.

    Example: agentd label export --skill freezer_health -o labelled.jsonl && agentd eval labelled.jsonl
    """
    import time

    from agentd.files import replace_atomically
    from agentd.state import labels, queries

    conn = queries.open_readonly(_load(config_path).config.data_dir)
    since = time.time() - hours * 3600 if hours else None
    lines = [json.dumps(line, ensure_ascii=False) + "\n" for line in labels.export(conn, skill=skill, since=since)]
    if output is None:
        click.echo("".join(lines), nl=False)
        return
    try:
        replace_atomically(output, "".join(lines).encode())
    except OSError as exc:
        raise click.FileError(str(output), exc.strerror) from exc
    click.echo(f"wrote {len(lines)} labelled decision(s) to {output}", err=True)
