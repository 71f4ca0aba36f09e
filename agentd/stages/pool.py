"""Loaded model stages that outlive a reload.

The daemon's engine is rebuilt on every reload (SIGHUP, ``set_config``); its models need
not be. The pool keeps each loaded stage under the model's whole config (name, backend,
path, sha256 and every runtime setting), so a reload that leaves a model's config as it
was gets the same loaded stage back, and the LLM is not loaded again. After the new engine
is up, ``retain`` closes the stages no config uses any more.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentd.errors import ModelError
from agentd.stages.registry import MissingStage, build_stage

if TYPE_CHECKING:
    from agentd.config.models import ModelConfig
    from agentd.stages.base import ModelStage


def pool_key(cfg: ModelConfig) -> str:
    """The identity of a loaded model: its config, every setting included."""
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True, default=str)


@dataclass
class Loaded:
    stage: ModelStage
    loaded_at: float


class ModelPool:
    """Stages by their model config; ``acquire`` loads once, ``retain`` and ``close`` release."""

    def __init__(self) -> None:
        self._stages: dict[str, Loaded] = {}
        self.loads = 0  # runtimes built (a reload that keeps its models adds none)

    async def acquire(self, cfg: ModelConfig) -> tuple[ModelStage, bool, str | None]:
        """The stage for ``cfg``: (stage, loaded just now, why it is missing or None).

        A model that cannot load becomes a MissingStage, which is not kept: the next
        reload tries it again (the file may have been fixed).
        """
        key = pool_key(cfg)
        held = self._stages.get(key)
        if held is not None:
            return held.stage, False, None
        try:
            stage = await asyncio.to_thread(build_stage, cfg)
        except ModelError as exc:
            return MissingStage(cfg.name, cfg.version, str(exc)), False, str(exc)
        self.loads += 1
        self._stages[key] = Loaded(stage, time.time())
        return stage, True, None

    def loaded(self) -> dict[str, float]:
        """Model name -> when its runtime was loaded (for status)."""
        return {held.stage.name: round(held.loaded_at, 3) for held in self._stages.values()}

    async def retain(self, cfgs: list[ModelConfig]) -> None:
        """Close the stages that none of ``cfgs`` uses."""
        keep = {pool_key(c) for c in cfgs}
        for key in [k for k in self._stages if k not in keep]:
            await self._stages.pop(key).stage.close()

    async def close(self) -> None:
        for held in self._stages.values():
            await held.stage.close()
        self._stages.clear()
