"""The `agentd` command line (DESIGN section 11).

Exit codes: 0 ok, 1 check failed / not found, 2 usage or bad input, 3 daemon unreachable.
Read-only commands read SQLite directly, so they work while the daemon is stopped.
Heavy runtimes (onnxruntime, cel, rich) are imported only by the commands that use them.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agentd.errors import AgentdError, InputError

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
@click.argument("skill")
@click.option("--data", required=True, help="The event's fields as a JSON object.")
@click.option("--id", "event_id", default=None, help="Event id (default: a new one).")
def decide(config_path: Path | None, as_json: bool, skill: str, data: str, event_id: str | None) -> None:
    """One decision in-process, without the daemon; nothing is gossiped.

    It is recorded and audited in the node's database like any other.
    Example: agentd decide freezer_health --data '{"temperature_c": -3, "door_open_s": 0, "compressor_a": 0.1}'
    """
    import asyncio

    from agentd.decision.engine import Engine
    from agentd.trust.keys import create_key

    loaded = _load(config_path)
    payload = _parse_json_arg(data, "--data")

    async def go() -> dict[str, Any]:
        key, _ = create_key(loaded.config.data_dir)
        async with Engine(loaded=loaded, key=key, run_handlers=False) as engine:
            return await engine.decide(skill, payload, event_id=event_id, origin="cli")

    _print_decision(asyncio.run(go()), as_json)


@main.command()
@config_option
@json_option
@click.argument("skill")
@click.option("--data", required=True, help="The event's fields as a JSON object.")
@click.option("--id", "event_id", default=None, help="Event id; a repeated id returns the existing decision.")
def submit(config_path: Path | None, as_json: bool, skill: str, data: str, event_id: str | None) -> None:
    """Submit an event to the running daemon and print its decision.

    Example: agentd submit freezer_health --data '{"temperature_c": -19.5, "door_open_s": 4, "compressor_a": 5.1}'
    """
    from agentd.control.client import request

    loaded = _load(config_path)
    payload = _parse_json_arg(data, "--data")
    req = {"op": "submit", "skill": skill, "data": payload, "id": event_id}
    _print_decision(request(loaded.config.socket_path, req), as_json)


def _print_decision(d: dict[str, Any], as_json: bool) -> None:
    if _json_or(as_json, d):
        return
    reason = f" (fallback: {d['fallback_reason']})" if d.get("fallback_reason") else ""
    guard = f" (guard {d['guard']})" if d.get("guard") else ""
    conf = f" confidence {d['confidence']:.2f}" if d.get("confidence") is not None else ""
    click.echo(f"{d['action']}  [{d['status']}; source {d['source']}{conf}{reason}{guard}; {d['latency_ms']} ms]")
    click.echo(f"decision {d['id']}  event {d['event_id']}")


@main.command()
@config_option
@json_option
@click.option("--skill", default=None)
@click.option("--source", type=click.Choice(["model", "rules", "human", "guard"]), default=None)
@click.option("--stage", type=click.Choice(["dev", "canary", "prod"]), default=None, help="Lifecycle stage.")
@click.option("--release", default=None, help="Lifecycle release.")
@click.option("--status", type=click.Choice(["decided", "pending_approval", "approved", "rejected", "expired"]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
def decisions(config_path: Path | None, as_json: bool, limit: int, **filters: str | None) -> None:
    """Recent decisions, newest first.

    Example: agentd decisions --skill freezer_health --source rules --limit 50
    """
    from agentd.devtools.demo import action_label
    from agentd.state import queries

    loaded = _load(config_path)
    conn = queries.open_readonly(loaded.config.data_dir)
    rows = queries.list_decisions(conn, limit=limit, **filters)
    if _json_or(as_json, rows):
        return
    wide = _width() >= 140
    columns = ["time", "action", "status", "source", "conf", "fallback", "id"]
    if wide:
        columns[1:1] = ["skill"]
        columns[-1:-1] = ["guard", "ms", "event"]

    def row(d: dict[str, Any]) -> list[Any]:
        out = [_ts(d["created_at"])[11 if not wide else 0:], action_label(d), d["status"].replace("pending_approval", "pending"),
               d["source"], None if d["confidence"] is None else f"{d['confidence']:.2f}", d["fallback_reason"], d["id"][:12]]
        if wide:
            out[1:1] = [d["skill"]]
            out[-1:-1] = [d["guard"], d["latency_ms"], d["event_id"][:16]]
        return out

    _table(f"{len(rows)} decision(s)" + ("" if wide else " (a wider terminal shows skill, guard, ms, event)"), columns, (row(d) for d in rows))


def _ts(epoch: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


@main.command()
@config_option
@json_option
@click.argument("ident")
def explain(config_path: Path | None, as_json: bool, ident: str) -> None:
    """One decision's full trace: inputs, every stage, fallback, guard, approval, audit hashes.

    IDENT is a decision id, a unique prefix of one (8+ characters), or an event id.
    Example: agentd explain 3f2a9c1e
    """
    from agentd.state import queries

    loaded = _load(config_path)
    conn = queries.open_readonly(loaded.config.data_dir)
    d = _find(conn, ident)
    audit = queries.audit_for(conn, d["id"])
    if as_json:
        _emit_json({"decision": d, "audit": audit})
        return
    lc = d["lifecycle"]
    lines = [
        f"decision {d['id']}  (event {d['event_id']}, skill {d['skill']}, node {d['node']})",
        f"  at        {_ts(d['created_at'])}  hlc {d['hlc']}  latency {d['latency_ms']} ms  mode {d.get('mode')}",
        f"  lifecycle {lc['stage']} / {lc['release']}  config {lc['config_sha256'][:12]}",
        f"  inputs    {json.dumps(d['inputs'], ensure_ascii=False)}",
    ]
    if not d["stages"]:
        lines.append("  stages    none ran")
    for i, s in enumerate(d["stages"], 1):
        conf = "" if s["confidence"] is None else f" confidence {s['confidence']:.3f}"
        answer = "none (it did not answer in time)" if s["answer"] is None else s["answer"]
        lines.append(f"  stage {i}   {s['model']}: {s['outcome']}  answer {answer}{conf}  {s['latency_ms']} ms")
        if s.get("rationale"):
            lines.append(f"            rationale: {s['rationale']}")
    if d.get("model"):
        lines.append(f"  model     {d['model']['name']} v{d['model']['version']} accepted")
    else:
        lines.append(f"  fallback  {d['fallback_reason']} -> rules decided (rule {d.get('rule')!r})")
    if d.get("guard"):
        lines.append(f"  guard     {d['guard']} replaced the chosen action")
    if d.get("rule_errors"):
        lines.append(f"  errors    {'; '.join(d['rule_errors'])}")
    lines.append(f"  action    {d['action']}  status {d['status']}  source {d['source']}")
    if d.get("approval"):
        a = d["approval"]
        lines.append(
            f"  approval  requested {a['requested_action']}, interim {a['interim_action']}, status {a['status']}"
            + (f" by {a['resolved_by']}" if a.get("resolved_by") else f", expires {_ts(a['expires_at'])}")
        )
    if d.get("late_answer"):
        la = d["late_answer"]
        lines.append(f"  late      {la['model']} answered {la['answer']} ({la['confidence']:.3f}) after {la['latency_ms']} ms; not acted on")
    for a in audit:
        lines.append(f"  audit #{a['seq']:<6} {a['kind']:<12} hash {a['hash'][:16]}  record sha256 {str(a['body'].get('record_sha256', ''))[:16]}")
    click.echo("\n".join(lines))


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


@main.command()
@config_option
@json_option
def approvals(config_path: Path | None, as_json: bool) -> None:
    """Decisions waiting for a human."""
    from agentd.state import queries

    rows = _query(config_path, queries.pending_approvals)
    if _json_or(as_json, rows):
        return
    _table(f"{len(rows)} pending approval(s)", ["decision", "requested", "in force", "expires"],
           ((r["decision_id"][:12], r["requested_action"], r["interim_action"], _ts(r["expires_at"])[11:]) for r in rows))


@main.command()
@config_option
@json_option
@click.argument("decision_id")
@click.option("--by", default=None, help="Who approves (default: the local user).")
def approve(config_path: Path | None, as_json: bool, decision_id: str, by: str | None) -> None:
    """Approve a pending decision (the daemon must be running)."""
    _resolve("approve", config_path, as_json, decision_id, by, "")


@main.command()
@config_option
@json_option
@click.argument("decision_id")
@click.option("--by", default=None, help="Who rejects (default: the local user).")
@click.option("--reason", default="", help="Why (stored in the audit trail).")
def reject(config_path: Path | None, as_json: bool, decision_id: str, by: str | None, reason: str) -> None:
    """Reject a pending decision (the daemon must be running)."""
    _resolve("reject", config_path, as_json, decision_id, by, reason)


def _resolve(op: str, config_path: Path | None, as_json: bool, decision_id: str, by: str | None, reason: str) -> None:
    import getpass

    from agentd.control.client import request
    from agentd.state import queries

    loaded = _load(config_path)
    who = by or f"local:{getpass.getuser()}"
    with contextlib.suppress(AgentdError):  # accept the short ids `agentd decisions` shows; else the daemon says what is wrong
        decision_id = _find(queries.open_readonly(loaded.config.data_dir), decision_id)["id"]
    d = request(loaded.config.socket_path, {"op": op, "id": decision_id, "by": who, "reason": reason})
    if as_json:
        _emit_json(d)
    else:
        click.echo(f"{d['id']}: {d['status']} by {who}; action now {d['action']}")


@main.command()
@config_option
@json_option
def peers(config_path: Path | None, as_json: bool) -> None:
    """Peers this node has heard from over MQTT: presence, last seen, decisions received."""
    import time

    from agentd.state import queries

    rows = _query(config_path, queries.list_peers)
    if _json_or(as_json, rows):
        return
    now = time.time()
    _table(f"{len(rows)} peer(s)", ["node", "status", "last seen", "ago s", "decisions", "key"],
           ((r["node"], r["status"], _ts(r["last_seen"]) if r["last_seen"] else "", f"{now - r['last_seen']:.0f}" if r["last_seen"] else "",
             r["decisions"], ("learned " if r["learned"] else "configured ") + str(r["public_key"] or "")[:12]) for r in rows))


@main.command("fleet-state")
@config_option
@json_option
@click.option("--window", "window_s", type=click.FloatRange(1, 30 * 86400), default=600, show_default=True, help="Seconds back.")
def fleet_state(config_path: Path | None, as_json: bool, window_s: float) -> None:
    """What this node knows the fleet did: decisions per node and action in the window (what fleet_count() reads)."""
    from agentd.state import queries

    summary = _query(config_path, queries.fleet_summary, window_s)
    if _json_or(as_json, summary):
        return
    _table(f"fleet decisions, last {window_s:g} s", ["node", "action", "count"],
           ((node, action, n) for node, acts in summary["decisions"].items() for action, n in acts.items()))


@main.group()
def keys() -> None:
    """The node's Ed25519 identity."""


