"""The decision engine: runs the pipeline of DESIGN section 3 around the store and stages.

``async with Engine(...) as engine: record = await engine.decide("freezer_health", data)``.
One deadline per decision, a cascade of model stages with confidence gates, the rules
floor, guards, approvals, modes, exactly one decision per event id, late answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from agentd.decision.fleet import FleetView
from agentd.decision.model import DecisionRecord, Mode, ModelRef, Source, Status
from agentd.decision.policy import ACCEPTED, CircuitBreaker, StageTrace, gate, interim_action, needs_approval
from agentd.decision.rules import SkillRules, compile_all, evaluate, first_match, make_context
from agentd.decision.validate import validate_event
from agentd.errors import AgentdError, ConfigError, InputError, ModelError, NotFound
from agentd.ids import check_event_id, new_id
from agentd.stages.base import CallHandle, Cancelled, ModelStage
from agentd.stages.pool import ModelPool
from agentd.state import queries, reports
from agentd.state.store import DecisionWrite, DuplicateEvent, Store
from agentd.trust.canonical import canonical
from agentd.trust.hlc import Clock

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentd.config.loader import LoadedConfig
    from agentd.config.schema import SkillConfig
    from agentd.trust.keys import NodeKey

log = logging.getLogger(__name__)
RECENT_IDS = 100_000
MODES = ("auto", "rules_only", "observe", "manual")


@dataclass
class ShadowCall:
    """A shadow stage's call in flight beside a decision."""

    skill: SkillConfig
    index: int
    cfg: Any
    trace: StageTrace
    stop_at: float
    started: float
    handle: CallHandle | None = None


class Outbound(Protocol):
    """What the engine sends for a decision, committed with it (the node passes ``agentd.mesh.wire.DecisionWire``).

    The engine knows no topics and no envelopes; the rows it gets back are
    ``(topic, payload, qos, retain)`` and go into the decision's transaction.
    """

    def decision_messages(self, record: dict[str, Any], record_bytes: bytes) -> list[tuple[str, bytes, int, bool]]: ...


