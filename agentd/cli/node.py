"""Node commands of the `agentd` CLI: run, status, config validate, keys, peers, fleet-state."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agentd.cli._common import _emit_json, _json_or, _list, _load, _query, _table, _ts, config_option, json_option, main
from agentd.errors import AgentdError, InputError


@main.command()
@config_option
def run(config_path: Path | None) -> None:
    """Run the daemon in the foreground.

    Example: agentd run --config config/agentd.yaml
    """
    from agentd.config.loader import find_config
    from agentd.daemon.node import run_daemon

    run_daemon(find_config(config_path))


@main.command()
@config_option
@json_option
def status(config_path: Path | None, as_json: bool) -> None:
    """Mode, lifecycle, models and circuits, outbox depth, fallback rate (from the database if the daemon is stopped)."""
    from agentd.control.client import request
    from agentd.errors import Unreachable
    from agentd.state import queries

    loaded = _load(config_path)
    cfg = loaded.config
    try:
        st = request(cfg.socket_path, {"op": "status"}, timeout_s=5)
    except Unreachable:
        st = {"node": cfg.node.id, "fleet": cfg.node.fleet, "daemon": "stopped",
              "lifecycle": {"stage": cfg.lifecycle.stage, "release": cfg.lifecycle.release, "config_sha256": loaded.sha256}}
        try:
            conn = queries.open_readonly(cfg.data_dir)
            st["mode"] = queries.get_setting(conn, "mode") or cfg.daemon.mode
            st.update(queries.counts(conn))
        except AgentdError as exc:
            st["database"] = str(exc)
        st["models"] = [{"name": m.name, "version": m.version, "backend": m.backend, "loaded": False} for m in cfg.models]
    if _json_or(as_json, st):
        return
    lc = st["lifecycle"]
    click.echo(f"node {st['node']} (fleet {st['fleet']})  daemon {st.get('daemon')}  mode {st.get('mode')}")
    click.echo(f"lifecycle {lc['stage']} / {lc['release']}  config {lc['config_sha256'][:12]}")
    if "decisions" in st:
        by_source = ", ".join(f"{k} {v}" for k, v in sorted(st["by_source"].items())) or "none"
        click.echo(f"decisions {st['decisions']} ({by_source})  fallback rate {st['fallback_rate']:.1%}")
        click.echo(f"pending approvals {st['pending_approvals']}  outbox {st['outbox_depth']}  audit records {st['audit_records']}")
    if st.get("broker"):
        b = st["broker"]
        if not b.get("enabled", True):
            click.echo("broker    disabled (mqtt.enabled: false)")
        else:
            state = f"connected, MQTT {b.get('protocol')}" if b.get("connected") else "not connected (reconnecting with back-off)"
            counts = "  ".join(f"{k} {b[k]}" for k in ("published", "events_in", "events_refused", "reconnects") if k in b)
            click.echo(f"broker    {b.get('host')}:{b.get('port')} {state}" + (f"  {counts}" if counts else ""))
            rejected = b.get("rejected") or {}
            if rejected:
                click.echo("dropped   " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())))
    for m in st.get("models", []):
        if "available" not in m:
            state = "not loaded (daemon stopped)"
        else:
            state = f"circuit {m['circuit']}" if m["available"] else "MISSING"
        click.echo(f"model     {m['name']} (version {m['version']}): {state}" + (f" ({m['missing_reason']})" if m.get("missing_reason") else ""))


@main.group()
def config() -> None:
    """Config file commands."""


@config.command("validate")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def config_validate(path: Path) -> None:
    """Validate a config file: schema, references, rules and guards (CEL).

    Exit 0 if valid; 1 with errors naming file, line and key.
    Example: agentd config validate /etc/agentd/agentd.yaml
    """
    from agentd.config.loader import load_config
    from agentd.decision.rules import compile_all

    try:
        loaded = load_config(path)
        compile_all(loaded)
    except AgentdError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    cfg = loaded.config
    click.echo(f"{path}: valid ({len(cfg.skills)} skill(s), {len(cfg.models)} model(s), sha256 {loaded.sha256[:12]})")


@main.group(invoke_without_command=True)
@config_option
@json_option
@click.pass_context
def peers(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """Peers this node has heard from over MQTT: presence, last seen, decisions received, and the audit
    head witnessed of each (its seq, when, and whether its chain stayed consistent, was rolled back or forked).

    "audit" is consistent (each head extended the one before), unchecked gap (a head
    whose link to the one before could not be fetched from the node), rolled back (a head below one witnessed)
    or forked (another chain than the one witnessed); a flagged peer stays flagged until
    `agentd peers clear-flag NODE --reason TEXT`.
    Example: agentd peers --json
    """
    import time

    from agentd.state import queries

    ctx.obj = config_path
    if ctx.invoked_subcommand is not None:
        return

    now = time.time()
    _list(config_path, as_json, queries.list_peers, what="peer(s)",
          columns=["node", "status", "last seen", "ago s", "decisions", "key", "audit head", "witnessed", "audit"],
          row=lambda r: (r["node"], r["status"], _ts(r["last_seen"]) if r["last_seen"] else "",
                         f"{now - r['last_seen']:.0f}" if r["last_seen"] else "", r["decisions"],
                         ("learned " if r["learned"] else "configured ") + str(r["public_key"] or "")[:12],
                         "" if r["audit_head"] is None else r["audit_head"],
                         _ts(r["witnessed_at"]) if r["witnessed_at"] else "",
                         (r["audit_state"] or "not witnessed")
                         + (f" (seen head {r['seen_seq']})" if r["seen_seq"] not in (None, r["audit_head"]) else "")))


@peers.command("clear-flag")
@config_option
@json_option
@click.argument("node")
@click.option("--reason", required=True, help="What the investigation found (1-500 characters; kept in the audit trail).")
@click.option("--by", default=None, help="A label for who clears it, kept beside the local user and uid.")
@click.pass_context
def peers_clear_flag(ctx: click.Context, config_path: Path | None, as_json: bool, node: str, reason: str, by: str | None) -> None:
    """Clear a peer's audit flag (rolled back, forked) after investigating it: audited on this node
    as peer_flag_cleared, with the evidence it replaces; the next head the peer publishes is
    witnessed afresh. Through the daemon when it runs, else on the database directly.

    Example: agentd peers clear-flag cold-store-02 --reason "restored from backup 2026-11-30 after disk failure (INC-1234)"
    """
    import asyncio
    import getpass
    import os

    from agentd.control.client import request
    from agentd.errors import Unreachable

    loaded = _load(config_path or ctx.obj)
    cfg = loaded.config
    if not reason.strip() or len(reason) > 500:
        raise InputError("--reason: 1-500 characters saying what the investigation found")
    try:
        result = request(cfg.socket_path, {"op": "clear_peer_flag", "node": node, "reason": reason, "by": by or "local-cli"})
    except Unreachable:
        from agentd.daemon.node import lock_data_dir
        from agentd.state.store import open_store
        from agentd.trust.keys import load_key

        who = f"local:{getpass.getuser()}(uid={os.getuid()})" + (f" as {by[:64]!r}" if by else "")
        lock = lock_data_dir(cfg.data_dir)
        try:
            async def clear() -> dict[str, object]:
                async with open_store(loaded, load_key(cfg.data_dir)) as store:
                    return await store.clear_peer_flag(node, by=who, reason=reason.strip())

            result = asyncio.run(clear())
        finally:
            lock.close()
    if _json_or(as_json, result):
        return
    was = result["cleared"]
    click.echo(f"peer {node}: the {str(was['state']).replace('_', ' ')} flag is cleared (audit record {result['audit_seq']});"
               f" it was: {was['detail']}")
    click.echo("its next audit head is witnessed afresh")


@main.command("fleet-state")
@config_option
@json_option
@click.option("--window", "window_s", type=click.FloatRange(1, 30 * 86400), default=600, show_default=True, help="Seconds back.")
def fleet_state(config_path: Path | None, as_json: bool, window_s: float) -> None:
    """What this node knows of the fleet: decisions per node and action in the window (what fleet_count() reads),
    and the fleet-state keys (what fleet_value() and fleet_keys() read) with value, writer, HLC and expiry.

    A key's state is live, expired (rules read null) or unset (a tombstone, kept
    so that an older write cannot bring the value back). --json prints
    {"window_s", "decisions": {NODE: {ACTION: N}}, "state": {KEY: {"value",
    "writer", "hlc", "expires_at", "deleted", "live"}}}.
    """
    import json

    from agentd.state import queries

    summary = _query(config_path, queries.fleet_summary, window_s)
    if _json_or(as_json, summary):
        return
    _table(f"fleet decisions, last {window_s:g} s", ["node", "action", "count"],
           ((node, action, n) for node, acts in summary["decisions"].items() for action, n in acts.items()))
    _table("fleet state", ["key", "value", "writer", "hlc", "expires", "state"],
           ((k, "" if e["deleted"] else json.dumps(e["value"])[:80], e["writer"], e["hlc"],
             _ts(e["expires_at"]) if e["expires_at"] else "never",
             "unset" if e["deleted"] else "live" if e["live"] else "expired") for k, e in summary["state"].items()))


@main.group()
def keys() -> None:
    """The node's Ed25519 identity."""


