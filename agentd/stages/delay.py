"""A synthetic stage for tests and benchmarks: waits ``delay_ms``, then answers a fixed label.

It stands in for a slow model (deadline tests, ``agentd bench``) and sleeps in 1 ms
steps so that cancellation behaves like a model stopped at a token boundary. With
``cancellable: false`` it ignores cancellation, like a runtime that cannot be
interrupted, so its answer arrives late.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentd.stages.base import CancelFlag, Cancelled, StageAnswer, ThreadedStage

if TYPE_CHECKING:
    from agentd.config.models import DelayModelConfig


class DelayStage(ThreadedStage):
    def __init__(self, cfg: DelayModelConfig) -> None:
        super().__init__(name=cfg.name, version=cfg.version, sha256=None, labels=(cfg.label, *(k for k in cfg.scores if k != cfg.label)))
        self._delay_s = cfg.delay_ms / 1000
        self._label = cfg.label
        self._confidence = cfg.confidence
        self._scores = {**cfg.scores, cfg.label: cfg.confidence}
        self._cancellable = cfg.cancellable

    def predict(self, inputs: Mapping[str, Any], cancel: CancelFlag) -> StageAnswer:
        end = time.monotonic() + self._delay_s
        while (left := end - time.monotonic()) > 0:
            if cancel.is_set() and self._cancellable:
                raise Cancelled("cancelled at deadline")
            time.sleep(min(left, 0.001))
        return StageAnswer(self._label, self._confidence, dict(self._scores))
