"""An unexpected failure inside the MQTT link costs a reconnect, never the node."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import yaml

from agentd.config import parse_config
from agentd.engine import Engine
from agentd.mesh import MeshLink
from agentd.signing import create_key
from tests.integration.broker import Broker
from tests.integration.conftest import freezer_config

EVENT = '{"id": "boom-1", "data": {"temperature_c": -20.0, "door_open_s": 5.0, "compressor_a": 5.0}}'


def test_a_bug_in_the_event_path_costs_a_reconnect_and_the_event_is_still_decided(tmp_path: Path) -> None:
    broker = Broker(folder=tmp_path)
    broker.start()
    try:
        data = tmp_path / "data"
        loaded = parse_config(yaml.safe_dump(freezer_config(data, mqtt_port=broker.port)))

        async def main() -> tuple[dict[str, int], int, list[str]]:
            key, _ = create_key(data)
            calls: list[str] = []
            redelivered = asyncio.Event()
            async with Engine(loaded=loaded, key=key, run_handlers=False) as engine:

                async def submit(skill: str, body: Any, event_id: str | None, received: float) -> dict[str, Any]:
                    calls.append(str(event_id))
                    if len(calls) == 1:
                        raise RuntimeError("a bug in the decision path")  # not an AgentdError: unexpected
                    record = await engine.decide(skill, body, event_id=event_id, received=received, origin="mqtt")
                    redelivered.set()  # decided and committed
                    return record

                link = MeshLink(cfg=loaded.config, key=key, clock=engine.clock, store=lambda: engine.store,
                                submit=submit, outbox_ready=engine.outbox_ready)
                task = asyncio.create_task(link.run())
                try:
                    for _ in range(300):
                        if link.connected:
                            break
                        await asyncio.sleep(0.05)
                    assert link.connected
                    topic = f"agentd/v1/it/nodes/{loaded.config.node.id}/events/freezer_health"
                    await asyncio.to_thread(
                        subprocess.run, ["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-t", topic, "-m", EVENT], check=True
                    )
                    await asyncio.wait_for(redelivered.wait(), 30)
                    stored = await engine.store.read(lambda c: c.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
                    assert not task.done()  # the link survived its failure
                    return dict(link.counters), stored, calls
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await link.close()

        counters, stored, calls = asyncio.run(main())
        assert counters.get("failures") == 1 and counters["reconnects"] >= 1
        assert calls == ["boom-1", "boom-1"]  # not acknowledged the first time, so the broker redelivered it
        assert stored == 1
    finally:
        broker.stop()
