"""The ONNX stage on the shipped freezer model: its worker scores the input card beside each answer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agentd.config.loader import load_config
from agentd.daemon.sources import freezer_event
from agentd.stages.base import CancelFlag
from agentd.stages.onnx import OnnxStage
from agentd.stages.registry import build_stage

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "config" / "agentd.yaml"


@pytest.fixture(scope="module")
def stage() -> OnnxStage:
    built = build_stage(load_config(EXAMPLE).config.model("freezer_anomaly"))
    assert isinstance(built, OnnxStage) and built.card is not None
    return built


def test_answers_carry_the_cards_verdict_alone_and_in_a_batch(stage: OnnxStage) -> None:
    assert stage.card is not None
    rng = random.Random(5)
    events = [freezer_event(rng) for _ in range(40)] + [{"temperature_c": 30.0, "door_open_s": 5.0, "compressor_a": 5.0}]
    batch = stage.predict_batch(events)
    alone = [stage.predict(e, CancelFlag()) for e in events]
    for e, a, b in zip(events, batch, alone, strict=True):
        assert a.verdict == b.verdict == stage.card.check(e)
    assert batch[-1].verdict is not None and batch[-1].verdict.field == "temperature_c"  # beyond the training range
