"""The outbox publisher of one MQTT session: committed outbox rows, and anti-entropy resends, at QoS 1.

A row is deleted only once the broker acknowledged it (PUBACK); the rows of a session that
ended unacknowledged stay in the outbox and go out again in the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from agentd.errors import AgentdError
from agentd.mesh.topics import topic
from agentd.mesh.transport import aiomqtt_error, paho
from agentd.state.outbox import OutboxReader
from agentd.trust.envelope import envelope, envelope_raw

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentd.config.schema import Config
    from agentd.state.store import Store
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import NodeKey

MAX_INFLIGHT = 200  # outbox publishes waiting for their PUBACK
PUBACK_TIMEOUT_S = 30.0


class OutboxPublisher:
    """Drains the outbox to the broker. ``drain`` runs once per session; ``close`` once, at the end."""

    def __init__(
        self, *, cfg: Config, key: NodeKey, clock: Clock, store: Callable[[], Store], counters: dict[str, int]
    ) -> None:
        self.fleet, self.node = cfg.node.fleet, cfg.node.id
        self._key, self._clock, self._store, self._counters = key, clock, store, counters
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentd-outbox")
        self._outbox_reader = OutboxReader(cfg.data_dir)
        self._resend: list[tuple[str, dict[str, Any] | bytes]] = []  # (kind, body or canonical body) to envelope afresh on gossip/<node>

    @property
    def _ready(self) -> asyncio.Event:
        """The publisher's wake-up: the store sets it on every commit with outbox rows."""
        return self._store().outbox.ready

    def resend(self, records: list[dict[str, Any]]) -> None:
        """Queue our own decision records to go out again, freshly enveloped, on ``gossip/<node>``."""
        self._resend.extend(("decision", r) for r in records)
        self._ready.set()

    def resend_state(self, origins: list[dict[str, Any]]) -> None:
        """Queue signed fleet-state writes (anyone's) to be relayed, each in a ``state`` envelope, on ``gossip/<node>``."""
        self._resend.extend(("state", {"origin": o}) for o in origins)
        self._ready.set()

    def resend_batches(self, bodies: list[bytes]) -> None:
        """Queue batch bodies (canonical ``{"items": [...]}``, ``agentd.trust.batch``) to go out, each signed once, on ``gossip/<node>``."""
        self._resend.extend(("batch", b) for b in bodies)
        self._ready.set()

    async def close(self) -> None:
        """Close the outbox reader (on its own thread, where it was opened)."""
        await asyncio.get_running_loop().run_in_executor(self._reader, self._close_reader)
        self._reader.shutdown(wait=False)

    def _close_reader(self) -> None:
        self._outbox_reader.close()

    async def drain(self, client: Any) -> None:
        """Publish outbox rows (and anti-entropy resends) at QoS 1; delete a row once its PUBACK came.

        Publishes go to paho directly, with PUBACKs matched by message id in paho's
        on_publish callback (it runs on this event loop): aiomqtt's awaitable publish costs a
        task, an event and a timer per message, a good part of the loop's time under load.
        At most MAX_INFLIGHT wait for their PUBACK; one waiting PUBACK_TIMEOUT_S ends the session.
        """
        import paho.mqtt.client as mqtt

        loop = asyncio.get_running_loop()
        paho_client = paho(client)
        pending: dict[int, tuple[int, float]] = {}  # mid -> (outbox seq or -1 for a resend, sent at)
        acked: list[int] = []
        room = asyncio.Event()
        after = 0  # rows at or below this were sent in this session; their deletes may be pending
        previous = paho_client.on_publish

        def on_publish(c: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
            previous(c, userdata, mid, reason_code, properties)  # aiomqtt's own (status, digests)
            entry = pending.pop(mid, None)
            if entry is None:
                return
            self._counters["published"] += 1
            if entry[0] >= 0:
                if not acked:
                    self._ready.set()  # wake the loop below to delete the acknowledged rows
                acked.append(entry[0])
            if len(pending) < MAX_INFLIGHT:
                room.set()

        def publish(seq: int, name: str, payload: bytes, qos: int, retain: bool) -> None:
            info = paho_client.publish(name, payload, qos, retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise aiomqtt_error(f"publish failed: {mqtt.error_string(info.rc)}")
            if qos == 0:  # no PUBACK will come
                self._counters["published"] += 1
                if seq >= 0:
                    acked.append(seq)
            else:
                pending[info.mid] = (seq, time.monotonic())

        async def wait_for_room() -> None:
            while len(pending) >= MAX_INFLIGHT:
                room.clear()
                try:
                    async with asyncio.timeout(PUBACK_TIMEOUT_S):
                        await room.wait()
                except TimeoutError:
                    raise aiomqtt_error(f"no PUBACK for {len(pending)} publishes in {PUBACK_TIMEOUT_S:.0f} s") from None

        paho_client.on_publish = on_publish
        deleting: asyncio.Future[None] | None = None
        try:
            while True:
                self._ready.clear()
                if pending and time.monotonic() - min(t for _, t in pending.values()) > PUBACK_TIMEOUT_S:
                    raise aiomqtt_error(f"no PUBACK in {PUBACK_TIMEOUT_S:.0f} s")
                while self._resend:  # anti-entropy: our own decisions, and fleet-state writes, freshly enveloped, on gossip/<node>
                    kind, body = self._resend.pop(0)
                    if isinstance(body, bytes):
                        payload = envelope_raw(kind, fleet=self.fleet, node=self.node, hlc=self._clock.now(), body_canonical=body, key=self._key)
                    else:
                        payload = envelope(kind, fleet=self.fleet, node=self.node, hlc=self._clock.now(), body=body, key=self._key)
                    await wait_for_room()
                    publish(-1, topic(self.fleet, "gossip", self.node), payload, 1, False)
                rows = self._store().outbox.take_fresh(after) if after else []
                if not rows:
                    rows, last = await loop.run_in_executor(self._reader, self._outbox_reader.read, after)
                    if not rows:  # nothing after `after` up to `last`: the next fresh row may follow on from there
                        after = max(after, last)
                for m in rows:
                    await wait_for_room()
                    publish(m.seq, m.topic, m.payload, m.qos, m.retain)
                    after = m.seq
                if deleting is not None and deleting.done():
                    deleting.result()  # a failed delete ends the session (the rows go out again)
                    deleting = None
                if acked and deleting is None:  # one delete at a time, not waited for: it queues behind decisions
                    done, acked[:] = list(acked), []
                    deleting = asyncio.ensure_future(self._store().delete_outbox(done))
                    deleting.add_done_callback(lambda _: self._ready.set())
                if not rows and not self._ready.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._ready.wait()
        finally:
            paho_client.on_publish = previous
            with contextlib.suppress(AgentdError, TimeoutError):  # acknowledged before the session ended: forget them (unacknowledged rows stay)
                async with asyncio.timeout(2.0):
                    if deleting is not None:
                        await deleting
                    if acked:
                        await self._store().delete_outbox(list(acked))
