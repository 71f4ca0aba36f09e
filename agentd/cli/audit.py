"""Audit commands of the `agentd` CLI: audit verify, audit export."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agentd.cli._common import _emit_json, _load, config_option, json_option, main
from agentd.errors import InputError, TrustError

if TYPE_CHECKING:
    import sqlite3

    from agentd.config.loader import LoadedConfig
    from agentd.ops.fleet_audit import FleetCheck
    from agentd.trust.audit import VerifyResult


@main.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
@config_option
@json_option
@click.option("--public-key", "public_key", default=None, metavar="KEY|FILE",
              help="The node's public key to verify against: base64, a node.pub file, or a backup's folder or manifest.json"
                   " (default: trust.audit_public_key, then keys/node.pub).")
@click.option("--export", "exports", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Verify this file of `agentd audit export` offline, without the database; repeat it for consecutive exports.")
@click.option("--with-database", is_flag=True, help="With --export: the exports and the node's database, as one chain.")
@click.option("--fleet", is_flag=True, help="Also ask the peers over MQTT for the heads of this node they witnessed;"
                                           " fail unless the local chain extends every one.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 300), default=5.0, show_default=True,
              help="With --fleet: seconds to wait for the peers' answers.")
def audit_verify(config_path: Path | None, as_json: bool, public_key: str | None, exports: tuple[Path, ...], with_database: bool,
                 fleet: bool, timeout_s: float) -> None:
    """Verify the hash chain, the chained signed checkpoints and the decision digests against the pinned key.

    Fails (exit 1, naming the first bad record) on any edit, deletion, insertion or
    reordering, a checkpoint deleted, replaced or signed by another key, a chain start no
    signed retention record binds, a clean stop without its checkpoint, and an unsigned
    tail beyond its bound (state.checkpoint_every records / checkpoint_interval_s, as
    signed in the last checkpoint). With no pinned key it refuses to verify (exit 1).

    With --fleet it then asks the peers (one signed request on MQTT) for the heads of this
    node they witnessed, and fails (exit 1) unless the local chain holds each one: a
    truncated tail, a rollback, or a rewrite even by someone holding the node key. It says
    how many peers answered, and with no witnessed head it says so and fails: a node no
    peer witnessed cannot show that its tail was not cut.

    Example: agentd audit verify --export /srv/siem/node-7.jsonl --public-key /srv/backups/node-7/node.pub
    """
    from agentd.state import audit_export, queries
    from agentd.trust.audit import DEFAULT_BOUND, Bound

    if with_database and not exports:
        raise InputError("--with-database goes with --export FILE (without --export the database is what is verified)")
    if fleet and exports:
        raise InputError("--fleet checks the node's database against its peers; it does not go with --export")
    loaded = None if exports and not with_database and public_key else _load(config_path)
    bound = Bound(loaded.config.state.checkpoint_every, loaded.config.state.checkpoint_interval_s) if loaded else DEFAULT_BOUND
    key, where = _key(public_key, loaded)
    conn = queries.open_readonly(loaded.config.data_dir) if loaded and (with_database or not exports) else None
    if exports:
        files = [(str(p), p.open(encoding="utf-8")) for p in exports]
        try:
            result = audit_export.verify_export(files, trusted_key=key, bound=bound, conn=conn)
        finally:
            for _, fh in files:
                fh.close()
    else:
        assert conn is not None
        result = queries.verify_audit(conn, trusted_key=key, bound=bound)
    if fleet and result.ok:
        assert loaded is not None and conn is not None
        check = _fleet_check(loaded, conn, key, timeout_s)
        if as_json:
            _emit_json({**result.as_dict(), "public_key": key, "key_source": where, "fleet": check.as_dict()})
        else:
            _report(result, key, where, as_json)
            _report_fleet(check)
        sys.exit(0 if check.ok else 1)
    _report(result, key, where, as_json)
    sys.exit(0 if result.ok else 1)


def _fleet_check(loaded: LoadedConfig, conn: sqlite3.Connection, key: str, timeout_s: float) -> FleetCheck:
    """Ask the peers for the heads of this node they witnessed and check the local chain against them."""
    from agentd.ops.fleet_audit import ask_peers, check_chain, own_keys, trusted_peers
    from agentd.trust.keys import load_key

    cfg = loaded.config
    if not cfg.mqtt.enabled:
        raise InputError("--fleet asks the peers over MQTT: this config has mqtt.enabled: false")
    try:
        node_key = load_key(cfg.data_dir)
    except TrustError as exc:
        raise TrustError(f"{exc}; --fleet signs its request with the node key: run it as the service user") from exc
    check = ask_peers(cfg, node_key, trusted_peers(cfg, conn), timeout_s=timeout_s)
    return check_chain(conn, check, node=cfg.node.id, keys=own_keys(conn, key))


def _report_fleet(check: FleetCheck) -> None:
    asked = f"{len(check.answers)} of {len(check.asked)} peer(s) answered"
    for line in check.unverified:
        click.echo(f"not counted: {line}")
    for line in check.unchecked:
        click.echo(f"not checked: {line}")
    if check.failures:
        click.echo(f"audit trail BROKEN for the fleet ({asked}): {check.failures[0]}")
        for line in check.failures[1:]:
            click.echo(f"  also: {line}")
        return
    if not check.answers:
        click.echo(f"fleet: no peer answered ({len(check.asked)} asked: {', '.join(check.asked) or 'none configured'});"
                   " the fleet check was not made: nothing shows the tail was not cut")
        return
    newest = check.newest
    if newest is None or newest.head is None:
        click.echo(f"fleet: {asked}; none has witnessed a head of this node yet: the fleet check was not made")
        return
    click.echo(f"audit trail intact for the fleet: {asked}, {len(check.witnessed)} witnessed head(s) of this node,"
               f" the newest at record {newest.head.seq} ({newest.peer}); the local chain extends every one")


def _key(public_key: str | None, loaded: LoadedConfig | None) -> tuple[str, str]:
    """The key to verify against and where it came from: --public-key, else the pin (TrustError with none)."""
    from agentd.trust.keys import pinned_key, public_key_from

    if public_key is not None:
        try:
            return public_key_from(public_key)
        except TrustError as exc:
            raise TrustError(f"--public-key: {exc}") from exc
    assert loaded is not None
    return pinned_key(loaded.config.data_dir, loaded.config.trust.audit_public_key)


def _report(result: VerifyResult, key: str, where: str, as_json: bool) -> None:
    if as_json:
        _emit_json({**result.as_dict(), "public_key": key, "key_source": where})
        return
    if not result.ok:
        at = f" at record {result.first_bad_seq}" if result.first_bad_seq is not None else ""
        click.echo(f"audit trail BROKEN{at}: {result.problem}")
        return
    click.echo(f"audit trail intact: {result.records} record(s), {result.checkpoints} signed checkpoint(s),"
               f" checked against key {key[:12]}... ({where})")
    tail = result.tail
    if tail is not None and tail.records:
        limit = f"{tail.bound.records} records / {tail.bound.seconds:g} s"
        click.echo(f"unsigned tail: {tail.records} record(s) over {tail.seconds:.1f} s after record {tail.after_seq} (bound {limit})")
    elif result.head is not None:
        click.echo(f"no unsigned tail: the head (record {result.head[0]}) is signed")


@audit.command("export")
@config_option
@click.option("--after", type=click.IntRange(0), default=0, help="Only records after this sequence number.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File (default: stdout).")
@click.option("--mark", is_flag=True, help="Record the export so retention may prune what a signed checkpoint covers.")
def audit_export(config_path: Path | None, after: int, output: Path | None, mark: bool) -> None:
    """Write the audit trail as JSON lines (for a SIEM), verifiable off the box.

    Each record line holds the record's stored canonical body byte for byte; the signed
    checkpoints that cover the records follow them (`"type": "checkpoint"` lines), so
    `agentd audit verify --export FILE --public-key KEY` checks the file anywhere.

    Example: agentd audit export --after 1200 -o audit.jsonl
    """
    import sqlite3

    from agentd.state import queries
    from agentd.state.audit_export import export_lines

    loaded = _load(config_path)
    conn = queries.open_readonly(loaded.config.data_dir)
    out = output.open("w", encoding="utf-8") if output else sys.stdout
    last = after
    try:
        for seq, line in export_lines(conn, after):
            out.write(line + "\n")
            last = seq if seq is not None else last
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

