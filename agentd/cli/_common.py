"""What the `agentd` commands share: the group, --config and --json, loading, tables, JSON arguments."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agentd.errors import AgentdError

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig


F = TypeVar("F", bound=Callable[..., Any])


def config_option(fn: F) -> F:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Config file (default: $AGENTD_CONFIG, /etc/agentd/agentd.yaml, ./config/agentd.yaml).",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def event_input(fn: F) -> F:
    """--config, --json, the SKILL argument and --data: what `decide` and `submit` take."""
    fn = click.option("--data", required=True, help="The event's fields as a JSON object.")(fn)
    return config_option(json_option(click.argument("skill")(fn)))


def _load(config_path: Path | None) -> LoadedConfig:
    from agentd.config.loader import find_config, load_config

    return load_config(find_config(config_path))


def _query(config_path: Path | None, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(conn, *args)`` on the node's database, read-only (works while the daemon is stopped)."""
    from agentd.state import queries

    return fn(queries.open_readonly(_load(config_path).config.data_dir), *args)


def _json_or(as_json: bool, obj: Any) -> bool:
    """With --json, print ``obj`` and return True; otherwise False (the caller prints its table)."""
    if as_json:
        _emit_json(obj)
    return as_json


def _list(
    config_path: Path | None, as_json: bool, query: Callable[..., list[dict[str, Any]]], *,
    what: str, columns: list[str], row: Callable[[dict[str, Any]], Iterable[Any]],
) -> None:
    """The rows of ``query`` on the node's database: as JSON with --json, else a table titled "N <what>"."""
    rows = _query(config_path, query)
    if not _json_or(as_json, rows):
        _table(f"{len(rows)} {what}", columns, (row(r) for r in rows))


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def _table(title: str, columns: list[str], rows: Iterable[Iterable[Any]]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for c in columns:
        table.add_column(c, overflow="fold", no_wrap=c in ("id", "decision", "time", "node", "action"))
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)


def _width() -> int:
    import shutil

    return shutil.get_terminal_size((200, 24)).columns if sys.stdout.isatty() else 200


def _parse_json_arg(text: str, what: str) -> Any:
    """A JSON argument, parsed with the same bounds as every other untrusted input (agentd.untrusted)."""
    from agentd.trust.untrusted import parse_json

    return parse_json(text.encode("utf-8", "surrogatepass"), max_bytes=1024 * 1024, what=what)


class AgentdGroup(click.Group):
    """Maps AgentdError to one stderr line and its exit code; anything else keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AgentdError as exc:
            click.echo(f"agentd: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=AgentdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentd")
def main() -> None:
    """agentd: local AI decisions on edge boxes, with deadlines, a rules floor and a signed audit trail."""


def _print_decision(d: dict[str, Any], as_json: bool) -> None:
    if _json_or(as_json, d):
        return
    reason = f" (fallback: {d['fallback_reason']})" if d.get("fallback_reason") else ""
    guard = f" (guard {d['guard']})" if d.get("guard") else ""
    conf = f" confidence {d['confidence']:.2f}" if d.get("confidence") is not None else ""
    click.echo(f"{d['action']}  [{d['status']}; source {d['source']}{conf}{reason}{guard}; {d['latency_ms']} ms]")
    click.echo(f"decision {d['id']}  event {d['event_id']}")


def _ts(epoch: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _find(conn: Any, ident: str) -> dict[str, Any]:
    from agentd.errors import NotFound
    from agentd.state import queries

    try:
        return queries.get_decision(conn, ident)
    except NotFound as exc:
        if len(ident) < 8:
            raise NotFound(f"{exc}; a short id needs at least 8 characters") from None
        rows = conn.execute("SELECT id FROM decisions WHERE id LIKE ? LIMIT 2", (ident.replace("%", "") + "%",)).fetchall()
        if len(rows) != 1:
            raise
        return queries.get_decision(conn, rows[0][0])
