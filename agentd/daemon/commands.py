"""The node's commands, one handler per name of ``agentd.control.commands.REGISTRY``.

The local socket and the fleet path both call ``NodeCommands.run``; ``via`` says which,
for the few answers that differ (a fleet ``status`` or ``approve`` reply carries a summary,
the socket gets everything).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from agentd.config.loader import parse_config
from agentd.control.registry import REGISTRY, STATE_COMMANDS
from agentd.decision.rules import compile_all
from agentd.errors import ConfigError, InputError
from agentd.files import replace_atomically
from agentd.state import queries
from agentd.state.labels import MAX_BY

if TYPE_CHECKING:
    from agentd.daemon.node import Daemon

Via = Literal["socket", "fleet"]
FLEET_STATUS = ("node", "mode", "lifecycle", "models", "decisions", "fallback_rate", "outbox_depth", "pending_approvals")


class NodeCommands:
    """Runs a command by name on the node; InputError for a bad name or bad arguments."""

    def __init__(self, node: Daemon) -> None:
        self._node = node
        self._handlers: dict[str, Callable[[dict[str, Any], str, Via, float], Awaitable[Any]]] = {
            name: getattr(self, f"_{name}") for name in REGISTRY
        }

    async def run(
        self, name: str, args: dict[str, Any], *, by: str, via: Via, received: float | None = None, signed: dict[str, Any] | None = None
    ) -> Any:
        """``signed``: the fleet command's verified envelope (a fleet-state write is stored and gossiped whole)."""
        if name in STATE_COMMANDS and signed is not None:
            await self._node.accepting()
            return await self._node.fleet_state.operator_write(signed)
        handler = self._handlers.get(name)
        if handler is None:
            raise InputError(f"unknown command {name!r} (known: {', '.join(REGISTRY)})")
        if name not in ("ping", "reload"):
            await self._node.accepting()  # not while a reload swaps the engine
        return await handler(args, by, via, received if received is not None else time.monotonic())

    async def _ping(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        return {"pong": True}

    async def _reload(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        return await self._node.reload()

    async def _submit(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        skill, data, eid = args.get("skill"), args.get("data"), args.get("id")
        if not isinstance(skill, str):
            raise InputError('submit needs "skill" (a string)')
        if eid is not None and not isinstance(eid, str):
            raise InputError('"id" must be a string')
        return await self._node.submit(skill, data, eid, origin="socket", received=received)

    async def _status(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        node, engine = self._node, self._node.current_engine()
        status = await engine.status()
        if via == "fleet":
            return {k: status[k] for k in FLEET_STATUS}
        status.update({"pid": os.getpid(), "uptime_s": round(time.time() - node.started_at, 1), "inflight": node.inflight, "daemon": "running"})
        m = node.loaded.config.mqtt
        status["broker"] = {"enabled": m.enabled, "host": m.host, "port": m.port, "connected": bool(node.link and node.link.connected)}
        if node.link is not None:
            status["broker"].update(node.link.counters)
            status["broker"]["protocol"] = node.link.protocol  # "5" or "3.1.1" while connected
            status["broker"]["rejected"] = dict(node.link.rejected)
        status["broker"]["refused"] = dict(node.refusals.total)
        status["peers"] = await engine.store.read(queries.list_peers)
        # What a reload kept: the store's open time and each model runtime's load time stay put.
        status["resources"] = {"store_opened_at": node.store_opened_at, "models_loaded_at": node.pool.loaded(), "model_loads": node.pool.loads}
        return status

    async def _approve(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        return await self._resolve("approve", args, by, via)

    async def _reject(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        return await self._resolve("reject", args, by, via)

    async def _resolve(self, op: str, args: dict[str, Any], by: str, via: Via) -> Any:
        engine = self._node.current_engine()
        did, action = args.get("id"), args.get("action")
        if not isinstance(did, str):
            raise InputError(f'{op} needs "id" (a decision id)')
        if op == "approve":
            rec = await engine.approve(did, by=by)
        else:
            if action is not None and not isinstance(action, str):
                raise InputError('"action" of reject (the right action, applied instead of on_reject) must be a string')
            rec = await engine.reject(did, by=by, reason=str(args.get("reason") or "")[:500], action=action)
        return {"id": rec["id"], "status": rec["status"], "action": rec["action"]} if via == "fleet" else rec

    async def _label(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        did, action, note = args.get("id"), args.get("action"), args.get("note", "")
        if not isinstance(did, str) or not isinstance(action, str) or not isinstance(note, str):
            raise InputError('label needs {"id": "<decision or event id>", "action": "<the right action>"} and may take "note" (a string)')
        if via == "fleet":  # "operator:NAME" may pass the bound; the command's own audit record keeps it whole
            by = by[:MAX_BY]
        return await self._node.current_engine().label(did, action, by=by, note=note)

    async def _clear_peer_flag(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        node, reason = args.get("node"), args.get("reason")
        if not isinstance(node, str) or not 0 < len(node) <= 64 or not isinstance(reason, str) or not 0 < len(reason.strip()) <= 500:
            raise InputError('clear_peer_flag needs {"node": "<peer id>", "reason": "<what the investigation found, 1-500 characters>"}')
        return await self._node.current_engine().store.clear_peer_flag(node, by=by, reason=reason.strip())

    async def _fleet_set(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        raise InputError("fleet_set and fleet_unset come only as an operator's signed fleet command (agentd fleet set)")

    _fleet_unset = _fleet_set

    async def _set_mode(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        engine = self._node.current_engine()
        await engine.set_mode(_text(args, "mode", "set_mode", "auto, rules_only, observe or manual"), by=by)
        return {"mode": engine.mode}

    async def _quarantine(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        return await self._set_mode({"mode": "observe"}, by, via, received)

    async def _approvals(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        return await self._node.current_engine().store.read(queries.pending_approvals)

    async def _activate_model(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        skill, index, model = args.get("skill"), args.get("stage", 0), args.get("model")
        if not isinstance(skill, str) or not isinstance(model, str) or isinstance(index, bool) or not isinstance(index, int):
            raise InputError('activate_model needs args {"skill": "<skill>", "stage": <cascade index>, "model": "<declared model>"}')
        return await self._node.current_engine().activate_model(skill, index, model, by=by)

    async def _set_stage_state(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        skill, index, state = args.get("skill"), args.get("stage", 0), args.get("state")
        if not isinstance(skill, str) or state not in ("acting", "shadow") or isinstance(index, bool) or not isinstance(index, int):
            raise InputError('set_stage_state needs args {"skill": "<skill>", "stage": <cascade index>, "state": "acting" | "shadow"}')
        return await self._node.current_engine().set_stage_state(skill, index, str(state), by=by)

    async def _calibrate(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        skill, min_labels = args.get("skill"), args.get("min_labels", 20)
        if (skill is not None and not isinstance(skill, str)) or isinstance(min_labels, bool) or not isinstance(min_labels, int) or not 5 <= min_labels <= 100_000:
            raise InputError('calibrate takes args {"skill": "<skill>" (optional), "min_labels": 5..100000 (default 20)}')
        return {"models": await self._node.current_engine().calibrate(by=by, skill_name=skill, min_labels=min_labels)}

    async def _set_stage(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        engine = self._node.current_engine()
        await engine.set_stage(_text(args, "stage", "set_stage", "dev, canary or prod"), by=by)
        return {"stage": engine.stage}

    async def _set_config(self, args: dict[str, Any], by: str, via: Via, received: float) -> Any:
        """Validate a whole config document, write it atomically, reload; roll back if it fails to load."""
        text = args.get("config")
        if not isinstance(text, str):
            raise InputError('set_config needs args {"config": "<the whole YAML document>"}')
        node = self._node
        path = node.config_path
        new = parse_config(text.encode(), source=f"{path} (set_config)", base=path.resolve().parent)
        compile_all(new)
        if new.config.node.id != node.loaded.config.node.id:
            raise ConfigError("set_config may not change node.id")
        old_text = path.read_bytes()
        replace_atomically(path, text.encode())
        result = await node.reload()
        if not result.get("reloaded"):
            replace_atomically(path, old_text)
            await node.reload()
            raise ConfigError(f"the new config failed to load and was rolled back: {result.get('error')}")
        await node.current_engine().store.audit("config_set", {"by": by, "config_sha256": new.sha256})
        return result


def _text(args: dict[str, Any], name: str, command: str, choices: str) -> str:
    """The string argument ``name`` of ``command``; InputError naming the choices otherwise."""
    value = args.get(name)
    if not isinstance(value, str):
        raise InputError(f'{command} needs "{name}": {choices}')
    return value
