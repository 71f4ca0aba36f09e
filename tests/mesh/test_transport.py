"""agentd.mesh.transport: the receipt time paho stamps survives aiomqtt's queue; buffered reads and the read pause; eager writes."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import pickle
import socket
import threading
import time
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest

from agentd.devtools.broker import Broker
from agentd.mesh.transport import (
    READ_CHUNK,
    BufferedSocket,
    ReadPause,
    buffered_reads,
    eager_writes,
    lean_packets,
    paho,
    received_at,
    set_on_message,
    shared_property_tables,
    stamp_arrivals,
)
from tests.conftest import wait_for


def test_messages_carry_the_time_paho_read_them() -> None:
    stamp_arrivals()
    stamp_arrivals()  # idempotent
    raw = mqtt.MQTTMessage(mid=7, topic=b"agentd/v1/f/nodes/n/events/s")
    raw.payload, raw.timestamp = b"{}", 1234.5
    m = aiomqtt.Message._from_paho_message(raw)
    assert received_at(m, default=9999.0) == 1234.5
    assert str(m.topic) == "agentd/v1/f/nodes/n/events/s" and m.mid == 7
    raw.timestamp = 0.0  # never stamped: the caller's clock
    assert received_at(aiomqtt.Message._from_paho_message(raw), default=9999.0) == 9999.0


def test_buffered_socket_serves_small_reads_from_one_kernel_read() -> None:
    a, b = socket.socketpair()
    b.setblocking(False)
    sock = BufferedSocket(b)
    try:
        a.sendall(b"\x30\x05hello\x40\x02\x00\x07")  # a PUBLISH-like and a PUBACK-like packet
        assert sock.recv(1) == b"\x30"
        assert sock.pending() == 10  # the rest came with the first read
        assert sock.recv(1) == b"\x05" and sock.recv(5) == b"hello"
        sock.hold = True
        assert sock.pending() == 0  # held: the reader must stop here
        sock.hold = False
        assert sock.recv(100) == b"\x40\x02\x00\x07"  # short: only what is buffered, as a kernel read may be
        assert sock.pending() == 0
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # empty buffer and nothing in the kernel: the socket's own error
        a.sendall(b"xyz")
        assert sock.recv(3) == b"xyz"
        a.sendall(b"more")
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # one kernel read a turn: a flood must let the event loop run
        assert sock.pending() == 0  # which ends the turn (aiomqtt's reader returns)
        assert sock.recv(4) == b"more"  # the next turn reads again
        assert sock.fileno() == b.fileno()  # everything else is the socket's
        assert sock.pending() == 0
        a.close()
        assert sock.recv(1) == b""  # end of stream passes through
    finally:
        a.close()
        b.close()


class _CountingSocket:
    """A real socket whose ``send`` calls are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.sends = sock, 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


async def test_buffered_socket_joins_a_turns_writes_into_one_send() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    counting = _CountingSocket(b)
    sock = BufferedSocket(counting)
    try:
        assert [sock.send(b"\x40\x02\x00\x01"), sock.send(bytearray(b"\x40\x02\x00\x02")), sock.send(memoryview(b"abc"))] == [4, 4, 3]
        with pytest.raises(BlockingIOError):
            a.recv(100)  # held until the end of the loop's turn
        assert sock.unsent == 11 and counting.sends == 0
        await asyncio.sleep(0)
        assert a.recv(100) == b"\x40\x02\x00\x01\x40\x02\x00\x02abc" and counting.sends == 1
        assert sock.unsent == 0 and not sock.watching
        assert await asyncio.to_thread(sock.send, b"off the loop") == 12  # another thread: straight to the kernel
        assert a.recv(100) == b"off the loop" and counting.sends == 2
    finally:
        a.close()
        b.close()


