"""The MQTT link of one node (DESIGN section 6): one session at a time, events in, the outbox out.

``MeshLink`` owns the aiomqtt client. It connects with jittered, capped back-off (falling
back from MQTT 5 to 3.1.1 once when ``mqtt.protocol`` is auto), publishes a retained signed
birth status (the last will marks the node offline), subscribes to the node's topics, and
runs the session's parts in one TaskGroup: the ``Receiver`` (messages in, acknowledged after
their commit), the ``OutboxPublisher`` (the outbox out at QoS 1), the ``Gossip`` digests,
the signed audit head (``mesh.heads``) and the metrics snapshot. Any of them failing ends the session, and the link reconnects.

aiomqtt's and paho's internals are reached only through ``agentd.mesh.transport``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.errors import AgentdError, MeshError
from agentd.mesh.backoff import backoff_delay
from agentd.mesh.gossip import Gossip
from agentd.mesh.inbound import subscriptions
from agentd.mesh.publisher import MAX_INFLIGHT, OutboxPublisher
from agentd.mesh.receiver import Receiver
from agentd.mesh.refusals import RefusalTally
from agentd.mesh.topics import topic
from agentd.mesh.transport import (
    buffered_reads,
    close_client,
    eager_writes,
    lean_packets,
    manual_acks,
    publish_in_loop,
    refused_protocol,
    stamp_arrivals,
)
from agentd.trust.envelope import envelope

if TYPE_CHECKING:
    from agentd.config.schema import Config
    from agentd.mesh.receiver import Submit
    from agentd.state.store import Store
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import NodeKey

log = logging.getLogger(__name__)
STABLE_SESSION_S = 10.0  # a session shorter than this keeps growing the reconnect back-off (e.g. a client-id clash)
SUBSCRIBE_BATCH = 100
SESSION_NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5: keep the session like 3.1.1's clean_session=False


def _lean(client: Any) -> Any:
    """The client with buffered reads (a burst of events or PUBACKs in one system call), a queued
    packet written at once and a turn's packets sent together, and without paho's per-packet
    extras (``agentd.mesh.transport``)."""
    buffered_reads(client)
    eager_writes(client)
    lean_packets(client)
    return client


class MeshLink:
    """One node's MQTT session. Run ``await link.run()`` in the daemon's TaskGroup."""

    # Set by the daemon when metrics are enabled: the snapshot published on nodes/<node>/metrics.
    metrics_source: Callable[[], Awaitable[dict[str, Any]]] | None = None

    def __init__(
        self,
        *,
        cfg: Config,
        key: NodeKey,
        clock: Clock,
        store: Callable[[], Store],
        submit: Submit,
        on_peer_decision: Callable[[str, dict[str, Any]], None] | None = None,
        on_command: Callable[[bytes], Awaitable[None]] | None = None,
        on_state: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
        learned_keys: dict[str, str] | None = None,
        refusals: RefusalTally | None = None,
    ) -> None:
        if not cfg.mqtt.enabled:
            raise ValueError("MeshLink needs mqtt.enabled: true")
        self.cfg = cfg
        self.node, self.fleet = cfg.node.id, cfg.node.fleet
        self._key, self._clock = key, clock
        self.connected = False
        # failures: unexpected exceptions that cost a reconnect (a bug); handler_errors: bugs caught at a
        # message handler's boundary, where the message was acknowledged and the session kept.
        # One dict, shared with the parts below, each counting its own.
        self.counters: dict[str, int] = {"published": 0, "events_in": 0, "events_refused": 0, "reconnects": 0,
                                         "failures": 0, "handler_errors": 0, "read_pauses": 0}
        self.refusals = refusals if refusals is not None else RefusalTally()
        self._on_command = on_command
        self._publisher = OutboxPublisher(cfg=cfg, key=key, clock=clock, store=store, counters=self.counters)
        self._gossip = Gossip(cfg=cfg, key=key, clock=clock, store=store, publisher=self._publisher, counters=self.counters,
                              refusals=self.refusals, on_peer_decision=on_peer_decision, on_state=on_state, learned_keys=learned_keys)
        self._receiver = Receiver(cfg=cfg, submit=submit, gossip=self._gossip, counters=self.counters,
                                  refusals=self.refusals, on_command=on_command)
        # "5" or "3.1.1": what the next connect asks for; auto starts with 5 and falls back once
        self._try_protocol = "3.1.1" if cfg.mqtt.protocol == "3.1.1" else "5"
        self.protocol: str | None = None  # the protocol of the live session

    # -- connection ----------------------------------------------------------

    def _client(self, protocol: str, *, outbound: bool = False) -> Any:
        """The session's client: ``outbound=False`` the main one (events in, their acks, status, last
        will, a persistent session); ``outbound=True`` the one that publishes (see ``run``)."""
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        m = self.cfg.mqtt
        password = None
        if m.password_file:
            try:
                password = Path(m.password_file).read_text().strip()
            except OSError as exc:
                raise MeshError(f"{m.password_file}: cannot read the MQTT password file: {exc.strerror}") from exc
        tls = None
        if m.tls is not None:
            ctx = ssl.create_default_context(cafile=m.tls.ca) if m.tls.ca else ssl.create_default_context()
            if m.tls.cert:
                ctx.load_cert_chain(m.tls.cert, m.tls.key)
            tls = ctx
        common: dict[str, Any] = {
            "username": m.username, "password": password, "keepalive": 30, "timeout": 10, "tls_context": tls,
            # Without it Nagle holds a decision back until the broker's delayed ACK (~40 ms on Linux).
            "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        }
        if outbound:  # nothing subscribed, nothing to keep: a clean session
            clean: dict[str, Any] = {"clean_start": True} if protocol == "5" else {"clean_session": True}
            version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
            return _lean(aiomqtt.Client(m.host, m.port, identifier=f"agentd-{self.fleet}-{self.node}-out", protocol=version,
                                        max_inflight_messages=MAX_INFLIGHT, **clean, **common))
        offline = envelope("status", fleet=self.fleet, node=self.node, hlc=self._clock.now(), body={"status": "offline"}, key=self._key)
        # The broker keeps our subscriptions and unacknowledged events across reconnects.
        session: dict[str, Any] = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        if protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho's constructor is unannotated
            props.SessionExpiryInterval = SESSION_NEVER_EXPIRES
            # How many unacknowledged events the broker may send us at once. Events are acked
            # only after their commit, so this bounds the batch a commit can hold (mosquitto's
            # max_inflight_messages, 20 by default, bounds it under 3.1.1).
            props.ReceiveMaximum = m.receive_maximum
            session = {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": False, "properties": props}
        return _lean(aiomqtt.Client(m.host, m.port, identifier=f"agentd-{self.fleet}-{self.node}", **session,
                                    will=aiomqtt.Will(self._t("status"), offline, qos=1, retain=True), **common))

    def _t(self, *parts: str) -> str:
        return topic(self.fleet, "nodes", self.node, *parts)

    async def run(self) -> None:
        """Connect, serve, reconnect with back-off; forever (cancel to stop)."""
        import aiomqtt

        stamp_arrivals()
        attempt = 0
        while True:
            connected_at: float | None = None
            try:
                client = self._client(self._try_protocol)
                manual_acks(client)  # ack events only after their decision is committed
                try:
                    await client.__aenter__()
                except aiomqtt.MqttError as refused:
                    if not (self.cfg.mqtt.protocol == "auto" and self._try_protocol == "5" and refused_protocol(refused)):
                        raise
                    log.warning("the broker at %s:%s refused MQTT 5 (%s); using MQTT 3.1.1", self.cfg.mqtt.host, self.cfg.mqtt.port, refused)
                    self._try_protocol = "3.1.1"
                    client = self._client(self._try_protocol)
                    manual_acks(client)
                    await client.__aenter__()
                out = None
                try:
                    # Publishes go on a second connection: a broker queues what it sends a client in one
                    # stream, so on the events' connection a PUBACK waits behind every event queued for
                    # us (mosquitto 2.0 sends past Receive Maximum), and the node may pause reading it.
                    # It speaks MQTT 3.1.1 whatever the session does: it needs nothing of MQTT 5, and
                    # paho reads a 3.1.1 PUBACK without building a Properties object for it.
                    out = self._client("3.1.1", outbound=True)
                    await out.__aenter__()
                    self.connected, connected_at = True, time.monotonic()
                    self.protocol = self._try_protocol
                    log.info("mqtt connected to %s:%s with MQTT %s", self.cfg.mqtt.host, self.cfg.mqtt.port, self.protocol)
                    await self._online(client)
                    try:
                        async with asyncio.TaskGroup() as tg:
                            tg.create_task(self._receiver.run(client, tg), name="mqtt-receive")
                            tg.create_task(self._publisher.drain(out), name="mqtt-outbox")
                            tg.create_task(self._gossip.digests(out), name="mqtt-digest")
                            tg.create_task(self._gossip.heads.publish(out), name="mqtt-audit-head")
                            tg.create_task(self._metrics(out), name="mqtt-metrics")
                    except asyncio.CancelledError:
                        await self._offline(client)  # a clean stop sends no last will: say it ourselves
                        raise
                finally:
                    if out is not None:
                        await close_client(out)
                    await close_client(client)
            except* (aiomqtt.MqttError, OSError, ssl.SSLError) as group:
                exc = group.exceptions[0]
                if self.connected:
                    log.warning("mqtt connection lost: %s", exc, exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)
                else:
                    log.warning("mqtt connect to %s:%s failed: %s", self.cfg.mqtt.host, self.cfg.mqtt.port, exc)
            except* AgentdError as group:  # config (password file), or the store during a reload
                log.error("mqtt: %s", group.exceptions[0])
            except* Exception as group:  # a bug must cost a reconnect, never the node: it keeps deciding
                self.counters["failures"] += 1
                log.error("mqtt link failed unexpectedly; reconnecting", exc_info=group.exceptions[0])
            self.connected, self.protocol = False, None
            if connected_at is not None and time.monotonic() - connected_at >= STABLE_SESSION_S:
                attempt = 0  # a session that lasted starts the back-off afresh; one dropped at once does not
            # Small first steps: a broker restart (or a healed link) is usually back within a
            # second; full jitter still spreads a fleet's reconnects, and the cap bounds the rate.
            delay = backoff_delay(attempt, base_s=0.1, cap_s=30.0)
            attempt += 1
            self.counters["reconnects"] += 1
            await asyncio.sleep(delay)

    async def _online(self, client: Any) -> None:
        body = {
            "status": "online", "stage": self.cfg.lifecycle.stage, "release": self.cfg.lifecycle.release,
            "ts": time.time(), "public_key": self._key.public_b64,
        }
        payload = envelope("status", fleet=self.fleet, node=self.node, hlc=self._clock.now(), body=body, key=self._key)
        await client.publish(self._t("status"), payload, qos=1, retain=True)
        topics = subscriptions(self.cfg, commands=self._on_command is not None)
        # A few SUBSCRIBE packets rather than one per topic: until a peer's topics are
        # subscribed, what it gossips (a heal's resends included) passes this node by.
        for i in range(0, len(topics), SUBSCRIBE_BATCH):
            granted = await client.subscribe([(t, 1) for t in topics[i : i + SUBSCRIBE_BATCH]])
            refused = [t for t, g in zip(topics[i : i + SUBSCRIBE_BATCH], granted, strict=False) if int(getattr(g, "value", g)) >= 0x80]
            if refused:
                log.warning("the broker refused %d subscription(s), e.g. %s (check its ACL)", len(refused), refused[0])

    async def _offline(self, client: Any) -> None:
        payload = envelope("status", fleet=self.fleet, node=self.node, hlc=self._clock.now(), body={"status": "offline"}, key=self._key)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await client.publish(self._t("status"), payload, qos=1, retain=True)

    async def close(self) -> None:
        """Release what outlives the sessions (the outbox reader); after ``run`` has ended."""
        await self._publisher.close()

    @property
    def rejected(self) -> dict[str, int]:
        """Peer messages refused, by reason (the ``peer.*`` part of the refusal counts)."""
        return {k[len("peer."):]: n for k, n in self.refusals.total.items() if k.startswith("peer.")}

    def update_trust(self, peers: dict[str, str]) -> None:
        """After a reload: configured peer keys replace the old ones; learned keys stay."""
        self._gossip.update_trust(peers)

    def peer_key(self, node: str) -> str | None:
        """The key trusted for peer ``node`` (configured, or learned on first use), or None."""
        return self._gossip.key_of(node)

    async def _metrics(self, client: Any) -> None:
        """Every metrics.mqtt_interval_s: the metrics snapshot, signed, on nodes/<node>/metrics at QoS 0."""
        interval = self.cfg.metrics.mqtt_interval_s
        if self.metrics_source is None or interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                body = await self.metrics_source()
                payload = envelope("metrics", fleet=self.fleet, node=self.node, hlc=self._clock.now(), body=body, key=self._key)
            except Exception:  # a metrics bug must not take the MQTT session down; it is logged with its traceback
                log.exception("metrics snapshot failed")
                continue
            if len(payload) > self.cfg.mqtt.max_payload_bytes:
                log.warning("metrics snapshot of %d bytes is over mqtt.max_payload_bytes; not published", len(payload))
                continue
            await publish_in_loop(client, self._t("metrics"), payload, qos=0)