@keys.command("init")
@config_option
@click.option("--operator", "operator", default=None, help="Make an operator key pair with this name instead of the node key.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True, help="Folder for the operator key.")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), default="operator", show_default=True, help="Role for the printed trust entry.")
def keys_init(config_path: Path | None, operator: str | None, out: Path, role: str) -> None:
    """Create the node key (mode 0600) if it does not exist; or, with --operator, an operator key.

    Example: agentd keys init --operator alice --out ~/.agentd --role admin
    """
    from agentd.trust.keys import create_key, create_key_file

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


@main.group()
def fleet() -> None:
    """Steer the fleet with signed commands."""


@fleet.command("send")
@config_option
@json_option
@click.argument("cmd", type=click.Choice(["status", "reload", "set_mode", "set_stage", "activate_model", "quarantine", "approve", "reject", "set_config"]))
@click.option("--target", default="all", show_default=True, help="A node id, or all.")
@click.option("--args", "args_json", default="{}", help="The command's arguments as a JSON object.")
@click.option("--config-file", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="For set_config: the YAML document to send.")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The operator's private key file.")
@click.option("--operator", default=None, help="Operator name in trust.operators (default: the key file's name).")
@click.option("--peer-key", "peer_key_opts", multiple=True, metavar="NODE=BASE64",
              help="A node's public key (agentd keys show) to verify its replies with, besides trust.peers; repeatable.")
@click.option("--ttl", type=click.FloatRange(1, 86400), default=300, show_default=True, help="Seconds the command stays valid.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 600), default=5, show_default=True, help="Seconds to wait for replies.")
def fleet_send(config_path: Path | None, as_json: bool, cmd: str, target: str, args_json: str, config_file: Path | None,
               key_path: Path, operator: str | None, peer_key_opts: tuple[str, ...], ttl: float, timeout_s: float) -> None:
    """Sign a fleet command with an operator key, send it over MQTT, print the replies.

    Uses the broker settings and fleet of --config. A reply counts only if it is
    signed by the node whose topic it came on, with that node's key from
    trust.peers, from --peer-key or (if readable) this config's own node key; any
    other is printed as UNVERIFIED. For all, waits --timeout; for one --target,
    until it answers. Exit 0 only if every reply is verified and ok and every
    targeted node answered (the --target, or for all each node of trust.peers and
    --peer-key), 1 otherwise. --json prints {"command_id", "target", "ok",
    "replies": [{"node", "verified", "reason", "body"}], "missing": [NODE, ...],
    "dropped": N}, dropped counting unverified replies past the first 100.

    Example: agentd fleet send set_mode --target node-b --args '{"mode": "rules_only"}' --key alice.key
    """
    import time

    from agentd.control.commands import new_command
    from agentd.ids import new_id
    from agentd.mesh.oneshot import known_keys, parse_peer_keys, send_command
    from agentd.trust.envelope import envelope
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import load_key_file

    loaded = _load(config_path)
    args = _parse_json_arg(args_json, "--args")
    if not isinstance(args, dict):
        raise InputError("--args must be a JSON object")
    if config_file is not None:
        args["config"] = config_file.read_text()
    peer_keys = parse_peer_keys(peer_key_opts)
    key = load_key_file(key_path)
    name = operator or key_path.stem
    ident = new_id()
    payload = envelope("command", fleet=loaded.config.node.fleet, node=name, hlc=Clock().now(),
                       body=new_command(cmd, target=target, args=args, ttl_s=ttl), key=key, ident=ident)
    t0 = time.monotonic()
    outcome = send_command(loaded.config, payload, command_id=ident, target=target, timeout_s=timeout_s, peer_keys=peer_keys)
    if as_json:
        _emit_json(outcome.as_json())
    else:
        for r in outcome.replies:
            b = r.body
            if not r.verified:
                click.echo(f"{r.node}: UNVERIFIED ({r.reason})")
            else:
                click.echo(f"{r.node}: {'ok' if b['ok'] else 'REFUSED'}  {json.dumps(b.get('result', b.get('error')), default=str)[:300]}")
        answered, keyed = {r.node for r in outcome.replies}, known_keys(loaded.config, peer_keys)
        for node in outcome.missing:
            click.echo(f"{node}: {'no verified reply' if node in answered else 'no reply'}"
                       + ("" if node in keyed else f" (no key for it: add it to trust.peers or pass --peer-key {node}=KEY)"))
        if outcome.dropped:
            click.echo(f"{outcome.dropped} more unverified replies, not shown")
        n = len(outcome.replies)
        verified = sum(1 for r in outcome.replies if r.verified)
        click.echo(f"{n} repl{'y' if n == 1 else 'ies'} ({verified} verified) in {time.monotonic() - t0:.1f} s")
        if not outcome.replies:
            click.echo(f"no node answered: is {'any node' if target == 'all' else target} online (agentd peers), on this"
                       " broker and fleet, and does it list this operator key in trust.operators?", err=True)
    sys.exit(0 if outcome.ok else 1)


@main.command()
@config_option
@json_option
@click.option("--only", type=click.Choice(["rules", "onnx", "deadline", "throughput", "footprint", "mqtt", "convergence", "llm", "accuracy"]), default=None, help="Run one part.")
@click.option("--n", "samples", type=click.IntRange(50, 1_000_000), default=2000, show_default=True, help="Samples per latency part.")
def bench(config_path: Path | None, as_json: bool, only: str | None, samples: int) -> None:
    """Latency and throughput of each decision path on this box, with baselines from the same run.

    Example: agentd bench --json
    """
    from agentd.devtools.bench import run_bench

    loaded = _load(config_path)
    result = run_bench(loaded, only=only, samples=samples)
    if _json_or(as_json, result):
        return
    _table("agentd bench", ["figure", "value"], ((k, v) for k, v in result.items()))


@main.command()
@config_option
@click.option("--nodes", type=click.IntRange(1, 20), default=3, show_default=True, help="Nodes in the fleet; 1 runs a single node without a broker.")
@click.option("--seconds", type=click.FloatRange(0, 86400), default=0, help="Stop after this long (default: until Ctrl-C).")
@click.option("--rate", type=click.FloatRange(0.1, 1000), default=5.0, show_default=True, help="Simulated events per second, per node.")
def demo(config_path: Path | None, nodes: int, seconds: float, rate: float) -> None:
    """A small fleet on this machine: a private Mosquitto, NODES nodes with their own keys and
    data, simulated freezer telemetry, and a live view of decisions and gossip.

    The nodes are derived from the config (its skills and models); their data goes to
    <data_dir>/demo. Example: agentd demo --nodes 3 --seconds 60
    """
    loaded = _load(config_path)
    if nodes == 1:
        from agentd.devtools.demo import run_demo

        run_demo(loaded, seconds=seconds, rate=rate)
        return
    from agentd.devtools.fleet_demo import run_fleet_demo

    run_fleet_demo(loaded, nodes=nodes, seconds=seconds, rate=rate)


from agentd.cli import ops as cli_ops  # noqa: E402 - doctor, backup, restore, report (they use the helpers above)
from agentd.cli import report as cli_report  # noqa: E402

cli_ops.register(main, sys.modules[__name__])
cli_report.register(main, sys.modules[__name__])

if __name__ == "__main__":
    main()