def _small_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair whose buffers are small: the kernel soon takes only part of a write to ``b``."""
    a, b = socket.socketpair()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    b.setblocking(False)
    return a, b


def _drain(a: socket.socket, got: bytearray, want: int | None) -> None:
    """Read ``a`` into ``got`` until ``want`` bytes came (None: until the end of stream)."""
    a.settimeout(10)
    while want is None or len(got) < want:
        chunk = a.recv(1 << 16)
        if not chunk:
            break
        got.extend(chunk)


async def test_buffered_socket_waits_for_writability_for_what_the_kernel_cannot_take() -> None:
    a, b = _small_pair()
    sock = BufferedSocket(b)
    data = bytes(range(256)) * 8192  # 2 MB, in 64 KB writes of one turn
    try:
        for i in range(0, len(data), 65536):
            sock.send(data[i : i + 65536])
        await asyncio.sleep(0)
        assert sock.watching and 0 < sock.unsent < len(data)  # the kernel took only part
        sock.send(b"tail")  # queued behind the rest, in order
        got = bytearray()
        reader = asyncio.create_task(asyncio.to_thread(_drain, a, got, len(data) + 4))

        async def sent() -> bool:
            return sock.unsent == 0

        await wait_for(sent, limit_s=20)
        await reader
        assert bytes(got) == data + b"tail" and not sock.watching
    finally:
        a.close()
        b.close()


async def test_a_closed_buffered_socket_stays_open_until_what_waits_is_out() -> None:
    a, b = _small_pair()
    sock = BufferedSocket(b)
    data = b"d" * 1_000_000 + b"\xe0\x00"  # a backlog, then paho's DISCONNECT
    try:
        sock.send(data)
        sock.close()  # as paho closes right after writing its DISCONNECT
        assert sock.unsent > 0 and b.fileno() >= 0  # not closed yet: the rest still goes out
        got = bytearray()
        await asyncio.to_thread(_drain, a, got, None)  # ends at the end of stream: the socket was closed once all was out
        assert bytes(got) == data and b.fileno() == -1 and not sock.watching
    finally:
        a.close()
        b.close()


async def test_buffered_socket_raises_a_failed_send_at_the_next_write() -> None:
    a, b = socket.socketpair()
    b.setblocking(False)
    sock = BufferedSocket(b)
    a.close()
    try:
        assert sock.send(b"\xc0\x00") == 2  # a PINGREQ, taken for the end of the turn
        await asyncio.sleep(0)  # the kernel refuses it: the peer is gone
        with pytest.raises(OSError):
            sock.send(b"\xc0\x00")  # paho sees the loss at its next write
        assert sock.unsent == 0 and not sock.watching
    finally:
        b.close()


async def test_a_paused_reader_resumes_into_what_it_had_already_read(tmp_path: Path) -> None:
    # Twenty messages reach the client in one kernel read; the first pauses the reader, so the
    # other nineteen wait in its buffer. Resuming must deliver them although the kernel has
    # nothing more to say (epoll would never wake the reader).
    broker = Broker(folder=tmp_path)
    broker.start()
    try:
        client = aiomqtt.Client("127.0.0.1", broker.port, identifier="buffered")
        buffered_reads(client)
        async with client:
            await client.subscribe("t/#", qos=0)
            pause = ReadPause(client, 1)
            got: list[bytes] = []

            def on_message(c: Any, u: Any, m: Any) -> None:
                got.append(m.payload)
                pause.pause()

            set_on_message(client, on_message)
            assert pause.pause()
            sock = paho(client).socket()
            assert isinstance(sock, BufferedSocket)
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="burst")
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            sent = [pub.publish(f"t/{i:02}", f"m{i:02}".encode(), qos=1) for i in range(20)]
            for info in sent:
                await asyncio.to_thread(info.wait_for_publish, 5)
            pub.disconnect()
            pub.loop_stop()
            waiting = 0
            for _ in range(200):  # until the twenty are in the client's kernel buffer (11 bytes each)
                waiting = len(sock._sock.recv(4096, socket.MSG_PEEK))
                if waiting >= 20 * 11:
                    break
                await asyncio.sleep(0.01)
            assert waiting == 20 * 11
            pause.resume()
            await asyncio.sleep(0.2)
            assert got == [b"m00"], "the pause did not stop the reader at the first message"
            assert sock.pending() == 0  # held with nineteen kept
            for n in range(1, 20):
                pause.resume()
                for _ in range(100):
                    if len(got) > n:
                        break
                    await asyncio.sleep(0.01)
            assert got == [f"m{i:02}".encode() for i in range(20)]
    finally:
        broker.stop()


async def test_lean_packets_match_a_311_puback_without_paho_decoding_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import paho.mqtt._packet as packets

    broker = Broker(folder=tmp_path)
    broker.start()
    try:
        client = aiomqtt.Client("127.0.0.1", broker.port, identifier="lean", protocol=aiomqtt.ProtocolVersion.V311)
        lean_packets(client)
        async with client:
            def refuse(*args: Any) -> Any:
                raise AssertionError("paho decoded a 3.1.1 PUBACK")

            monkeypatch.setattr(packets, "decode_puback", refuse)
            for i in range(5):  # each publish returns only once its PUBACK was matched
                await asyncio.wait_for(client.publish(f"t/{i}", b"x", qos=1), 5)
            assert not paho(client)._out_messages
            monkeypatch.undo()
            with caplog.at_level(logging.DEBUG, logger="mqtt"):  # paho's debug lines still come when asked for
                await asyncio.wait_for(client.publish("t/x", b"x", qos=1), 5)
            assert any("Received PUBACK" in r.getMessage() for r in caplog.records)
    finally:
        broker.stop()


def _flooding_broker(lsock: socket.socket, seconds: float, stop: threading.Event) -> None:
    """Answers CONNECT and one SUBSCRIBE, then sends tiny QoS 0 PUBLISHes as fast as TCP takes them."""
    conn, _ = lsock.accept()
    conn.recv(4096)  # CONNECT
    conn.sendall(b"\x20\x02\x00\x00")  # CONNACK, session not present, accepted
    sub = conn.recv(4096)
    conn.sendall(b"\x90\x03" + sub[2:4] + b"\x00")  # SUBACK for its packet id, QoS 0
    body = (6).to_bytes(2, "big") + b"peer/x" + b"y" * 20
    blob = (bytes([0x30, len(body)]) + body) * 2000
    until = time.monotonic() + seconds
    with contextlib.suppress(OSError):
        while time.monotonic() < until and not stop.is_set():
            conn.sendall(blob)
    stop.set()
    conn.close()


async def test_a_flood_lets_the_event_loop_run_between_kernel_reads() -> None:
    # Found by review: with the reader reading on while bytes were pending, a flood faster than
    # the node kept it in one turn of the event loop for as long as the flood lasted.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    stop = threading.Event()
    threading.Thread(target=_flooding_broker, args=(lsock, 1.0, stop), daemon=True).start()
    client = aiomqtt.Client("127.0.0.1", lsock.getsockname()[1], identifier="flooded", protocol=aiomqtt.ProtocolVersion.V311)
    buffered_reads(client)
    got = 0

    def count(c: Any, u: Any, m: Any) -> None:
        nonlocal got
        got += 1

    try:
        async with client:
            await client.subscribe("peer/#")
            set_on_message(client, count)
            turns = 0
            while not stop.is_set():
                await asyncio.sleep(0)
                turns += 1
            assert got > 2000, "the flood was not read"
            per_turn = READ_CHUNK // 30 + 2  # 30-byte packets: what one kernel read holds, and a split one
            assert got <= (turns + 1) * per_turn, f"{got} messages were read in {turns} turns of the event loop"
            paho(client).disconnect()
    except aiomqtt.MqttError:
        pass  # the fake broker closed the connection
    finally:
        lsock.close()


async def test_buffered_sockets_keep_the_clients_socket_options(tmp_path: Path) -> None:
    # aiomqtt sets socket_options only on a socket.socket; TCP_NODELAY was lost (review finding).
    broker = Broker(folder=tmp_path)
    broker.start()
    try:
        client = aiomqtt.Client("127.0.0.1", broker.port, identifier="nodelay",
                                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        buffered_reads(client)
        async with client:
            sock = paho(client).socket()
            assert isinstance(sock, BufferedSocket)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        broker.stop()


def _watched_fds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file descriptors the running loop is asked to watch for writability."""
    loop = asyncio.get_running_loop()
    watched: list[int] = []
    add_writer = loop.add_writer

    def spy(fd: Any, *args: Any) -> Any:
        watched.append(fd if isinstance(fd, int) else fd.fileno())
        return add_writer(fd, *args)

    monkeypatch.setattr(loop, "add_writer", spy)
    return watched


