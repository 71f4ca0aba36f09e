"""The metrics module without I/O: config validation, its own registry, what one decision counts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agentd.config.loader import LoadedConfig
from agentd.config.schema import MetricsConfig
from agentd.daemon.metrics import NodeMetrics
from agentd.errors import ConfigError


def _record(**over: Any) -> dict[str, Any]:
    record = {
        "skill": "freezer", "source": "rules", "fallback_reason": "timeout", "latency_ms": 12.5,
        "stages": [{"model": "fast", "latency_ms": 9.0}, {"model": "never_ran", "latency_ms": None}],
        "lifecycle": {"stage": "canary", "release": "r1", "config_sha256": "0" * 64, "models": {"fast": "3"}},
    }
    record.update(over)
    return record


def _value(m: NodeMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_metrics_are_off_by_default_and_loopback_only(config_factory: Callable[..., LoadedConfig]) -> None:
    assert MetricsConfig().enabled is False
    with pytest.raises(ConfigError, match=r"metrics\.host.*loopback only"):
        config_factory(metrics={"enabled": True, "host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="mqtt_interval_s"):
        config_factory(metrics={"mqtt_interval_s": 0.5})
    assert config_factory(metrics={"host": "::1", "mqtt_interval_s": 0}).config.metrics.host == "::1"


def test_one_decision_counts_once_in_its_own_registry(config_factory: Callable[..., LoadedConfig], tmp_path: Path) -> None:
    cfg = config_factory(metrics={"enabled": True}).config
    a = NodeMetrics(cfg=cfg, config_sha256="a" * 64, live=lambda: (None, None))
    b = NodeMetrics(cfg=cfg, config_sha256="a" * 64, live=lambda: (None, None))
    a.observe(_record())
    a.observe(_record())
    a.observe(_record(source="model", fallback_reason=None))
    labels = {"skill": "freezer", "stage": "canary", "release": "r1"}
    assert _value(a, "agentd_decisions_total", source="rules", fallback_reason="timeout", **labels) == 2
    assert _value(a, "agentd_decisions_total", source="model", fallback_reason="", **labels) == 1
    assert _value(a, "agentd_decision_latency_seconds_count", **labels) == 3
    assert _value(a, "agentd_decision_latency_seconds_sum", **labels) == pytest.approx(3 * 0.0125)
    assert _value(a, "agentd_model_latency_seconds_count", model="fast", version="3", stage="canary", release="r1") == 3
    assert _value(a, "agentd_model_latency_seconds_count", model="never_ran", version="", stage="canary", release="r1") is None
    assert _value(b, "agentd_decisions_total", source="rules", fallback_reason="timeout", **labels) is None
    assert REGISTRY.get_sample_value("agentd_decisions_total", {"source": "rules", "fallback_reason": "timeout", **labels}) is None
    a.observe({"skill": "freezer"})  # a malformed record is logged, never raised into the decision path
    assert _value(a, "agentd_decisions_total", source="rules", fallback_reason="timeout", **labels) == 2
    snap = a.snapshot()  # no database yet: the database gauges are left out, the rest is there
    assert snap["lifecycle"] == {"stage": "dev", "release": "test-1"}
    assert sum(v for _l, v in snap["metrics"]["agentd_decisions_total"]) == 3
    assert "agentd_outbox_depth" not in snap["metrics"]
    assert not any(n.endswith(("_bucket", "_created")) for n in snap["metrics"])
    a.close()
    b.close()


def test_disagreements_and_asks_are_counted(config_factory: Callable[..., LoadedConfig]) -> None:
    m = NodeMetrics(cfg=config_factory(metrics={"enabled": True}).config, config_sha256="a" * 64, live=lambda: (None, None))
    stages = [{"model": "fast", "latency_ms": 1.0, "outcome": "accepted", "action": "alert"}]
    m.observe(_record(source="model", fallback_reason=None, stages=stages, rules_answer={"action": "none", "rule": "all_good"}))
    m.observe(_record(source="model", fallback_reason=None, stages=stages, rules_answer={"action": "alert", "rule": "warm"}))
    m.observe(_record(approval={"requested_action": "shutdown", "because": "low_confidence"}))
    labels = {"skill": "freezer", "stage": "canary", "release": "r1"}
    assert _value(m, "agentd_model_disagreements_total", model="fast", version="3", **labels) == 1
    assert _value(m, "agentd_decisions_asked_total", because="low_confidence", **labels) == 1
    m.close()
