"""Metrics of one node: Prometheus exposition on a loopback port and a snapshot for MQTT.

``NodeMetrics`` owns its own ``CollectorRegistry`` (never the process-global one) and the
HTTP endpoint's thread. On the decision path it costs one dictionary lookup and a few
counter/histogram updates per decision (``observe``). Everything else (circuit states,
outbox depth, peers online, broker connection, audit chain length) is read when scraped,
from the live daemon and a read-only SQLite connection of its own, so a scrape never
waits on the store's writer. Every sample carries the lifecycle ``stage`` and ``release``
(DESIGN section 9). prometheus_client is imported only when metrics are enabled.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from agentd import __version__
from agentd.state import queries

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from agentd.config.schema import Config
    from agentd.decision.engine import Engine
    from agentd.mesh.link import MeshLink

log = logging.getLogger(__name__)
Live = Callable[[], "tuple[Engine | None, MeshLink | None]"]
DECISION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MODEL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class NodeMetrics:
    """The node's metrics registry, its HTTP endpoint and its MQTT snapshot."""

    def __init__(self, *, cfg: Config, config_sha256: str, live: Live) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.cfg = cfg
        self._live = live
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "agentd_decisions", "Decisions committed, by skill, source, fallback reason and lifecycle.",
            ["skill", "source", "fallback_reason", "stage", "release"], registry=self.registry,
        )
        self.decision_latency = Histogram(
            "agentd_decision_latency_seconds", "Event arrival to committed decision.",
            ["skill", "stage", "release"], buckets=DECISION_BUCKETS, registry=self.registry,
        )
        self.model_latency = Histogram(
            "agentd_model_latency_seconds", "Model stage calls that returned or timed out, by model and version.",
            ["model", "version", "stage", "release"], buckets=MODEL_BUCKETS, registry=self.registry,
        )
        self.disagreements = Counter(
            "agentd_model_disagreements", "Accepted model answers the rules did not share, by skill, model and version.",
            ["skill", "model", "version", "stage", "release"], registry=self.registry,
        )
        self.asked = Counter(
            "agentd_decisions_asked", "Decisions sent to a human, by skill and why (approval.because).",
            ["skill", "because", "stage", "release"], registry=self.registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}
        self.registry.register(_LiveCollector(self, config_sha256))
        self._db_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._server: Any = None
        self._observe_failed = False

    # -- the decision path ---------------------------------------------------------

    def observe(self, record: dict[str, Any]) -> None:
        """Count one committed decision (called by the engine, on the event loop); never raises."""
        try:
            self._observe(record)
        except Exception:  # the decision is committed already: a metrics bug must not fail it
            if not self._observe_failed:
                self._observe_failed = True
                log.exception("metrics: a decision could not be counted (logged once)")

    def _observe(self, record: dict[str, Any]) -> None:
        lc = record["lifecycle"]
        stage, release = lc["stage"], lc["release"]
        key = (record["skill"], record["source"], record["fallback_reason"] or "", stage, release)
        pair = self._children.get(key)
        if pair is None:
            pair = (self.decisions.labels(*key), self.decision_latency.labels(key[0], stage, release))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(record["latency_ms"] / 1000)
        rules = (record.get("rules_answer") or {}).get("action")
        if rules is not None:
            beside = next((s for s in record["stages"] if s.get("outcome") in ("accepted", "disagreement")), None)
            if beside is not None and beside.get("action") != rules:
                model = beside["model"]
                self.disagreements.labels(record["skill"], model, lc["models"].get(model, ""), stage, release).inc()
        if record.get("approval") is not None:
            self.asked.labels(record["skill"], record["approval"].get("because", "action"), stage, release).inc()
        for s in record["stages"]:
            if s.get("latency_ms") is None:
                continue
            mkey = ("model", s["model"], lc["models"].get(s["model"], ""), stage, release)
            child = self._children.get(mkey)
            if child is None:
                child = self._children[mkey] = self.model_latency.labels(*mkey[1:])
            child.observe(s["latency_ms"] / 1000)

    # -- HTTP endpoint ---------------------------------------------------------------

    def serve(self) -> bool:
        """Start the exposition endpoint on metrics.host:metrics.port; False (logged) if it cannot listen."""
        from prometheus_client import start_http_server

        m = self.cfg.metrics
        try:
            self._server, _thread = start_http_server(m.port, addr=m.host, registry=self.registry)
        except OSError as exc:
            log.error("metrics endpoint not started: cannot listen on %s:%s: %s (the node runs on without it)", m.host, m.port, exc.strerror or exc)
            return False
        log.info("metrics on http://%s:%s/metrics", m.host, m.port)
        return True

    def close(self) -> None:
        """Stop the endpoint and close the read-only connection."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- what scrapes and snapshots read ----------------------------------------------

    def db_gauges(self) -> dict[str, int]:
        """Outbox depth, peers online, audit chain length, fleet-state keys and peers flagged, from a read-only connection."""
        with self._db_lock:
            try:
                if self._db is None:
                    path = queries.db_path(self.cfg.data_dir)
                    self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0, check_same_thread=False)
                db = self._db
                return {
                    "outbox_depth": db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0],
                    "peers_online": db.execute("SELECT COUNT(*) FROM peers WHERE status = 'online'").fetchone()[0],
                    "audit_records": db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0],
                    "fleet_state_keys": db.execute("SELECT COUNT(*) FROM fleet_state").fetchone()[0],
                    "peers_flagged": db.execute("SELECT COUNT(*) FROM witness WHERE state IN ('rolled_back', 'forked')").fetchone()[0],
                }
            except sqlite3.Error as exc:
                log.warning("metrics: database gauges unavailable: %s", exc)
                return {}

    def live(self) -> tuple[Engine | None, MeshLink | None]:
        return self._live()

    def snapshot(self) -> dict[str, Any]:
        """The registry's samples as JSON (histogram buckets and ``_created`` left out, to stay small)."""
        engine, _ = self._live()
        out: dict[str, list[list[Any]]] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith(("_bucket", "_created")):
                    continue
                out.setdefault(sample.name, []).append([dict(sample.labels), sample.value])
        return {
            "ts": round(time.time(), 3),
            "lifecycle": {
                "stage": engine.stage if engine else self.cfg.lifecycle.stage,
                "release": (engine.cfg if engine else self.cfg).lifecycle.release,
            },
            "metrics": out,
        }

    async def snapshot_async(self) -> dict[str, Any]:
        """``snapshot`` off the event loop (it reads SQLite)."""
        return await asyncio.to_thread(self.snapshot)


