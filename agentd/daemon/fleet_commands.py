"""Signed fleet commands arriving over MQTT: checked, applied, audited and answered (DESIGN section 7).

Only a command whose operator signature verifies is audited by itself and answered; the
rest (unsigned, forged, malformed, replayed, for another node) is counted and audited as
one summary per reason per interval (``mesh.refusal_summary_s``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from agentd.control.commands import ANSWERED, MAX_VALIDITY_S, CommandRefused, check_command
from agentd.errors import AgentdError, Rejected
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
            result = await self._node.commands.run(body["cmd"], body.get("args", {}), by=f"operator:{operator}", via="fleet", signed=env)
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