class Engine:
    """The decision pipeline over one config: compiled rules, stages, modes, approvals.

    The daemon passes the long-lived ``store`` and model ``pool`` it owns, so a reload
    (a new Engine) keeps the database, its writer and every unchanged model loaded. Without
    them (``agentd decide``, tests) the engine opens and closes its own.
    """

    def __init__(
        self,
        *,
        loaded: LoadedConfig,
        key: NodeKey,
        run_handlers: bool = True,
        clock: Clock | None = None,
        store: Store | None = None,
        pool: ModelPool | None = None,
        outbound: Outbound | None = None,
    ) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.key = key
        self.node = self.cfg.node.id
        self._run_handlers = run_handlers
        self._owns_store, self._owns_pool = store is None, pool is None
        self.store = store if store is not None else open_store(loaded, key)
        self.pool = pool if pool is not None else ModelPool()
        self.outbound = outbound  # what a decision sends (the mesh's wire format); None: nothing
        self.clock = clock or Clock()
        self.fleet = FleetView()
        self.stages: dict[str, ModelStage] = {}
        self.circuits: dict[str, CircuitBreaker] = {}
        self.rules: dict[str, SkillRules] = {}
        self.mode: str = self.cfg.daemon.mode
        self.stage: str = self.cfg.lifecycle.stage
        self.active: dict[tuple[str, int], str] = {}  # (skill, cascade index) -> model, set by activate_model
        self.counters: Counter[str] = Counter()
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._tasks: asyncio.TaskGroup | None = None
        self._expiry_heap: list[tuple[float, str]] = []
        self._expiry_wake = asyncio.Event()
        self._expiry_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.on_decision: Callable[[dict[str, Any]], None] | None = None  # metrics: called once per committed decision

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Engine:
        self.rules = compile_all(self.loaded)
        if self._owns_store:
            await self.store.__aenter__()
        try:
            await self._load_state()
            await self._load_models()
            self._tasks = asyncio.TaskGroup()
            await self._tasks.__aenter__()
            self._expiry_task = self._tasks.create_task(self._expiry_loop(), name="approval-expiry")
        except BaseException:
            if self._owns_pool:
                await self.pool.close()
            if self._owns_store:
                await self.store.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._expiry_task is not None:
                self._expiry_task.cancel()
            pending = [t for t in self._background if not t.done()]
            if pending:
                await asyncio.wait(pending, timeout=self.cfg.daemon.drain_timeout_s)
                for t in pending:
                    t.cancel()
            if self._tasks is not None:
                await self._tasks.__aexit__(None, None, None)
        finally:
            if self._owns_pool:
                await self.pool.close()
            if self._owns_store:
                await self.store.__aexit__(None, None, None)

    async def _load_state(self) -> None:
        rows, settings, values = await self.store.read(queries.engine_state)
        mode, mode_config = settings["mode"], settings["mode_config"]
        # Like the mode, a lifecycle stage set by a fleet command holds until the config's own stage changes.
        if settings["stage"] in ("dev", "canary", "prod") and settings["stage_config"] == self.cfg.lifecycle.stage:
            self.stage = str(settings["stage"])
        if settings["active_models"]:  # activations hold while the config they were made on does
            saved = json.loads(settings["active_models"])
            if saved.get("config") == self.loaded.sha256:
                names = {m.name for m in self.cfg.models}
                for key, model in saved.get("stages", {}).items():
                    skill_name, _, idx = key.rpartition("/")
                    if model in names and idx.isdigit():
                        self.active[(skill_name, int(idx))] = model
        for action, ts in rows:
            self.fleet.add_decision(action, ts)
        for k, v, _node in values:
            self.fleet.set_value(k, json.loads(v))
        # A mode set at run time (CLI, fleet command) holds until the config's own mode changes.
        if mode in MODES and mode_config == self.cfg.daemon.mode:
            self.mode = mode
        pending = await self.store.read(queries.pending_approvals)
        for p in pending:
            heapq.heappush(self._expiry_heap, (p["expires_at"], p["decision_id"]))

    async def _load_models(self) -> None:
        used = {stage.model for skill in self.cfg.skills for stage in skill.cascade} | set(self.active.values())
        for m in self.cfg.models:
            if m.name in used:
                await self._load_model(m.name)

    async def _load_model(self, name: str) -> ModelStage:
        """Load (or return the loaded) model ``name``; a refused one becomes a MissingStage."""
        if name in self.stages:
            return self.stages[name]
        m = self.cfg.model(name)
        stage, fresh, missing = await self.pool.acquire(m)
        if fresh:
            await self.store.audit("model_load", {"model": m.name, "version": m.version, "backend": m.backend, "sha256": getattr(m, "sha256", None)})
            log.info("model %s loaded (%s, version %s)", m.name, m.backend, m.version)
        elif missing is not None:
            await self.store.audit("model_refused", {"model": m.name, "version": m.version, "reason": missing})
            log.error("model %s not loaded: %s", m.name, missing)
        self.stages[m.name] = stage
        self.circuits[m.name] = CircuitBreaker(m.circuit_failures, m.circuit_cooldown_s)
        return stage

    async def activate_model(self, skill_name: str, index: int, model: str, *, by: str) -> dict[str, Any]:
        """Switch cascade stage ``index`` of a skill to another declared model (e.g. a canary version).

        The model is loaded and hash-checked now, outside any decision; the switch persists
        until the config changes, and is audited.
        """
        skill = self.cfg.skill(skill_name)
        if not 0 <= index < len(skill.cascade):
            raise InputError(f"skill {skill_name!r} has {len(skill.cascade)} cascade stage(s); no stage {index}")
        self.cfg.model(model)  # ConfigError if it is not declared under models
        stage = await self._load_model(model)
        if not stage.available:
            raise ModelError(f"model {model!r} cannot be activated: {stage.missing_reason}")
        previous = self.active.get((skill_name, index), skill.cascade[index].model)
        self.active[(skill_name, index)] = model
        saved = {f"{s}/{i}": m for (s, i), m in self.active.items()}
        await self.store.set_setting("active_models", json.dumps({"config": self.loaded.sha256, "stages": saved}))
        await self.store.audit("model_activated", {"skill": skill_name, "stage": index, "from": previous, "to": model,
                                                   "version": stage.version, "sha256": stage.sha256, "by": by})
        return {"skill": skill_name, "stage": index, "model": model, "version": stage.version}

    # -- deciding ------------------------------------------------------------

    async def decide(
        self,
        skill_name: str,
        data: Any,
        *,
        event_id: str | None = None,
        received: float | None = None,
        origin: str = "local",
    ) -> dict[str, Any]:
        """Decide one event; returns the decision record (the existing one for a repeated id).

        ``received`` is the ``time.monotonic()`` at which the event arrived; the deadline
        counts from it.
        """
        t0 = received if received is not None else time.monotonic()
        wall0 = time.time() - (time.monotonic() - t0)
        try:
            skill = self.cfg.skill(skill_name)
        except ConfigError as exc:  # for an event, an unknown skill is bad input
            raise InputError(str(exc)) from exc
        fields = validate_event(skill, data)
        eid = check_event_id(event_id) if event_id is not None else new_id()
        if event_id is not None:
            existing = await self._existing(eid)
            if existing is not None:
                self.counters["duplicates"] += 1
                return existing
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved" noise
        self._inflight[eid] = fut
        try:
            record = await self._decide(skill, fields, eid, t0, wall0, origin)
            fut.set_result(record)
            return record
        except Exception as exc:
            fut.set_exception(exc)
            raise
        finally:
            self._inflight.pop(eid, None)
            if not fut.done():
                fut.cancel()

    async def _existing(self, eid: str) -> dict[str, Any] | None:
        """The decision already made (or being made) for a repeated event id.

        The in-memory LRU saves a database read for ids it has not seen; ids it has
        forgotten are still caught by the store, which refuses a second decision.
        """
        inflight = self._inflight.get(eid)
        if inflight is not None:
            return await asyncio.shield(inflight)
        if eid in self._recent:
            return await self.store.read(lambda c: queries.find_by_event(c, eid))
        return None

    async def _decide(self, skill: SkillConfig, fields: dict[str, Any], eid: str, t0: float, wall0: float, origin: str) -> dict[str, Any]:
        deadline = t0 + skill.deadline_ms / 1000
        reserve = self.cfg.daemon.deadline_reserve_ms / 1000
        traces: list[StageTrace] = []
        late: list[tuple[StageTrace, CallHandle]] = []
        action: str | None = None
        source, fallback, model_info, confidence = "rules", None, None, None
        mode = self.mode

        acted = [(i, s) for i, s in enumerate(skill.cascade) if not s.shadow]
        if mode == "rules_only":
            fallback = "mode_rules_only"
        elif not acted:
            fallback = "model_missing"
        else:
            for index, stage_cfg in acted:
                model_name = self.active.get((skill.name, index), stage_cfg.model)
                trace = StageTrace(model=model_name)
                traces.append(trace)
                outcome, answer_action = await self._run_stage(skill, stage_cfg, model_name, fields, deadline - reserve, trace, late)
                trace.outcome = outcome
                if outcome == ACCEPTED:
                    action = answer_action
                    source, confidence = "model", trace.confidence
                    stage = self.stages[model_name]
                    model_info = ModelRef(stage.name, stage.version, stage.sha256)
                    break
                fallback = outcome

        rules = self.rules[skill.name]
        context = make_context({**fields, "skill": skill.name, "node": self.node, "action": action or ""}, self.fleet)
        rule_name = None
        rule_errors: list[str] = []
        if action is None:
            rule, rule_errors = first_match(rules.rules, context)
            action, rule_name = rule.action, rule.name
        else:
            fallback = None

        guard_name = None
        for g in rules.guards:
            context.add_variable("action", action)
            try:
                if evaluate(g, context) and g.action != action:
                    action, guard_name = g.action, g.name
            except AgentdError as exc:
                rule_errors.append(str(exc))

        status, approval, expires_at = "decided", None, None
        if needs_approval(skill, mode, action):
            interim = interim_action(skill)
            expires_at = round(wall0 + skill.approval.timeout_s, 6)
            approval = {"requested_action": action, "interim_action": interim, "status": "pending", "expires_at": expires_at}
            status, action = "pending_approval", interim

        latency_ms = round((time.monotonic() - t0) * 1000, 3)
        hlc = self.clock.now()
        typed = DecisionRecord(
            id=new_id(), event_id=eid, node=self.node, skill=skill.name, action=action, status=Status(status),
            source=Source(source), model=model_info, confidence=None if confidence is None else round(confidence, 4),
            fallback_reason=fallback, rule=rule_name, guard=guard_name, latency_ms=latency_ms,
            stages=[t.as_dict() for t in traces], hlc=hlc, created_at=round(time.time(), 6),
            lifecycle={
                "stage": self.stage,
                "release": self.cfg.lifecycle.release,
                "config_sha256": self.loaded.sha256,
                "models": {n: s.version for n, s in self.stages.items()},
            },
            mode=Mode(mode), origin=origin, inputs=fields, approval=approval, rule_errors=rule_errors,
        )
        record = typed.to_dict()
        record_bytes = canonical(record)
        outbox = self.outbound.decision_messages(record, record_bytes) if self.outbound is not None else []
        write = DecisionWrite(eid, skill.name, wall0, fields, record, self.node, outbox, expires_at, record_bytes)
        try:
            await self.store.record_decision(write)
        except DuplicateEvent:
            self.counters["duplicates"] += 1
            return await self.store.read(lambda c: queries.find_by_event(c, eid) or record)
        self._remember(eid)
        self.fleet.add_decision(record["action"], record["created_at"])
        self.counters[f"source:{source}"] += 1
        if fallback:
            self.counters[f"fallback:{fallback}"] += 1
        if self.on_decision is not None:
            self.on_decision(record)
        for trace, handle in late:
            self._spawn(self._late_answer(record["id"], trace, handle), name=f"late-{record['id'][:8]}")
        if mode != "rules_only":
            # Shadows start once the decision is committed, so they never delay it or queue ahead of it.
            for index, stage_cfg in enumerate(skill.cascade):
                if stage_cfg.shadow:
                    call = self._start_shadow(skill, index, stage_cfg, fields)
                    self._spawn(self._finish_shadow(record, call), name=f"shadow-{record['id'][:8]}")
        if expires_at is not None:
            heapq.heappush(self._expiry_heap, (expires_at, record["id"]))
            self._expiry_wake.set()
        if mode != "observe":  # while pending, the interim action is in force: its handlers run
            self._run_handlers_for(skill, record)
        return record

    async def _run_stage(
        self,
        skill: SkillConfig,
        stage_cfg: Any,
        model_name: str,
        fields: dict[str, Any],
        stop_at: float,
        trace: StageTrace,
        late: list[tuple[StageTrace, CallHandle]],
    ) -> tuple[str, str | None]:
        stage = self.stages.get(model_name)
        if stage is None or not stage.available:
            return "model_missing", None
        breaker = self.circuits[stage.name]
        now = time.monotonic()
        budget = stop_at - now
        if stage_cfg.timeout_ms is not None:
            budget = min(budget, stage_cfg.timeout_ms / 1000)
        if budget <= 0:
            return "timeout", None
        if stage.expected_wait_s() > budget:
            return "overloaded", None
        if not breaker.allow(now):
            return "circuit_open", None
        t = time.monotonic()
        try:
            handle = stage.call(fields, now + budget)
        except ModelError:
            breaker.failure(time.monotonic())
            return "model_error", None
        try:
            async with asyncio.timeout(budget):
                answer = await asyncio.shield(handle.future)
        except asyncio.CancelledError:
            handle.cancel()  # the decision was abandoned (shutdown): free the worker too
            raise
        except TimeoutError:
            handle.cancel()
            breaker.failure(time.monotonic())
            trace.latency_ms = round((time.monotonic() - t) * 1000, 3)
            late.append((trace, handle))
            return "timeout", None
        except (ModelError, Cancelled) as exc:
            breaker.failure(time.monotonic())
            trace.latency_ms = round((time.monotonic() - t) * 1000, 3)
            log.warning("model %s failed: %s", stage.name, exc)
            return "model_error", None
        breaker.success()
        trace.answer, trace.confidence, trace.scores = answer.label, answer.confidence, answer.scores
        trace.latency_ms = round((time.monotonic() - t) * 1000, 3)
        trace.extra = answer.extra
        mapped = stage_cfg.map.get(answer.label, answer.label)
        trace.action = mapped if mapped in skill.actions else None
        action, outcome = gate(answer, stage_cfg, skill.actions)
        return outcome, action

    def _start_shadow(self, skill: SkillConfig, index: int, stage_cfg: Any, fields: dict[str, Any]) -> ShadowCall:
        """Start a shadow stage's call for a committed decision, with the skill's deadline of its own.

        A shadow that would wait for its worker is skipped (``overloaded``): it samples the
        events that come while it is idle, and never holds up an acted call.
        """
        model_name = self.active.get((skill.name, index), stage_cfg.model)
        now = time.monotonic()
        budget = skill.deadline_ms / 1000
        if stage_cfg.timeout_ms is not None:
            budget = min(budget, stage_cfg.timeout_ms / 1000)
        call = ShadowCall(skill=skill, index=index, cfg=stage_cfg, trace=StageTrace(model=model_name), stop_at=now + budget, started=now)
        stage = self.stages.get(model_name)
        if stage is None or not stage.available:
            call.trace.outcome = "model_missing"
        elif stage.busy() or stage.expected_wait_s() > budget:
            call.trace.outcome = "overloaded"
        else:
            try:
                call.handle = stage.call(fields, call.stop_at)
            except ModelError:
                call.trace.outcome = "model_error"
        return call

    async def _finish_shadow(self, record: dict[str, Any], call: ShadowCall) -> None:
        """Wait for a shadow answer (until its deadline), then store it beside the decision."""
        trace, skill = call.trace, call.skill
        if call.handle is not None:
            try:
                async with asyncio.timeout(max(0.0, call.stop_at - time.monotonic())):
                    answer = await asyncio.shield(call.handle.future)
            except asyncio.CancelledError:
                call.handle.cancel()  # shutting down: free the worker
                raise
            except TimeoutError:
                call.handle.cancel()
                trace.outcome = "timeout"
            except (ModelError, Cancelled):
                trace.outcome = "model_error"
            else:
                trace.answer, trace.confidence = answer.label, answer.confidence
                mapped = call.cfg.map.get(answer.label, answer.label)
                trace.action = mapped if mapped in skill.actions else None
                trace.outcome = gate(answer, call.cfg, skill.actions)[1]
            trace.latency_ms = round((time.monotonic() - call.started) * 1000, 3)
        stage = self.stages.get(trace.model)
        life = record["lifecycle"]
        acted = (record.get("approval") or {}).get("requested_action") or record["action"]
        row = reports.ShadowAnswer(
            record["id"], call.index, skill.name, trace.model, stage.version if stage else "?", life["stage"], life["release"],
            trace.outcome, trace.answer, trace.action, trace.confidence, trace.latency_ms, acted,
        )
        await self.store.write(lambda conn: reports.insert(conn, row))
        self.counters["shadow_answers"] += 1

    async def _late_answer(self, decision_id: str, trace: StageTrace, handle: CallHandle) -> None:
        try:
            answer = await handle.future
        except (Cancelled, ModelError):
            return
        late = {"model": trace.model, "answer": answer.label, "confidence": round(answer.confidence, 4), "latency_ms": answer.latency_ms}
        await self.store.set_late_answer(decision_id, late)
        self.counters["late_answers"] += 1

    def _remember(self, eid: str) -> None:
        self._recent[eid] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def _spawn(self, coro: Any, *, name: str) -> None:
        assert self._tasks is not None
        task = self._tasks.create_task(_logged(coro, name), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- approvals -----------------------------------------------------------

    def _skill_or_none(self, name: str) -> SkillConfig | None:
        """The skill, or None when a reload removed it (its pending approvals must still resolve)."""
        try:
            return self.cfg.skill(name)
        except ConfigError:
            return None

    async def approve(self, decision_id: str, *, by: str) -> dict[str, Any]:
        """Approve a pending decision: its requested action applies and its handlers run."""
        current = await self.store.read(lambda c: queries.get_decision(c, decision_id))
        requested = current.get("approval", {}).get("requested_action")
        if requested is None:
            raise NotFound(f"decision {decision_id!r} never needed approval")
        record = await self.store.resolve_approval(current["id"], status="approved", applied_action=requested, by=by)
        self.fleet.add_decision(requested, time.time())
        self._after_resolution(record)
        return record

    async def reject(self, decision_id: str, *, by: str, reason: str = "") -> dict[str, Any]:
        """Reject a pending decision: ``approval.on_reject`` (else the interim action) stays in force."""
        current = await self.store.read(lambda c: queries.get_decision(c, decision_id))
        skill = self._skill_or_none(current["skill"])
        interim = current.get("approval", {}).get("interim_action") or current["action"]
        applied = (skill.approval.on_reject if skill else None) or interim
        record = await self.store.resolve_approval(current["id"], status="rejected", applied_action=applied, by=by, reason=reason)
        if applied != interim:
            self.fleet.add_decision(applied, time.time())
            self._after_resolution(record)
        return record

    def _after_resolution(self, record: dict[str, Any]) -> None:
        skill = self._skill_or_none(record["skill"])
        if skill is not None and self.mode != "observe":
            self._run_handlers_for(skill, record)

    async def _expiry_loop(self) -> None:
        while True:
            self._expiry_wake.clear()
            now = time.time()
            while self._expiry_heap and self._expiry_heap[0][0] <= now:
                _, decision_id = heapq.heappop(self._expiry_heap)
                if not await self._expire(decision_id):
                    # the store could not take it (disk full, reload): try again shortly
                    heapq.heappush(self._expiry_heap, (now + 5.0, decision_id))
                    break
            delay = self._expiry_heap[0][0] - now if self._expiry_heap else 3600.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, min(delay, 3600.0))):
                    await self._expiry_wake.wait()

    async def _expire(self, decision_id: str) -> bool:
        """Expire one approval; False if it should be retried."""
        try:
            current = await self.store.read(lambda c: queries.get_decision(c, decision_id))
            skill = self._skill_or_none(current["skill"])
            interim = current.get("approval", {}).get("interim_action") or current["action"]
            applied = (skill.approval.on_timeout if skill else None) or interim
            record = await self.store.resolve_approval(decision_id, status="expired", applied_action=applied, by="timeout")
        except NotFound:
            return True  # approved or rejected meanwhile
        except Exception as exc:  # never let the expiry task die: the pending approval would be forgotten
            log.error("approval expiry for %s failed, will retry: %s", decision_id, exc)
            return False
        if applied != interim:
            self.fleet.add_decision(applied, time.time())
            self._after_resolution(record)
        return True

    # -- handlers, modes, status --------------------------------------------

    def _run_handlers_for(self, skill: SkillConfig, record: dict[str, Any]) -> None:
        if not self._run_handlers:
            return
        for h in skill.handlers:
            if h.action != record["action"]:
                continue
            if h.type == "log":
                log.info("action %s for event %s (decision %s)", record["action"], record["event_id"], record["id"])
            else:
                self._spawn(_exec_handler(h.argv, h.timeout_s, record), name=f"handler-{record['id'][:8]}")

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

    async def status(self) -> dict[str, Any]:
        """What `agentd status` shows."""
        totals = await self.store.read(queries.counts)
        models = []
        for name, stage in self.stages.items():
            models.append({
                **stage.info(),
                "available": stage.available,
                "missing_reason": stage.missing_reason,
                "circuit": self.circuits[name].state,
            })
        return {
            "node": self.node,
            "fleet": self.cfg.node.fleet,
            "mode": self.mode,
            "lifecycle": {"stage": self.stage, "release": self.cfg.lifecycle.release, "config_sha256": self.loaded.sha256},
            "models": models,
            "skills": [s.name for s in self.cfg.skills],
            "counters": dict(self.counters),
            **totals,
        }


