"""The MQTT link of one node (DESIGN section 6): one session, events in, the outbox out.

``MeshLink`` owns the aiomqtt client. It connects with jittered, capped back-off, publishes
a retained signed birth status (the last will marks the node offline), subscribes to the
node's event topics, and drains the outbox at QoS 1, deleting a row only once the broker
acknowledged it. An event is acknowledged to the broker only after its decision is
committed (paho's manual acks), so a crash between receipt and commit means the broker
sends the event again, and the event id makes that a repeat, not a second decision.

aiomqtt's and paho's internals are reached only through ``agentd.mesh.transport``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.errors import AgentdError, InputError, MeshError, Rejected, StateError
from agentd.mesh.backoff import backoff_delay
from agentd.mesh.inbound import parse_event, subscriptions
from agentd.mesh.peerwire import check_peer_body
from agentd.mesh.refusals import RefusalTally
from agentd.mesh.topics import topic
from agentd.mesh.transport import (
    ack,
    aiomqtt_error,
    close_client,
    manual_acks,
    paho,
    publish_in_loop,
    received_at,
    refused_protocol,
    stamp_arrivals,
)
from agentd.state import queries
from agentd.state.outbox import OutboxReader
from agentd.trust.envelope import check_envelope, envelope
from agentd.trust.hlc import decode as hlc_decode

if TYPE_CHECKING:
    from agentd.config.schema import Config
    from agentd.state.store import Store
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import NodeKey

log = logging.getLogger(__name__)
Submit = Callable[[str, Any, "str | None", float], Awaitable[dict[str, Any]]]
DIGEST_WINDOW_S = 24 * 3600.0  # anti-entropy covers the decisions fleet_count() can read
STABLE_SESSION_S = 10.0  # a session shorter than this keeps growing the reconnect back-off (e.g. a client-id clash)
MAX_INFLIGHT = 200  # outbox publishes waiting for their PUBACK
PUBACK_TIMEOUT_S = 30.0
RESEND_GRACE_S = 1.0  # at most: time a resend is given to reach the peers before their digests count against it
SUBSCRIBE_BATCH = 100
SESSION_NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5: keep the session like 3.1.1's clean_session=False


class _Failed(InputError):
    """An event the engine could not decide for a reason of its own (counted as ``failed``)."""

    reason = "failed"

    def __init__(self, exc: AgentdError) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")


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
        learned_keys: dict[str, str] | None = None,
        refusals: RefusalTally | None = None,
    ) -> None:
        if not cfg.mqtt.enabled:
            raise ValueError("MeshLink needs mqtt.enabled: true")
        self.cfg = cfg
        self.node, self.fleet = cfg.node.id, cfg.node.fleet
        self._key, self._clock, self._store, self._submit = key, clock, store, submit
        self.connected = False
        # failures: unexpected exceptions that cost a reconnect (a bug); handler_errors: bugs caught at a
        # message handler's boundary, where the message was acknowledged and the session kept.
        self.counters: dict[str, int] = {"published": 0, "events_in": 0, "events_refused": 0, "reconnects": 0,
                                         "failures": 0, "handler_errors": 0}
        self.refusals = refusals if refusals is not None else RefusalTally()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentd-outbox")
        self._outbox_reader = OutboxReader(cfg.data_dir)
        self._on_peer_decision = on_peer_decision
        self._on_command = on_command
        self._keys: dict[str, str] = {**(learned_keys or {}), **cfg.trust.peers}  # configured keys win
        self._learned = len(learned_keys or {})
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._answered: dict[str, float] = {}
        self._resend: list[dict[str, Any]] = []
        self._resent_at: dict[str, float] = {}  # decision id -> when we last resent it
        # "5" or "3.1.1": what the next connect asks for; auto starts with 5 and falls back once
        self._try_protocol = "3.1.1" if cfg.mqtt.protocol == "3.1.1" else "5"
        self.protocol: str | None = None  # the protocol of the live session

    # -- connection ----------------------------------------------------------

    def _client(self, protocol: str) -> Any:
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
        return aiomqtt.Client(
            m.host,
            m.port,
            username=m.username,
            password=password,
            identifier=f"agentd-{self.fleet}-{self.node}",
            **session,
            will=aiomqtt.Will(self._t("status"), offline, qos=1, retain=True),
            keepalive=30,
            timeout=10,
            tls_context=tls,
            # Without it Nagle holds a decision back until the broker's delayed ACK (~40 ms on Linux).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

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
                try:
                    self.connected, connected_at = True, time.monotonic()
                    self.protocol = self._try_protocol
                    log.info("mqtt connected to %s:%s with MQTT %s", self.cfg.mqtt.host, self.cfg.mqtt.port, self.protocol)
                    await self._online(client)
                    try:
                        async with asyncio.TaskGroup() as tg:
                            tg.create_task(self._receive(client, tg), name="mqtt-receive")
                            tg.create_task(self._drain_outbox(client), name="mqtt-outbox")
                            tg.create_task(self._digests(client), name="mqtt-digest")
                            tg.create_task(self._metrics(client), name="mqtt-metrics")
                    except asyncio.CancelledError:
                        await self._offline(client)  # a clean stop sends no last will: say it ourselves
                        raise
                finally:
                    await close_client(client)
            except* (aiomqtt.MqttError, OSError, ssl.SSLError) as group:
                exc = group.exceptions[0]
                if self.connected:
                    log.warning("mqtt connection lost: %s", exc)
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
        await asyncio.get_running_loop().run_in_executor(self._reader, self._close_reader)
        self._reader.shutdown(wait=False)

    def _close_reader(self) -> None:
        self._outbox_reader.close()

    # -- events in -----------------------------------------------------------

    async def _receive(self, client: Any, tg: asyncio.TaskGroup) -> None:
        prefix = self._t("events") + "/"
        peers = topic(self.fleet, "nodes") + "/"
        gossip = topic(self.fleet, "gossip") + "/"
        commands = (topic(self.fleet, "cmd", self.node), topic(self.fleet, "cmd", "all"))
        sem = asyncio.Semaphore(self.cfg.daemon.max_pending)
        async for message in client.messages:
            received = received_at(message, time.monotonic())  # the deadline counts from the socket read
            name = str(message.topic)
            if name.startswith(prefix):
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                try:  # junk is refused here, before it costs a task or a slot
                    parsed = parse_event(payload, max_bytes=self.cfg.mqtt.max_payload_bytes)
                except Exception as exc:  # the handler boundary, as in _one_event
                    self.counters["events_refused"] += 1
                    if isinstance(exc, InputError):
                        self._refused("event", name, exc)
                    else:
                        self._handler_failed("event", exc)
                    ack(client, message)
                    continue
                await sem.acquire()
                tg.create_task(self._one_event(client, message, name[len(prefix):], parsed, received, sem), name="mqtt-event")
                continue
            if name in commands and self._on_command:
                await sem.acquire()
                tg.create_task(self._command_task(message.payload, sem), name="mqtt-command")
                ack(client, message)
                continue
            parts = name[len(peers):].split("/") if name.startswith(peers) else []
            if name.startswith(gossip) and name[len(gossip):] != self.node:
                parts = [name[len(gossip):], "gossip"]
            if len(parts) == 2 and parts[0] != self.node and parts[1] in ("decisions", "status", "gossip"):
                await sem.acquire()
                tg.create_task(self._peer_task(parts[0], parts[1], message.payload, sem), name="mqtt-peer")
            ack(client, message)  # fleet state is soft state: anti-entropy repairs what a crash loses

    async def _command_task(self, payload: Any, sem: asyncio.Semaphore) -> None:
        try:
            assert self._on_command is not None
            await self._on_command(payload if isinstance(payload, bytes) else str(payload).encode())
        except AgentdError as exc:
            log.error("fleet command not handled: %s", exc)
        except Exception as exc:  # the handler boundary: a bug costs this message, never the session
            self._handler_failed("command", exc)
        finally:
            sem.release()

    async def _peer_task(self, node: str, kind: str, payload: Any, sem: asyncio.Semaphore) -> None:
        try:
            await self._peer_message(node, kind, payload)
        except AgentdError as exc:
            log.error("peer message from %s not stored: %s", node[:64], exc)
        except Exception as exc:  # the handler boundary: a bug costs this message, never the session
            self._handler_failed("peer", exc)
        finally:
            sem.release()

    def _handler_failed(self, path: str, exc: BaseException) -> None:
        """A bug met at a handler's boundary: counted, its traceback logged once a minute; the message was acknowledged."""
        self.counters["handler_errors"] += 1
        if self.refusals.add(path, "internal_error", detail=f"{type(exc).__name__}: {str(exc)[:160]}"):
            log.error("%s message handler failed; the message is acknowledged and counted (further ones this minute are only counted)",
                      path, exc_info=exc)

    def _refused(self, path: str, sender: str, exc: InputError) -> None:
        """Count a refused message by path and reason; log the first of each kind a minute."""
        if self.refusals.add(path, exc.reason, sender=sender, detail=str(exc)):
            log.warning("refused a %s message from %s: %s: %s (further ones this minute are only counted)",
                        path, sender[:120], exc.reason, exc)

    @property
    def rejected(self) -> dict[str, int]:
        """Peer messages refused, by reason (the ``peer.*`` part of the refusal counts)."""
        return {k[len("peer."):]: n for k, n in self.refusals.total.items() if k.startswith("peer.")}

    @property
    def _ready(self) -> asyncio.Event:
        """The publisher's wake-up: the store sets it on every commit with outbox rows."""
        return self._store().outbox.ready

    def update_trust(self, peers: dict[str, str]) -> None:
        """After a reload: configured peer keys replace the old ones; learned keys stay."""
        for node, key in peers.items():
            self._keys[node] = key

    def _key_for(self, node: str, env: dict[str, Any]) -> str | None:
        known = self._keys.get(node)
        if known is not None:
            return known
        if self.cfg.trust.allow_unknown_peers and env.get("kind") == "status":
            offered = env.get("body", {}).get("public_key")
            return offered if isinstance(offered, str) else None  # trust on first use, if it verifies
        return None

    async def _peer_message(self, node: str, kind: str, raw: Any) -> None:
        payload = raw if isinstance(raw, bytes) else str(raw).encode()
        if not payload:  # a cleared retained status
            return
        mesh = self.cfg.mesh
        now = time.time()
        try:
            env = check_envelope(
                payload, fleet=self.fleet, max_bytes=self.cfg.mqtt.max_payload_bytes, key_for=self._key_for,
                now_ms=int(now * 1000), max_skew_ms=int(mesh.max_clock_skew_s * 1000), accept_v1=mesh.accept_v1,
            )
            if env["node"] != node:
                raise Rejected("malformed", f"envelope of {env['node'][:64]!r} on {node[:64]!r}'s topic")
            check_peer_body(kind, env, now_s=now, max_skew_s=mesh.max_clock_skew_s)
        except Rejected as exc:
            self._refused("peer", node, exc)
            return
        if env["id"] in self._seen:
            self.refusals.add("peer", "duplicate", summarise=False)
            return
        self._seen[env["id"]] = None
        if len(self._seen) > 100_000:
            self._seen.popitem(last=False)
        self._clock.observe(env["hlc"], max_advance_ms=mesh.max_clock_advance_ms)
        store = self._store()
        body = env["body"]
        if env["kind"] == "status":
            learned = node not in self._keys
            if learned:
                if self._learned >= mesh.max_learned_peers:
                    self._refused("peer", node, Rejected("too_many_peers", f"already {self._learned} learned peers (mesh.max_learned_peers)"))
                    return
                self._learned += 1
                self._keys[node] = str(body["public_key"])
                if self._learned <= 20 or self._learned % 100 == 0:
                    log.warning("learned the key of peer %s on first use (trust.allow_unknown_peers; %d learned)", node, self._learned)
            await store.upsert_peer(node, status=body["status"], hlc=env["hlc"], public_key=self._keys[node], learned=learned)
        elif env["kind"] == "digest":
            await self._answer_digest(node, body, hlc_decode(env["hlc"])[0] / 1000)
        else:
            fresh = await store.record_peer_decision(node, body, env["hlc"])
            if fresh and self._on_peer_decision is not None:  # a resend must not count twice
                self._on_peer_decision(node, body)

    # -- anti-entropy ---------------------------------------------------------

    async def _digests(self, client: Any) -> None:
        """On connect, then every digest_interval_s: tell the peers how many decisions of each node we hold.

        The first digest goes out at once: a reconnect is when a partition may have healed.
        """
        while True:
            since = time.time() - DIGEST_WINDOW_S
            counts = await self._store().read(functools.partial(queries.fleet_digest, since=since))
            body = {"since": since, "counts": counts}
            payload = envelope("digest", fleet=self.fleet, node=self.node, hlc=self._clock.now(), body=body, key=self._key)
            await publish_in_loop(client, topic(self.fleet, "gossip", self.node), payload, qos=0)
            await asyncio.sleep(self.cfg.mqtt.digest_interval_s)

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

    async def _answer_digest(self, peer: str, body: dict[str, Any], made_at: float) -> None:
        """A peer's digest (made at ``made_at``, its HLC) shows fewer of our decisions than we made: send them again."""
        now = time.monotonic()
        # A resend on gossip/<node> reaches every peer: answer at most once per digest round.
        if now - self._answered.get("*", -1e9) < self.cfg.mqtt.digest_interval_s:
            return
        counts = body.get("counts")
        since = body.get("since")
        if not isinstance(counts, dict) or isinstance(since, bool) or not isinstance(since, int | float):
            return
        since = max(float(since), time.time() - DIGEST_WINDOW_S)  # a digest cannot ask for all of history
        theirs = counts.get(self.node) or [0, 0.0]
        store = self._store()
        ours = (await store.read(lambda c: queries.fleet_digest(c, float(since)))).get(self.node, [0, 0.0])
        if not isinstance(theirs, list) or len(theirs) != 2 or theirs[0] >= ours[0]:
            return
        # They miss some: send what is newer than the newest they have, or the whole window
        # when the gap is in the middle (same newest, fewer).
        after = float(theirs[1]) if theirs[1] and float(theirs[1]) < ours[1] else float(since)
        records = await store.read(lambda c: queries.own_decisions_since(c, self.node, after))
        # A digest made before our last resend of a decision could reach the peer says nothing
        # about that resend: resending again for it would only pile up behind congestion (and
        # every peer's digest would ask). A digest made after that and still lacking it does.
        wall = time.time()
        grace = min(RESEND_GRACE_S, self.cfg.mqtt.digest_interval_s)
        records = [r for r in records if made_at >= self._resent_at.get(str(r.get("id")), -1e18) + grace]
        if not records:
            return  # nothing to send: the round's slot stays free for a digest that needs it
        self._answered["*"] = now
        if len(self._resent_at) > 100_000:
            self._resent_at = {k: t for k, t in self._resent_at.items() if wall - t < 3600}
        for r in records:
            self._resent_at[str(r.get("id"))] = wall
        self._resend.extend(records)
        self.counters["resent"] = self.counters.get("resent", 0) + len(records)
        log.info("anti-entropy: %s holds %s of our %s decisions; resending %d", peer[:64], theirs[0], ours[0], len(records))
        self._ready.set()

    async def _one_event(
        self, client: Any, message: Any, skill: str, parsed: tuple[str | None, Any], received: float, sem: asyncio.Semaphore
    ) -> None:
        """Decide one MQTT event, then acknowledge it: after its commit, or at once when it is refused.

        Poison (refused input, or a bug met on the way) is acknowledged and counted, so the
        broker never redelivers it. Only a commit that failed (disk) leaves the event
        unacknowledged, and ends the session so that the broker redelivers it.
        """
        name = str(message.topic)
        try:
            try:
                eid, data = parsed
                await self._submit(skill, data, eid, received)
                self.counters["events_in"] += 1
            except InputError as exc:  # acknowledged: a redelivery would be refused again
                self.counters["events_refused"] += 1
                self._refused("event", name, exc)
            except StateError as exc:
                log.error("mqtt event on %s not committed; reconnecting so that the broker delivers it again: %s", name[:120], exc)
                raise aiomqtt_error(f"an event's commit failed: {exc}") from exc
            except AgentdError as exc:
                self.counters["events_refused"] += 1
                self._refused("event", name, _Failed(exc))
            except Exception as exc:  # the handler boundary: a bug costs this event, never the session
                self.counters["events_refused"] += 1
                self._handler_failed("event", exc)
            ack(client, message)
        finally:
            sem.release()

    # -- outbox out ----------------------------------------------------------

    async def _drain_outbox(self, client: Any) -> None:
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
            self.counters["published"] += 1
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
                self.counters["published"] += 1
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
        try:
            while True:
                self._ready.clear()
                if pending and time.monotonic() - min(t for _, t in pending.values()) > PUBACK_TIMEOUT_S:
                    raise aiomqtt_error(f"no PUBACK in {PUBACK_TIMEOUT_S:.0f} s")
                while self._resend:  # anti-entropy: our own decisions again, freshly enveloped, on gossip/<node>
                    record = self._resend.pop(0)
                    payload = envelope("decision", fleet=self.fleet, node=self.node, hlc=self._clock.now(), body=record, key=self._key)
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
                if acked:
                    done, acked[:] = list(acked), []
                    await self._store().delete_outbox(done)
                if not rows and not self._ready.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._ready.wait()
        finally:
            paho_client.on_publish = previous
            if acked:  # acknowledged before the session ended: forget them now (unacknowledged rows stay)
                with contextlib.suppress(AgentdError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self._store().delete_outbox(list(acked))
