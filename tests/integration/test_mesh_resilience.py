"""A failure inside the MQTT event path never costs the node: a bug costs that one event
(acknowledged, counted, the session kept); a commit that failed costs a reconnect, so that
the broker delivers the unacknowledged event again."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import yaml

from agentd.config.loader import parse_config
from agentd.decision.engine import Engine
from agentd.errors import StateError
from agentd.mesh.link import MeshLink
from agentd.trust.keys import create_key
from tests.integration.broker import Broker
from tests.integration.conftest import freezer_config

EVENT = '{{"id": "{}", "data": {{"temperature_c": -20.0, "door_open_s": 5.0, "compressor_a": 5.0}}}}'


def _run(tmp_path: Path, failure: Exception) -> tuple[dict[str, int], list[str], list[str]]:
    """Publish boom-1 (whose first submit raises ``failure``) then good-2; return the link's
    counters, the submit calls and the event ids decided."""
    broker = Broker(folder=tmp_path)
    broker.start()
    try:
        data = tmp_path / "data"
        loaded = parse_config(yaml.safe_dump(freezer_config(data, mqtt_port=broker.port)))

        async def main() -> tuple[dict[str, int], list[str], list[str]]:
            key, _ = create_key(data)
            calls: list[str] = []
            good = asyncio.Event()
            async with Engine(loaded=loaded, key=key, run_handlers=False) as engine:

                async def submit(skill: str, body: Any, event_id: str | None, received: float) -> dict[str, Any]:
                    calls.append(str(event_id))
                    if calls == ["boom-1"]:
                        raise failure
                    record = await engine.decide(skill, body, event_id=event_id, received=received, origin="mqtt")
                    if event_id == "good-2":
                        good.set()
                    return record

                link = MeshLink(cfg=loaded.config, key=key, clock=engine.clock, store=lambda: engine.store,
                                submit=submit)
                task = asyncio.create_task(link.run())
                try:
                    for _ in range(300):
                        if link.connected:
                            break
                        await asyncio.sleep(0.05)
                    assert link.connected
                    topic = f"agentd/v1/it/nodes/{loaded.config.node.id}/events/freezer_health"
                    for eid in ("boom-1", "good-2"):
                        await asyncio.to_thread(subprocess.run, ["mosquitto_pub", "-p", str(broker.port), "-q", "1",
                                                                 "-t", topic, "-m", EVENT.format(eid)], check=True)
                    await asyncio.wait_for(good.wait(), 30)
                    if isinstance(failure, StateError):
                        for _ in range(300):  # the redelivery of boom-1 follows the reconnect
                            if calls.count("boom-1") >= 2:
                                break
                            await asyncio.sleep(0.05)
                    await asyncio.sleep(0.3)  # room for a redelivery that must not come
                    decided = await engine.store.read(lambda c: [r[0] for r in c.execute("SELECT event_id FROM decisions ORDER BY event_id")])
                    assert not task.done()  # the link survived
                    return dict(link.counters), calls, decided
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await link.close()

        return asyncio.run(main())
    finally:
        broker.stop()


def test_a_bug_in_the_event_path_costs_that_event_only(tmp_path: Path) -> None:
    counters, calls, decided = _run(tmp_path, RuntimeError("a bug in the decision path"))
    assert counters["handler_errors"] == 1
    assert counters["reconnects"] == 0 and counters["failures"] == 0  # the session was kept
    assert calls == ["boom-1", "good-2"]  # acknowledged: the broker did not send boom-1 again
    assert decided == ["good-2"]


def test_a_failed_commit_reconnects_and_the_event_is_redelivered_and_decided_once(tmp_path: Path) -> None:
    counters, calls, decided = _run(tmp_path, StateError("disk I/O error"))
    assert counters["reconnects"] >= 1 and counters["failures"] == 0
    assert calls.count("boom-1") == 2  # left unacknowledged, so the broker sent it again after the reconnect
    assert decided == ["boom-1", "good-2"]