def open_store(loaded: LoadedConfig, key: NodeKey) -> Store:
    """The node's store, configured from ``loaded`` (not yet open: use ``async with``)."""
    cfg = loaded.config
    return Store(data_dir=cfg.data_dir, key=key, node=cfg.node.id, synchronous=cfg.state.synchronous,
                 checkpoint_every=cfg.state.checkpoint_every)


def store_settings(loaded: LoadedConfig) -> tuple[Any, ...]:
    """What a store is opened with: a reload that changes any of it reopens the store."""
    cfg = loaded.config
    return (cfg.data_dir, cfg.node.id, cfg.state.synchronous, cfg.state.checkpoint_every)


async def _logged(coro: Any, name: str) -> None:
    """Run a background job; log its failure instead of tearing down the engine's TaskGroup."""
    try:
        await coro
    except Exception:
        log.exception("background task %s failed", name)


async def _exec_handler(argv: list[str], timeout_s: float, record: dict[str, Any]) -> None:
    """Run an exec handler with the decision JSON on stdin, bounded by ``timeout_s``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        log.error("handler %s could not start: %s", argv[0], exc)
        return
    try:
        async with asyncio.timeout(timeout_s):
            _, err = await proc.communicate(json.dumps(record).encode())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.error("handler %s timed out after %.1f s (killed)", argv[0], timeout_s)
        return
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()  # never leave an orphan behind on shutdown
        raise
    if proc.returncode:
        log.error("handler %s exited %s: %s", argv[0], proc.returncode, err[-300:].decode(errors="replace"))
