"""What `agentd status` shows of the engine (a part of ``Engine``; the attributes are the engine's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentd.state import queries

if TYPE_CHECKING:
    from collections import Counter

    from agentd.config.loader import LoadedConfig
    from agentd.config.schema import Config
    from agentd.decision.policy import CircuitBreaker
    from agentd.stages.base import ModelStage
    from agentd.state.store import Store


class StatusMixin:
    """The engine's status (a part of ``Engine``)."""

    cfg: Config
    loaded: LoadedConfig
    store: Store
    stages: dict[str, ModelStage]
    circuits: dict[str, CircuitBreaker]
    node: str
    mode: str
    stage: str
    counters: Counter[str]

    if TYPE_CHECKING:
        def stage_state_list(self) -> list[dict[str, Any]]: ...

    async def status(self) -> dict[str, Any]:
        """What `agentd status` shows."""
        totals = await self.store.read(queries.counts)
        models = [{**stage.info(), "available": stage.available, "missing_reason": stage.missing_reason,
                   "circuit": self.circuits[name].state} for name, stage in self.stages.items()]
        return {
            "node": self.node,
            "fleet": self.cfg.node.fleet,
            "mode": self.mode,
            "lifecycle": {"stage": self.stage, "release": self.cfg.lifecycle.release, "config_sha256": self.loaded.sha256},
            "models": models,
            "skills": [s.name for s in self.cfg.skills],
            "stage_states": self.stage_state_list(),
            "counters": dict(self.counters),
            **totals,
        }