@pytest.mark.parametrize(("eager", "joined"), [(True, False), (True, True), (False, False)])
async def test_a_publish_goes_out_at_once_without_a_watch_for_writability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          eager: bool, joined: bool) -> None:
    broker = Broker(folder=tmp_path)
    broker.start()
    try:
        listener = aiomqtt.Client("127.0.0.1", broker.port, identifier="listener")
        client = aiomqtt.Client("127.0.0.1", broker.port, identifier="eager")
        if joined:  # a BufferedSocket: the turn's fifty packets leave in one send at its end
            buffered_reads(client)
        if eager:
            eager_writes(client)
        async with listener, client:
            await listener.subscribe("eager/#", qos=1)
            await client.publish("eager/warm", b"x", qos=1)
            watched = _watched_fds(monkeypatch)
            p = paho(client)
            still_queued = 0
            for i in range(50):
                assert p.publish(f"eager/{i}", b"decision %d" % i, qos=1).rc == mqtt.MQTT_ERR_SUCCESS
                still_queued += p.want_write()
            got = []
            async with asyncio.timeout(10):
                async for m in listener.messages:
                    got.append(str(m.topic))
                    if len(got) == 51:
                        break
            assert got[1:] == [f"eager/{i}" for i in range(50)]
            fd = p.socket().fileno()
            if joined:
                assert isinstance(p.socket(), BufferedSocket) and p.socket().unsent == 0
            if eager:  # every packet handed over before publish returned; the loop never watched the socket
                assert still_queued == 0 and fd not in watched
            else:  # aiomqtt alone: each waits for the loop to see the socket writable
                assert still_queued == 50 and fd in watched
    finally:
        broker.stop()


