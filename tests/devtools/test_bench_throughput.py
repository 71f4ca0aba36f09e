"""The in-process throughput round counts the decisions whose model calls were shed by load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agentd.config.loader import LoadedConfig
from agentd.devtools.bench import _throughput_round


def test_a_round_counts_the_calls_shed_by_load(config_factory: Callable[..., LoadedConfig], tmp_path: Path) -> None:
    slow = _throughput_round(config_factory(model={"delay_ms": 40}, skill={"deadline_ms": 20}), tmp_path / "slow", 0, in_hand=50)
    assert slow["throughput_stored"] == slow["throughput_events"] == 2000
    assert slow["throughput_shed"] == 2000  # the stage never answers in time: timeouts, then an open circuit

    quick = _throughput_round(config_factory(model={"delay_ms": 0}), tmp_path / "quick", 0, in_hand=50)
    assert quick["throughput_stored"] == 2000 and quick["throughput_shed"] == 0
