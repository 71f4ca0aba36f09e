"""The mesh bench runs end to end (real mosquitto, real daemons) and counts what it claims.

Figures are not asserted (DESIGN section 13: benchmarks are not timed tests); the keys
are, and so is the bookkeeping: nothing lost, every decision persisted and audited.
"""

from __future__ import annotations

from pathlib import Path

from agentd.config.loader import load_config
from agentd.devtools.bench_mesh import convergence, mqtt_part

REPO = Path(__file__).resolve().parents[2]


def test_mqtt_part_counts_every_decision(tmp_path: Path) -> None:
    out = mqtt_part(load_config(REPO / "config" / "agentd.yaml"), tmp_path, samples=50)
    for key in ("mqtt_e2e_p50_ms", "mqtt_e2e_p99_ms", "mqtt_throughput_eps", "mqtt_echo_p50_ms", "mqtt_raw_hop_p50_ms"):
        assert out[key] > 0, key
    assert out["mqtt_protocol"] == "5"
    assert out["messages_lost"] == 0 and out["mqtt_duplicates"] == 0
    assert out["mqtt_audited"] == out["mqtt_throughput_events"]
    assert out["mqtt_outbox_left"] == 0 and out["mqtt_audit_verified"] is True


def test_convergence_of_decisions_and_state_keys_after_a_healed_partition(tmp_path: Path) -> None:
    """Two real brokers, split then bridged, at the default digest interval (30 s): the heal is repaired by
    the digests on reconnect and the early ones they trigger; the run ends only when every node holds every
    decision and the same winner of every key (each node's own, and the site key both sides wrote)."""
    out = convergence(tmp_path, nodes=4, events=3, steady_s=2.0)
    assert out["convergence_decisions_each"] == 12 and out["convergence_state_keys"] == 5
    assert out["convergence_crossed_partition"] == 0 and out["convergence_extra_rows"] == 0
    assert out["convergence_s"] >= max(out["convergence_decisions_s"], out["convergence_state_s"]) > 0
    assert out["steady_s"] > 0 and out["node_cpu_pct_mean"] >= 0
