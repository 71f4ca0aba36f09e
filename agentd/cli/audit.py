"""Audit commands of the `agentd` CLI: audit verify, audit export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from agentd.cli._common import _emit_json, _load, config_option, json_option, main
from agentd.errors import AgentdError, InputError


@main.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
@config_option
@json_option
def audit_verify(config_path: Path | None, as_json: bool) -> None:
    """Verify the hash chain, signed checkpoints and decision digests; name the first bad record.

    Exit 0 if intact, 1 if not.
    """
    from agentd.state import queries
    from agentd.trust.keys import load_key

    loaded = _load(config_path)
    conn = queries.open_readonly(loaded.config.data_dir)
    try:
        trusted = load_key(loaded.config.data_dir).public_b64
    except AgentdError:
        trusted = None
    result = queries.verify_audit(conn, trusted_key=trusted)
    if as_json:
        _emit_json(result.as_dict())
    elif result.ok:
        click.echo(f"audit trail intact: {result.records} record(s), {result.checkpoints} signed checkpoint(s)")
    else:
        click.echo(f"audit trail BROKEN at record {result.first_bad_seq}: {result.problem}")
    sys.exit(0 if result.ok else 1)


@audit.command("export")
@config_option
@click.option("--after", type=click.IntRange(0), default=0, help="Only records after this sequence number.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File (default: stdout).")
@click.option("--mark", is_flag=True, help="Record the export so retention may prune what a signed checkpoint covers.")
def audit_export(config_path: Path | None, after: int, output: Path | None, mark: bool) -> None:
    """Write audit records as JSON lines (for a SIEM).

    Example: agentd audit export --after 1200 -o audit.jsonl
    """
    import sqlite3

    from agentd.state import queries

    loaded = _load(config_path)
    conn = queries.open_readonly(loaded.config.data_dir)
    out = output.open("w") if output else sys.stdout
    last = after
    try:
        for rec in queries.export_audit(conn, after):
            out.write(json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n")
            last = rec["seq"]
    finally:
        if output:
            out.close()
    if mark and after > int(queries.get_setting(conn, "audit_exported_seq") or 0):
        raise InputError("--mark needs an export that starts at or before the last marked one (records would be skipped)")
    if mark and last > after:
        rw = sqlite3.connect(queries.db_path(loaded.config.data_dir), timeout=10)
        with rw:
            rw.execute("INSERT OR REPLACE INTO settings(key, value) VALUES ('audit_exported_seq', ?)", (str(last),))
        rw.close()