@keys.command("init")
@config_option
@click.option("--operator", "operator", default=None, help="Make an operator key pair with this name instead of the node key.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True, help="Folder for the operator key.")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), default="operator", show_default=True, help="Role for the printed trust entry.")
def keys_init(config_path: Path | None, operator: str | None, out: Path, role: str) -> None:
    """Create the node key (mode 0600) if it does not exist, and pin its public key (keys/node.pub,
    what `agentd audit verify` checks the audit trail against); or, with --operator, an operator key.

    Example: agentd keys init --operator alice --out ~/.agentd --role admin
    """
    from agentd.trust.keys import create_key, create_key_file, pin_path, public_key_from, write_pin

    if operator is not None:
        if not operator or len(operator) > 64 or "/" in operator:
            raise InputError("--operator: 1-64 characters, no '/'")
        key, created = create_key_file(out / f"{operator}.key")
        click.echo(f"{'created' if created else 'exists'}: {key.path} (keep it private; mode 0600)")
        click.echo("add this to trust.operators on every node that should obey it:")
        click.echo(f"  - {{name: {operator}, key: \"{key.public_b64}\", role: {role}}}")
        return
    loaded = _load(config_path)
    key, created = create_key(loaded.config.data_dir)
    click.echo(f"{'created' if created else 'exists'}: {key.path}")
    click.echo(f"public key: {key.public_b64}")
    pin = pin_path(loaded.config.data_dir)
    if write_pin(loaded.config.data_dir, key.public_b64) or created:
        click.echo(f"pinned: {pin} (for a pin the service user cannot change, set trust.audit_public_key to this key)")
    elif public_key_from(str(pin))[0] != key.public_b64:
        click.echo(f"warning: {pin} pins another key ({public_key_from(str(pin))[0]}): the node key was replaced;"
                   " see docs/OPERATIONS.md (key rotation) before you remove the old pin", err=True)


@keys.command("show")
@config_option
@json_option
def keys_show(config_path: Path | None, as_json: bool) -> None:
    """Print the node id and public key."""
    from agentd.trust.keys import load_key

    loaded = _load(config_path)
    key = load_key(loaded.config.data_dir)
    if as_json:
        _emit_json({"node": loaded.config.node.id, "public_key": key.public_b64})
    else:
        click.echo(f"node {loaded.config.node.id}\npublic key {key.public_b64}\nfile {key.path}")


@keys.command("rotate")
@config_option
@json_option
def keys_rotate(config_path: Path | None, as_json: bool) -> None:
    """Replace the node key (the daemon stopped): a key_rotation record signed by the old and the
    new key, the new key in keys/node.key and the pin keys/node.pub; the old public key stays in
    keys/retired/ so that history and older exports still verify.

    Then put the new public key in the peers' trust.peers (and trust.audit_public_key, if the
    config pins the key), and move keys/retired/node-*.key to your key escrow.
    Example: systemctl stop agentd && agentd keys rotate && systemctl start agentd
    """
    from agentd.ops.key_rotation import rotate_node_key

    loaded = _load(config_path)
    result = rotate_node_key(loaded)
    if _json_or(as_json, result):
        return
    where = f" (record {result['seq']})" if result["seq"] is not None else " (finishing a rotation already in the chain)"
    click.echo(f"rotated the key of node {result['node']}{where}: {result['old'][:12]}... -> {result['new'][:12]}...")
    click.echo(f"new public key: {result['new']}")
    click.echo(f"pinned: {result['pin']}; the old public key is kept as {result['retired_public_key']}")
    click.echo(f"move {result['retired_private_key']} to your key escrow and remove it from this box")
    click.echo(f"on every peer, set trust.peers.{result['node']} to the new key and reload: until then they refuse this node's messages")
    if result["config_pins_old"]:
        click.echo("trust.audit_public_key pins the old key: verify still passes (the rotation is signed by it); set it to the new key")
