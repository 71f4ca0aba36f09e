"""Signed fleet commands arriving over MQTT: checked, applied, audited and answered (DESIGN section 7).

Only a command whose operator signature verifies is audited by itself and answered; the
rest (unsigned, forged, malformed, replayed, for another node) is counted and audited as
one summary per reason per interval (``mesh.refusal_summary_s``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from agentd.config.loader import parse_config
from agentd.control.commands import ANSWERED, MAX_VALIDITY_S, CommandRefused, check_command
from agentd.decision.rules import compile_all
from agentd.errors import AgentdError, ConfigError, InputError, Rejected
from agentd.files import replace_atomically
from agentd.mesh.topics import topic
from agentd.trust.envelope import envelope

if TYPE_CHECKING:
    from agentd.daemon.node import Daemon

log = logging.getLogger(__name__)


class FleetCommands:
    """The fleet-command handler of one node (the MQTT link calls ``handle``)."""

    def __init__(self, node: Daemon) -> None:
        self._node = node

    async def handle(self, payload: bytes) -> None:
        """A signed fleet command from MQTT: check, use its nonce, apply, audit, reply (signed).

        Only a command whose operator signature verifies is audited by itself and answered;
        the rest (unsigned, forged, malformed, replayed, for another node) is counted and
        audited as one summary per reason per interval (``mesh.refusal_summary_s``).
        """
        await self._node.accepting()
        engine = self._node.current_engine()
        cfg = self._node.loaded.config
        try:
            env = check_command(payload, cfg=cfg, now=time.time())
        except CommandRefused as exc:
            # A signed refusal is answered once: its id is used up like an accepted command's,
            # so replaying the captured bytes costs a counter, not an audit record and a reply.
            if exc.reason in ANSWERED and await engine.store.claim_nonce(exc.env["id"], time.time() + MAX_VALIDITY_S):
                self._node.refusals.add("command", exc.reason, summarise=False)  # counted; audited by itself below
                await self._done(exc.env, False, {"error": str(exc), "reason": exc.reason})
            elif exc.reason in ANSWERED:
                self._refused(Rejected("replayed", f"command id {exc.env['id'][:40]!r} was already used"), exc.env["node"])
            else:
                self._refused(exc, exc.env["node"])
            return
        except Rejected as exc:
            self._refused(exc, "")
            return
        body, operator = env["body"], env["node"]
        if not await engine.store.claim_nonce(env["id"], float(body["expires_at"])):
            self._refused(Rejected("replayed", f"command id {env['id'][:40]!r} was already used"), operator)
            return
        try:
            result = await self._apply(body["cmd"], body.get("args", {}), operator)
            await self._done(env, True, {"result": result})
            log.info("fleet command %s (%s) by %s applied", body["cmd"], env["id"][:12], operator)
        except AgentdError as exc:
            await self._done(env, False, {"error": str(exc), "reason": "failed"})

    def _refused(self, exc: Rejected, operator: str) -> None:
        if self._node.refusals.add("command", exc.reason, sender=operator, detail=str(exc)):
            log.warning("fleet command refused: %s: %s (further %s refusals are counted and audited as a summary)",
                        exc.reason, exc, exc.reason)

    async def _done(self, env: dict[str, Any], ok: bool, outcome: dict[str, Any]) -> None:
        engine = self._node.current_engine()
        cfg = self._node.loaded.config
        body, ident = env["body"], env["id"]
        audit = {"command_id": ident, "cmd": body.get("cmd"), "operator": env["node"], "accepted": ok,
                 "target": body.get("target"), **{k: v for k, v in outcome.items() if k != "result"}}
        reply_body = {"command_id": ident, "cmd": body.get("cmd"), "ok": ok, **outcome}
        payload = envelope("reply", fleet=cfg.node.fleet, node=cfg.node.id, hlc=self._node.clock.now(), body=reply_body, key=engine.key)
        await engine.store.command_outcome(ident, audit, (topic(cfg.node.fleet, "nodes", cfg.node.id, "reply"), payload))

    async def _apply(self, cmd: str, args: dict[str, Any], operator: str) -> Any:
        engine = self._node.current_engine()
        by = f"operator:{operator}"
        if cmd == "status":
            st = await engine.status()
            return {k: st[k] for k in ("node", "mode", "lifecycle", "models", "decisions", "fallback_rate", "outbox_depth", "pending_approvals")}
        if cmd in ("set_mode", "quarantine"):
            mode = "observe" if cmd == "quarantine" else args.get("mode")
            if not isinstance(mode, str):
                raise InputError('set_mode needs args {"mode": "auto|rules_only|observe|manual"}')
            await engine.set_mode(mode, by=by)
            return {"mode": engine.mode}
        if cmd in ("approve", "reject"):
            did = args.get("id")
            if not isinstance(did, str):
                raise InputError(f'{cmd} needs args {{"id": "<decision id>"}}')
            rec = await (engine.approve(did, by=by) if cmd == "approve" else engine.reject(did, by=by, reason=str(args.get("reason", ""))[:500]))
            return {"id": rec["id"], "status": rec["status"], "action": rec["action"]}
        if cmd == "activate_model":
            skill, index, model = args.get("skill"), args.get("stage", 0), args.get("model")
            if not isinstance(skill, str) or not isinstance(model, str) or isinstance(index, bool) or not isinstance(index, int):
                raise InputError('activate_model needs args {"skill": "<skill>", "stage": <cascade index>, "model": "<declared model>"}')
            return await engine.activate_model(skill, index, model, by=by)
        if cmd == "set_stage":
            stage = args.get("stage")
            if not isinstance(stage, str):
                raise InputError('set_stage needs args {"stage": "dev|canary|prod"}')
            await engine.set_stage(stage, by=by)
            return {"stage": engine.stage}
        if cmd == "reload":
            return await self._node.reload()
        if cmd == "set_config":
            return await self._set_config(args.get("config"), by)
        raise InputError(f"unknown command {cmd!r}")

    async def _set_config(self, text: Any, by: str) -> dict[str, Any]:
        """Validate a whole config document, write it atomically, reload; roll back if it fails to load."""
        if not isinstance(text, str):
            raise InputError('set_config needs args {"config": "<the whole YAML document>"}')
        path = self._node.config_path
        new = parse_config(text.encode(), source=f"{path} (set_config)", base=path.resolve().parent)
        compile_all(new)
        if new.config.node.id != self._node.loaded.config.node.id:
            raise ConfigError("set_config may not change node.id")
        old_text = path.read_bytes()
        replace_atomically(path, text.encode())
        result = await self._node.reload()
        if not result.get("reloaded"):
            replace_atomically(path, old_text)
            await self._node.reload()
            raise ConfigError(f"the new config failed to load and was rolled back: {result.get('error')}")
        await self._node.current_engine().store.audit("config_set", {"by": by, "config_sha256": new.sha256})
        return result