class _LiveCollector:
    """Gauges read at scrape time: node info, circuits, outbox, peers, broker, audit chain."""

    def __init__(self, metrics: NodeMetrics, config_sha256: str) -> None:
        self._m = metrics
        self._config_sha256 = config_sha256

    def describe(self) -> list[Metric]:
        return []  # collected fresh at each scrape; nothing to register up front

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        engine, link = self._m.live()
        cfg = engine.cfg if engine is not None else self._m.cfg  # after a reload: the new release
        sha = engine.loaded.sha256 if engine is not None else self._config_sha256
        stage = engine.stage if engine is not None else cfg.lifecycle.stage
        lc = [stage, cfg.lifecycle.release]
        info = GaugeMetricFamily("agentd_node_info", "This node: always 1; its identity and build in the labels.",
                                 labels=["node", "fleet", "version", "config_sha256", "stage", "release"])
        info.add_metric([cfg.node.id, cfg.node.fleet, __version__, sha[:12], *lc], 1)
        yield info
        circuits = GaugeMetricFamily("agentd_circuit_state", "Model circuit breakers: 1 for the current state.",
                                     labels=["model", "version", "state", "stage", "release"])
        if engine is not None:
            for name, breaker in list(engine.circuits.items()):
                stage_obj = engine.stages.get(name)
                version = stage_obj.version if stage_obj is not None else ""
                current = breaker.state
                for state in ("closed", "open", "half_open"):
                    circuits.add_metric([name, version, state, *lc], 1.0 if state == current else 0.0)
        yield circuits
        acting = GaugeMetricFamily("agentd_stage_acting", "Cascade stages: 1 while acting, 0 while a shadow (earned from labels or set).",
                                   labels=["skill", "index", "model", "stage", "release"])
        if engine is not None:
            for st in engine.stage_state_list():
                acting.add_metric([st["skill"], str(st["stage"]), st["model"], *lc], 1.0 if st["state"] == "acting" else 0.0)
        yield acting
        if cfg.mqtt.enabled:
            broker = GaugeMetricFamily("agentd_broker_connected", "1 while the MQTT session is up.", labels=["stage", "release"])
            broker.add_metric(lc, 1.0 if link is not None and link.connected else 0.0)
            yield broker
        gauges = self._m.db_gauges()
        for key, name, text in (
            ("outbox_depth", "agentd_outbox_depth", "Signed messages waiting for the broker."),
            ("peers_online", "agentd_peers_online", "Peers whose last status was online."),
            ("audit_records", "agentd_audit_chain_length", "Sequence number of the newest audit record."),
            ("fleet_state_keys", "agentd_fleet_state_keys", "Keys of the fleet-state map held (tombstones and expired ones too)."),
            ("peers_flagged", "agentd_peers_audit_flagged", "Peers whose audit head was found rolled back or forked (issue 15)."),
        ):
            if key in gauges:
                g = GaugeMetricFamily(name, text, labels=["stage", "release"])
                g.add_metric(lc, float(gauges[key]))
                yield g