def _slow_reading_broker(lsock: socket.socket, wait_s: float, want: int, got: list[int]) -> None:
    """Answers CONNECT, reads nothing for ``wait_s`` (the client's send buffer fills), then counts bytes up to ``want``."""
    conn, _ = lsock.accept()
    conn.recv(4096)  # CONNECT
    conn.sendall(b"\x20\x02\x00\x00")
    time.sleep(wait_s)
    n = 0
    conn.settimeout(10)
    with contextlib.suppress(OSError):
        while n < want:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            n += len(chunk)
    got.append(n)
    conn.close()


@pytest.mark.parametrize("joined", [False, True])
async def test_a_full_send_buffer_waits_for_writability_and_loses_nothing(monkeypatch: pytest.MonkeyPatch, joined: bool) -> None:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small buffers both ways: the sender's fills at once
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    payload = b"p" * 4000
    packet = len(payload) + 2 + len("full/x") + 1 + 2  # QoS 0 PUBLISH: header, 2-byte length, topic, payload
    count = 2000  # 8 MB: far more than the kernel's buffers hold
    got: list[int] = []
    server = threading.Thread(target=_slow_reading_broker, args=(lsock, 0.5, packet * count, got), daemon=True)
    server.start()
    client = aiomqtt.Client("127.0.0.1", lsock.getsockname()[1], identifier="full", protocol=aiomqtt.ProtocolVersion.V311,
                            socket_options=[(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)])
    if joined:
        buffered_reads(client)
    eager_writes(client)
    checked = False
    try:
        async with client:
            watched = _watched_fds(monkeypatch)
            p = paho(client)
            for _ in range(count):
                assert p.publish("full/x", payload, qos=0).rc == mqtt.MQTT_ERR_SUCCESS
            sock = p.socket()
            if joined:  # paho handed it all over; the socket holds what the kernel could not take
                assert not p.want_write() and isinstance(sock, BufferedSocket)
                await asyncio.sleep(0)
                assert sock.watching and sock.unsent > 0
            else:
                assert p.want_write()  # the kernel took only part
                await asyncio.sleep(0)
            assert sock.fileno() in watched  # so the loop waits until it can write the rest
            async def sent() -> bool:
                return not p.want_write() and not (joined and sock.unsent)

            await wait_for(sent, limit_s=20)
            await asyncio.to_thread(server.join, 20)
            assert got == [packet * count]
            checked = True
            paho(client).disconnect()
    except aiomqtt.MqttError:
        pass  # the fake broker closed the connection
    finally:
        lsock.close()
    assert checked


