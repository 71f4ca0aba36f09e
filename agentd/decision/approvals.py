"""Approvals and modes: pending decisions resolved by a human or by their expiry; the node's mode and lifecycle stage."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from typing import TYPE_CHECKING, Any

from agentd.config.base import MODES
from agentd.decision.approval_writes import ResolutionWrites, resolution_writes
from agentd.decision.label_writes import joined
from agentd.decision.labels import check_action
from agentd.decision.model import ASK_REASONS, Status
from agentd.errors import ConfigError, InputError, NotFound
from agentd.state import labels, queries
from agentd.state.decisions import Expiry

if TYPE_CHECKING:

    from agentd.config.schema import Config, SkillConfig
    from agentd.decision.fleet import FleetView
    from agentd.state.store import Store
    from agentd.trust.hlc import Clock

log = logging.getLogger(__name__)
EXPIRY_BATCH = 256  # due approvals expired together


def _who(by: str) -> str:
    """Who resolved an approval, as its label keeps it (bounded like every label's ``by``)."""
    return by[: labels.MAX_BY] or "unknown"


def _uncertain(record: dict[str, Any]) -> bool:
    """Was the decision sent to a human because the model could not be trusted on it?

    Then a rejection or an expiry keeps its interim action (the rules' answer, or the
    skill's ``uncertain.interim``), not the ``on_reject``/``on_timeout`` meant for a listed action.
    """
    return record.get("approval", {}).get("because") in ASK_REASONS


class ApprovalMixin:
    """The engine's human controls (a part of ``Engine``; the attributes are the engine's)."""

    _expiry_heap: list[tuple[float, str]]
    _expiry_wake: asyncio.Event
    cfg: Config
    fleet: FleetView
    mode: str
    stage: str
    store: Store
    node: str
    clock: Clock
    outbound: Any

    if TYPE_CHECKING:
        def _run_handlers_for(self, skill: SkillConfig, record: dict[str, Any]) -> None: ...
        async def _labelled(self, record: dict[str, Any], action: str) -> None: ...
        def _label_writes(self, w: labels.LabelWrite, record: dict[str, Any]) -> ResolutionWrites: ...

    def _skill_or_none(self, name: str) -> SkillConfig | None:
        """The skill, or None when a reload removed it (its pending approvals must still resolve)."""
        try:
            return self.cfg.skill(name)
        except ConfigError:
            return None

    async def approve(self, decision_id: str, *, by: str) -> dict[str, Any]:
        """Approve a pending decision: its requested action applies and its handlers run.

        The approval is a label too (the requested action was right), written with it.
        """
        current = await self.store.read(lambda c: queries.decision_by_id(c, decision_id))
        requested = current.get("approval", {}).get("requested_action")
        if requested is None:
            raise NotFound(f"decision {decision_id!r} never needed approval")
        label = labels.label_for(current, requested, source="approval", by=_who(by))
        writes = joined(self._resolution_writes(current, requested), self._label_writes(label, current))
        record = await self.store.resolve_approval(current["id"], status="approved", applied_action=requested, by=by, label=label,
                                                   after=writes.in_transaction if writes else None)
        self._written(writes)
        self.fleet.add_decision(requested, time.time())
        self._after_resolution(record)
        await self._labelled(record, requested)
        return record

    async def reject(self, decision_id: str, *, by: str, reason: str = "", action: str | None = None) -> dict[str, Any]:
        """Reject a pending decision: ``approval.on_reject`` (else the interim action) stays in force.

        With ``action`` (one of the skill's actions, not the one asked for), that action applies
        instead, and it is a label of the decision, written with the rejection.
        """
        current = await self.store.read(lambda c: queries.decision_by_id(c, decision_id))
        skill = self._skill_or_none(current["skill"])
        interim = current.get("approval", {}).get("interim_action") or current["action"]
        label = None
        if action is not None:
            applied = check_action(skill, current, action)
            if applied == current.get("approval", {}).get("requested_action"):
                raise InputError(f"{applied!r} is the action asked for: approve the decision instead of rejecting it")
            label = labels.label_for(current, applied, source="rejection", by=_who(by), note=reason[: labels.MAX_NOTE])
        else:
            applied = (skill.approval.on_reject if skill and not _uncertain(current) else None) or interim
        writes = self._resolution_writes(current, applied)
        if label is not None:
            writes = joined(writes, self._label_writes(label, current))
        record = await self.store.resolve_approval(current["id"], status="rejected", applied_action=applied, by=by, reason=reason,
                                                   label=label, after=writes.in_transaction if writes else None)
        self._written(writes)
        if applied != interim:
            self.fleet.add_decision(applied, time.time())
            self._after_resolution(record)
        if label is not None:
            await self._labelled(record, applied)
        return record

    def _resolution_writes(self, current: dict[str, Any], applied: str) -> ResolutionWrites | None:
        """The fleet-state writes of ``applied`` if it is not the interim action already committed (issue 16)."""
        interim = current.get("approval", {}).get("interim_action") or current["action"]
        return resolution_writes(self._skill_or_none(current["skill"]), interim=interim, applied=applied, node=self.node,
                                 hlc=self.clock.now(), outbound=self.outbound)

    def _written(self, writes: ResolutionWrites | None) -> None:
        """After the resolution's commit: what won goes to the read model, and the outbox is woken for its gossip."""
        for e in writes.applied if writes else []:
            self.fleet.apply(e)
        if writes and writes.applied and writes.rows:
            self.store.outbox.ready.set()

    def _after_resolution(self, record: dict[str, Any]) -> None:
        skill = self._skill_or_none(record["skill"])
        if skill is not None and self.mode != "observe":
            self._run_handlers_for(skill, record)

    async def _expiry_loop(self) -> None:
        while True:
            self._expiry_wake.clear()
            now = time.time()
            while self._expiry_heap and self._expiry_heap[0][0] <= now:
                # Due ones together, one read and one write for up to EXPIRY_BATCH of them. One
                # at a time, each waited for two of the writer's turns: at 500 decisions/s a node
                # expired 2-5 a second against 25 new, and the backlog (and the database) grew
                # without end.
                due: list[str] = []
                while self._expiry_heap and self._expiry_heap[0][0] <= now and len(due) < EXPIRY_BATCH:
                    due.append(heapq.heappop(self._expiry_heap)[1])
                if not await self._expire(due):  # the store could not take them (disk full, reload): try again shortly
                    for decision_id in due:
                        heapq.heappush(self._expiry_heap, (now + 5.0, decision_id))
                    break
            delay = self._expiry_heap[0][0] - now if self._expiry_heap else 3600.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, min(delay, 3600.0))):
                    await self._expiry_wake.wait()

    async def _expire(self, due: list[str]) -> bool:
        """Expire these approvals (those still pending); False if the batch should be retried."""
        try:
            current = await self.store.read(lambda c: queries.decisions_by_ids(c, due))
            todo: list[tuple[Expiry, str, ResolutionWrites | None]] = []
            for decision_id in due:
                record = current.get(decision_id)
                if record is None or record.get("status") != Status.PENDING_APPROVAL:
                    continue  # approved, rejected or pruned meanwhile
                skill = self._skill_or_none(record["skill"])
                interim = record.get("approval", {}).get("interim_action") or record["action"]
                applied = (skill.approval.on_timeout if skill and not _uncertain(record) else None) or interim
                writes = self._resolution_writes(record, applied)
                todo.append((Expiry(decision_id, applied, writes.in_transaction if writes else None), interim, writes))
            records = await self.store.expire_approvals([e for e, _, _ in todo]) if todo else []
        except Exception as exc:  # never let the expiry task die: the pending approvals would be forgotten
            log.error("approval expiry of %d failed, will retry: %s", len(due), exc)
            return False
        now = time.time()
        for (expiry, interim, writes), result in zip(todo, records, strict=True):
            if isinstance(result, Exception):
                log.error("approval expiry for %s failed, will retry: %s", expiry.decision_id, result)
                heapq.heappush(self._expiry_heap, (now + 5.0, expiry.decision_id))
                continue
            if result is None:
                continue  # resolved meanwhile
            record = result
            self._written(writes)
            if record["action"] != interim:
                self.fleet.add_decision(record["action"], now)
                self._after_resolution(record)
        return True

    async def set_mode(self, mode: str, *, by: str) -> None:
        """Change and persist the mode; audited."""
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        old, self.mode = self.mode, mode
        await self.store.set_setting("mode", mode)
        await self.store.set_setting("mode_config", self.cfg.daemon.mode)
        await self.store.audit("mode", {"from": old, "to": mode, "by": by})

    async def set_stage(self, stage: str, *, by: str) -> None:
        """Change and persist the lifecycle stage stamped on decisions (canary -> prod); audited."""
        if stage not in ("dev", "canary", "prod"):
            raise InputError(f"unknown lifecycle stage {stage!r} (known: dev, canary, prod)")
        old, self.stage = self.stage, stage
        await self.store.set_setting("stage", stage)
        await self.store.set_setting("stage_config", self.cfg.lifecycle.stage)
        await self.store.audit("lifecycle_stage", {"from": old, "to": stage, "by": by})
