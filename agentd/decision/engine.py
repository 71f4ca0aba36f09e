"""The decision engine: runs the pipeline of DESIGN section 3 around the store and stages.

``async with Engine(...) as engine: record = await engine.decide("freezer_health", data)``.
One deadline per decision, a cascade of model stages with confidence gates, the rules
floor, guards, approvals, modes, exactly one decision per event id, late answers.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import json
import logging
import time
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from agentd.config.base import MODES
from agentd.decision import policy
from agentd.decision.approvals import ApprovalMixin
from agentd.decision.cascade import CascadeMixin
from agentd.decision.fleet import FleetView
from agentd.decision.fleet_writes import FleetStateMixin
from agentd.decision.handlers import HandlerMixin
from agentd.decision.labels import LabelMixin
from agentd.decision.learning import LearningMixin
from agentd.decision.model import DecisionRecord, Mode, ModelRef, Source, Status
from agentd.decision.policy import ACCEPTED, CircuitBreaker, StageTrace, disagreement, interim_action, needs_approval
from agentd.decision.rules import SkillRules, compile_all, first_match, guarded, make_context
from agentd.decision.shadows import ShadowMixin
from agentd.decision.status import StatusMixin
from agentd.decision.validate import validate_event
from agentd.errors import ConfigError, InputError
from agentd.ids import check_event_id, new_id
from agentd.stages.base import CallHandle, ModelStage
from agentd.stages.pool import ModelPool
from agentd.state import queries
from agentd.state.store import DecisionWrite, DuplicateEvent, Store, open_store
from agentd.trust.canonical import canonical
from agentd.trust.hlc import Clock

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentd.config.loader import LoadedConfig
    from agentd.config.schema import SkillConfig
    from agentd.trust.keys import NodeKey

log = logging.getLogger(__name__)
RECENT_IDS = 100_000


class Outbound(Protocol):
    """What the engine sends for a decision, committed with it (the node passes ``agentd.mesh.wire.DecisionWire``).

    The engine knows no topics and no envelopes; the rows it gets back are
    ``(topic, payload, qos, retain)`` and go into the decision's transaction.
    """

    def decision_messages(self, record: dict[str, Any], record_bytes: bytes) -> list[tuple[str, bytes, int, bool]]: ...


class Engine(LearningMixin, CascadeMixin, ShadowMixin, ApprovalMixin, HandlerMixin, LabelMixin, FleetStateMixin, StatusMixin):
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
        on_decision: Callable[[dict[str, Any]], None] | None = None,
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
        self.calibrations: dict[str, float] = {}  # "model@version" -> temperature (decision/learning.py)
        self.stage_states: dict[tuple[str, int], str] = {}  # (skill, cascade index) -> acting | shadow, earned from labels
        self.counters: Counter[str] = Counter()
        self._inflight: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._tasks: asyncio.TaskGroup | None = None
        self._expiry_heap: list[tuple[float, str]] = []
        self._expiry_wake = asyncio.Event()
        self._expiry_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.on_decision = on_decision  # a port like outbound (the node's metrics): called once per committed decision

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Engine:
        self.rules = compile_all(self.loaded)
        if self._owns_store:
            await self.store.__aenter__()
        try:
            await self._load_state()
            await self._load_models()
            await self._load_learning()
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
        self.fleet.load(values)
        # A mode set at run time (CLI, fleet command) holds until the config's own mode changes.
        if mode in MODES and mode_config == self.cfg.daemon.mode:
            self.mode = mode
        pending = await self.store.read(queries.pending_approvals)
        for p in pending:
            heapq.heappush(self._expiry_heap, (p["expires_at"], p["decision_id"]))

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
        waiters: list[asyncio.Future[dict[str, Any]]] = []  # repeats of this id while it is decided (rare: no future unless one comes)
        self._inflight[eid] = waiters
        try:
            record = await self._decide(skill, fields, eid, t0, wall0, origin)
        except BaseException as exc:
            for w in waiters:
                if w.done():
                    continue
                if isinstance(exc, Exception):
                    w.set_exception(exc)
                else:
                    w.cancel()
            raise
        else:
            if event_id is not None:  # an id made here (new_id) never comes again: only a caller's is remembered
                self._remember(eid)
            for w in waiters:
                if not w.done():
                    w.set_result(record)
            return record
        finally:
            self._inflight.pop(eid, None)

    async def _existing(self, eid: str) -> dict[str, Any] | None:
        """The decision already made (or being made) for a repeated event id.

        The in-memory LRU saves a database read for ids it has not seen; ids it has
        forgotten are still caught by the store, which refuses a second decision.
        """
        waiters = self._inflight.get(eid)
        if waiters is not None:
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved" noise
            waiters.append(fut)
            return await asyncio.shield(fut)
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

        acted = [(i, s) for i, s in enumerate(skill.cascade) if not self.is_shadow(skill.name, i, s)]
        if mode == "rules_only":
            fallback = "mode_rules_only"
        elif not acted:  # "demoted": the node took the configured acting stages' right to act away
            fallback = "demoted" if any(not s.shadow for s in skill.cascade) else "model_missing"
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
                if outcome != "abstained" or fallback is None:  # a stage with nothing to read says least
                    fallback = outcome

        rules = self.rules[skill.name]
        context = make_context({**fields, "skill": skill.name, "node": self.node, "action": ""}, self.fleet)
        # The rules run on every decision: the floor when no model answered, a second opinion when one did.
        rule, rule_errors = first_match(rules.rules, context)
        rule_name: str | None = rule.name
        rules_answer: dict[str, Any] | None = None
        ask: str | None = None  # why the model could not be trusted here, when a human is to say
        if action is not None and policy.rules_say_severe(skill, action, rule.action):
            traces[-1].outcome = fallback = "possible_severe"
            traces[-1].extra["severe"] = {"action": rule.action, "rule": rule.name}
            action, source, model_info, confidence = None, "rules", None, None
        if action is None:
            action = rule.action
            # Models that answered but were not trusted: a human may be asked (decision/policy.py).
            if (unsure := policy.unsure_ask(skill, traces, rule.action, default=rule.default)) is not None:
                ask, action = unsure
        else:
            fallback, rules_answer = None, {"action": rule.action, "rule": rule.name}
            rule_name = None
            if action != rule.action:
                assert model_info is not None
                self.counters[f"disagreement:{model_info.name}@{model_info.version}"] += 1
                rules_win, asked = disagreement(skill, action, rule.action)
                if rules_win or asked:  # the model's answer stays on its stage trace; the rules' applies
                    traces[-1].outcome = fallback = "disagreement"
                    source, rule_name, model_info, confidence = "rules", rule.name, None, None
                    if asked:
                        ask = "disagreement"  # about the model's answer, with the rules' in force meanwhile
                    else:
                        action = rule.action

        action, guard_name = guarded(rules.guards, context, action, rule_errors)
        status, approval, expires_at = "decided", None, None
        interim = None
        if ask is not None:  # what applies while a human is asked: guarded too, and never an action that itself waits
            interim, interim_guard = guarded(rules.guards, context, skill.uncertain.interim or rule.action, rule_errors)
            guard_name = guard_name or interim_guard
            if needs_approval(skill, mode, interim):
                interim = interim_action(skill)
            if interim == action:
                ask = None  # what a human would be asked about already applies
        if needs_approval(skill, mode, action) and (ask is None or mode == "manual"):
            interim, ask = interim_action(skill), "manual" if mode == "manual" else "action"
        if ask is not None and interim is not None:
            expires_at = round(wall0 + skill.approval.timeout_s, 6)
            approval = {"requested_action": action, "interim_action": interim, "status": "pending", "expires_at": expires_at, "because": ask}
            status, action = "pending_approval", interim
            self.counters[f"asked:{ask}"] += 1

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
            rules_answer=rules_answer,
        )
        record = typed.to_dict()
        record_bytes = canonical(record)
        write = DecisionWrite(eid, skill.name, wall0, fields, record, self.node, [], expires_at, record_bytes)
        if self.outbound is not None:  # signed on the store's writer thread, in the decision's transaction
            write.outbox_later = functools.partial(self.outbound.decision_messages, record, record_bytes)
        try:
            await self._record_decision(skill, write)  # with the node's fleet-state writes (decision/fleet_writes.py)
        except DuplicateEvent:
            self.counters["duplicates"] += 1
            return await self.store.read(lambda c: queries.find_by_event(c, eid) or record)
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
                if self.is_shadow(skill.name, index, stage_cfg):
                    call = self._start_shadow(skill, index, stage_cfg, fields)
                    self._spawn(self._finish_shadow(record, call), name=f"shadow-{record['id'][:8]}")
        if expires_at is not None:
            heapq.heappush(self._expiry_heap, (expires_at, record["id"]))
            self._expiry_wake.set()
        if mode != "observe":  # while pending, the interim action is in force: its handlers run
            self._run_handlers_for(skill, record)
        return record

    def _remember(self, eid: str) -> None:
        self._recent[eid] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def _spawn(self, coro: Any, *, name: str) -> None:
        assert self._tasks is not None
        task = self._tasks.create_task(_logged(coro, name), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _logged(coro: Any, name: str) -> None:
    """Run a background job; log its failure instead of tearing down the engine's TaskGroup."""
    try:
        await coro
    except Exception:
        log.exception("background task %s failed", name)