async def test_a_publish_from_inside_a_paho_callback_goes_out_at_the_end_of_the_turn(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker(folder=tmp_path)
    broker.start()
    try:
        client = aiomqtt.Client("127.0.0.1", broker.port, identifier="echo")
        eager_writes(client)
        async with client:
            p = paho(client)
            queued_inside: list[bool] = []
            pongs: list[str] = []

            def echo(c: Any, userdata: Any, message: Any) -> None:  # paho holds its callback lock here
                if message.topic.startswith("ping/"):
                    p.publish("pong/" + message.topic[5:], message.payload, qos=1)
                    queued_inside.append(p.want_write())
                else:
                    pongs.append(message.topic)

            await client.subscribe("ping/#", qos=1)
            await client.subscribe("pong/#", qos=1)
            set_on_message(client, echo)
            watched = _watched_fds(monkeypatch)
            for i in range(5):
                await client.publish(f"ping/{i}", b"x", qos=1)
            async def echoed() -> bool:
                return len(pongs) == 5

            await wait_for(echoed, limit_s=10)
            assert sorted(pongs) == [f"pong/{i}" for i in range(5)]
            assert queued_inside and all(queued_inside)  # not written inside the callback, as paho never does
            assert p.socket().fileno() not in watched  # but at the end of the turn, without a watch
    finally:
        broker.stop()


def test_mqtt5_properties_decode_as_paho_does_on_shared_tables() -> None:
    from paho.mqtt import _packet
    from paho.mqtt.enums import MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    sent = Properties(PacketTypes.PUBLISH)
    sent.UserProperty = [("site", "bay 3"), ("k", "v")]
    sent.MessageExpiryInterval = 60
    sent.ContentType = "application/json"
    head = (3).to_bytes(2, "big") + b"a/b" + (7).to_bytes(2, "big")
    shared_property_tables()
    shared_property_tables()  # idempotent
    got = _packet.decode_publish(0x32, head + sent.pack() + b"{}", MQTTProtocolVersion.MQTTv5)
    plain = Properties(PacketTypes.PUBLISH)  # paho's own class, untouched
    plain.unpack(sent.pack())
    assert isinstance(got.properties, Properties) and got.properties.json() == plain.json() == sent.json()
    assert got.payload == b"{}" and got.mid == 7
    empty = _packet.decode_publish(0x32, head + b"\x00{}", MQTTProtocolVersion.MQTTv5).properties
    assert empty.json() == {} and empty.names is got.properties.names  # one copy of the tables
    empty.unpack(sent.pack())  # reused: cleared, then filled as paho fills it
    assert empty.json() == sent.json()
    empty.clear()
    assert empty.json() == {} and not hasattr(empty, "ContentType")
    copied = pickle.loads(pickle.dumps(got.properties))  # a message's properties can be pickled and copied
    assert copied.json() == sent.json() and copy.deepcopy(got.properties).json() == sent.json()


async def test_a_callback_raising_while_writing_ends_the_session_without_a_busy_loop(tmp_path: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker(folder=tmp_path)
    broker.start()
    try:
        client = aiomqtt.Client("127.0.0.1", broker.port, identifier="raising")
        eager_writes(client)
        with pytest.raises(aiomqtt.MqttError):
            async with client:
                p = paho(client)

                def broken(*args: Any) -> None:
                    raise RuntimeError("a broken on_publish")

                p.on_publish = broken  # paho calls it after writing a QoS 0 packet, inside loop_write
                watched = _watched_fds(monkeypatch)
                p.publish("raising/x", b"x", qos=0)
                assert isinstance(client._disconnected.exception(), RuntimeError)
                assert p.socket().fileno() not in watched  # not handed to a watch that would meet it again and again
                async with asyncio.timeout(5):  # the session is over: waiting for messages raises
                    await anext(aiter(client.messages))
    finally:
        broker.stop()


async def test_a_lean_mqtt5_client_receives_a_messages_properties(tmp_path: Path) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    broker = Broker(folder=tmp_path)
    broker.start()
    try:
        sender = aiomqtt.Client("127.0.0.1", broker.port, identifier="p5-sender", protocol=aiomqtt.ProtocolVersion.V5)
        receiver = aiomqtt.Client("127.0.0.1", broker.port, identifier="p5-receiver", protocol=aiomqtt.ProtocolVersion.V5)
        lean_packets(receiver)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("site", "bay 3")]
        props.ContentType = "application/json"
        async with sender, receiver:
            await receiver.subscribe("p5/#", qos=1)
            await sender.publish("p5/x", b"{}", qos=1, properties=props)
            async with asyncio.timeout(10):
                message = await anext(aiter(receiver.messages))
        assert message.properties is not None
        assert message.properties.UserProperty == [("site", "bay 3")] and message.properties.ContentType == "application/json"
    finally:
        broker.stop()
