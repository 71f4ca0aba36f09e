"""Build a model stage from its config; a stage that cannot load becomes a MissingStage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentd.errors import ModelError
from agentd.stages.base import CallHandle, CancelFlag, ModelStage, StageAnswer

if TYPE_CHECKING:
    from agentd.config.models import DelayModelConfig, EmbeddingModelConfig, LlamaModelConfig, OnnxModelConfig


class MissingStage(ModelStage):
    """Stands in for a model that could not load; the pipeline records ``model_missing``."""

    def __init__(self, name: str, version: str, reason: str) -> None:
        self.name, self.version, self.sha256, self.labels = name, version, None, ()
        self._reason = reason

    @property
    def available(self) -> bool:
        return False

    @property
    def missing_reason(self) -> str | None:
        return self._reason

    def expected_wait_s(self) -> float:
        return 0.0

    def call(self, inputs: Mapping[str, Any], deadline: float) -> CallHandle:
        raise ModelError(self._reason)

    def predict(self, inputs: Mapping[str, Any], cancel: CancelFlag) -> StageAnswer:
        raise ModelError(self._reason)


def build_stage(cfg: OnnxModelConfig | DelayModelConfig | LlamaModelConfig | EmbeddingModelConfig) -> ModelStage:
    """Load a model's runtime; ModelError (with what to do) if it cannot."""
    if cfg.backend == "embedding":
        from agentd.stages.embedding import EmbeddingStage

        return EmbeddingStage(cfg)
    if cfg.backend == "onnx":
        from agentd.stages.onnx import OnnxStage

        return OnnxStage(cfg)
    if cfg.backend == "delay":
        from agentd.stages.delay import DelayStage

        return DelayStage(cfg)
    from agentd.stages.llama import LlamaStage

    return LlamaStage(cfg)
