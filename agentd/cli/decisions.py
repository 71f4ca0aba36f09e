"""Decision commands of the `agentd` CLI: decide, submit, decisions, explain, approvals, approve, reject."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import click

from agentd.cli._common import (
    _emit_json,
    _find,
    _json_or,
    _list,
    _load,
    _parse_json_arg,
    _print_decision,
    _table,
    _ts,
    _width,
    config_option,
    event_input,
    json_option,
    main,
)
from agentd.errors import AgentdError


@main.command()
@event_input
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
@event_input
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


@main.command()
@config_option
@json_option
@click.option("--skill", default=None)
@click.option("--source", type=click.Choice(["model", "rules", "human", "guard"]), default=None)
@click.option("--stage", type=click.Choice(["dev", "canary", "prod"]), default=None, help="Lifecycle stage.")
@click.option("--release", default=None, help="Lifecycle release.")
@click.option("--status", type=click.Choice(["decided", "pending_approval", "approved", "rejected", "expired"]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
def decisions(config_path: Path | None, as_json: bool, limit: int, skill: str | None, source: str | None,
              stage: str | None, release: str | None, status: str | None) -> None:
    """Recent decisions, newest first.

    Example: agentd decisions --skill freezer_health --source rules --limit 50
    """
    from agentd.devtools.demo import action_label
    from agentd.state import queries

    loaded = _load(config_path)
    conn = queries.open_readonly(loaded.config.data_dir)
    rows = queries.list_decisions(conn, queries.DecisionFilter(skill=skill, source=source, stage=stage, release=release, status=status), limit=limit)
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


@main.command()
@config_option
@json_option
def approvals(config_path: Path | None, as_json: bool) -> None:
    """Decisions waiting for a human."""
    from agentd.state import queries

    _list(config_path, as_json, queries.pending_approvals, what="pending approval(s)",
          columns=["decision", "requested", "in force", "expires"],
          row=lambda r: (r["decision_id"][:12], r["requested_action"], r["interim_action"], _ts(r["expires_at"])[11:]))


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
@click.option("--action", default=None, help="The right action: it applies instead of approval.on_reject, and labels the decision.")
def reject(config_path: Path | None, as_json: bool, decision_id: str, by: str | None, reason: str, action: str | None) -> None:
    """Reject a pending decision (the daemon must be running).

    Without --action, approval.on_reject (else the interim action) stays in force.
    Example: agentd reject 3f2a9c1e --action defrost --reason "iced up, not failed"
    """
    _resolve("reject", config_path, as_json, decision_id, by, reason, action)


def _resolve(op: str, config_path: Path | None, as_json: bool, decision_id: str, by: str | None, reason: str,
             action: str | None = None) -> None:
    import getpass

    from agentd.control.client import request
    from agentd.state import queries

    loaded = _load(config_path)
    who = by or f"local:{getpass.getuser()}"
    with contextlib.suppress(AgentdError):  # a decision id or a unique prefix of 8+ of it, never an event id; else the daemon says what is wrong
        decision_id = queries.decision_by_id(queries.open_readonly(loaded.config.data_dir), decision_id)["id"]
    req = {"op": op, "id": decision_id, "by": who, "reason": reason, **({"action": action} if action is not None else {})}
    d = request(loaded.config.socket_path, req)
    if as_json:
        _emit_json(d)
    else:
        click.echo(f"{d['id']}: {d['status']} by {who}; action now {d['action']}")
