"""The only module that knows aiomqtt's and paho's internals: manual acks, the paho client
under aiomqtt (PUBACK matching, a forced disconnect), refused-protocol and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

log = logging.getLogger(__name__)


def paho(client: Any) -> Any:
    """The paho client under an aiomqtt client (aiomqtt 2.x keeps it as ``_client``)."""
    return client._client


def on_message(client: Any) -> Any:
    """paho's message callback under an aiomqtt client (aiomqtt's own puts messages in its queue)."""
    return paho(client).on_message


def set_on_message(client: Any, callback: Any) -> None:
    """Replace paho's message callback: it runs on the event loop, in the socket's reader, per message read."""
    paho(client).on_message = callback


def manual_acks(client: Any) -> None:
    """Acknowledge QoS 1 messages only when ``ack`` is called (after the decision's commit)."""
    paho(client).manual_ack_set(True)


def ack(client: Any, message: Any) -> None:
    """Acknowledge a received message (nothing to do at QoS 0)."""
    if message.qos > 0:
        paho(client).ack(message.mid, message.qos)


async def close_client(client: Any) -> None:
    """Leave the session, but never wait more than 3 s: aiomqtt's own exit waits without a
    bound for the broker to close, which a congested session may never do."""
    try:
        async with asyncio.timeout(3.0):
            await client.__aexit__(None, None, None)
    except Exception as exc:  # timed out, or the connection is already gone
        log.debug("mqtt client closed uncleanly: %s", exc)
        with contextlib.suppress(Exception):
            paho(client).disconnect()


SEND_MAX = 256 * 1024  # bytes one send hands the kernel at most (a joined backlog is sent in such slices)
CLOSE_DRAIN_S = 3.0  # how long a closed socket stays open for bytes still waiting (as close_client waits)
READ_CHUNK = 8192  # bytes one recv asks for: about 45 events of 180 bytes, or 270 junk packets of 30 (a 12 ms turn here)


class BufferedSocket:
    """paho's socket, whose reads are served from one larger ``recv`` and whose writes on the
    event loop's thread are joined into one ``send`` a turn of the loop.

    Reads: paho reads a packet as three or four ``recv`` calls (its type, each byte of its
    length, then the rest), each a system call that also hands the GIL to another thread; under a
    burst of small events that was a tenth of the event loop. Here a read asks the kernel for up
    to ``READ_CHUNK`` bytes and the next ones are served from what it got. Data left over is
    reported by ``pending``, which aiomqtt's reader asks after each packet (as it does for TLS)
    and then reads on, so a reader's turn takes what one kernel read brought.

    One kernel read a turn: once the buffer is drained, a second read in the same turn says
    "nothing yet" (``BlockingIOError``, paho keeps its partial packet), ``pending`` reports 0 and
    the reader returns to the event loop, whose epoll wakes it again for what the kernel holds.
    Else a flood faster than the node would keep the reader in one turn for good. While ``hold``
    is set (``ReadPause``) ``pending`` reports nothing, so the reader stops at the end of its
    ``loop_read``.

    Writes: paho sends each packet (an event's PUBACK, a decision's PUBLISH) with a ``send`` of
    its own, 14 % of the event loop under the peer bench. On the event loop's thread a plain TCP
    socket's ``send`` takes the bytes and reports them written; the first one of a turn schedules
    ``flush`` for the end of it, which hands them to the kernel at once (up to ``SEND_MAX`` a
    system call), in order. What the kernel cannot take yet waits for the socket to become
    writable (``watching``); a send error is raised to paho at its next write and ends the
    connection. ``close`` with bytes still waiting (paho's DISCONNECT behind a backlog) keeps the
    socket open until they are out or ``CLOSE_DRAIN_S`` has passed, as paho's own queue had.
    TLS goes straight to the socket, unjoined. Under aiomqtt paho writes only on the loop's
    thread; a write from another one goes straight to the socket while nothing waits, and is
    told to wait (``BlockingIOError``, paho keeps the packet) while something does.
    Everything else is the socket's own.
    """

    __slots__ = ("_buf", "_closing", "_loop", "_out", "_out_error", "_pos", "_read", "_sent", "_sock", "hold", "watching")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._read = False  # a kernel read was made in this turn of the reader
        self.hold = False
        self._out = bytearray()  # written by paho; the kernel has taken the first ``_sent`` bytes
        self._sent = 0
        self._out_error: OSError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.TimerHandle | None = None  # closed by paho, left open until what waits is out
        self.watching = False  # waiting for the kernel to take the rest (the loop's writer on this fd is ours)

    def recv(self, n: int) -> bytes:
        """At most ``n`` bytes: from the buffer, else from one kernel read of up to ``READ_CHUNK``."""
        avail = len(self._buf) - self._pos
        if avail == 0:
            tls_ready = self._tls_pending()  # decrypted already: no kernel read (at most one TLS record)
            if self._read and not tls_ready:
                raise BlockingIOError("one kernel read a turn")
            data: bytes = self._sock.recv(max(n, READ_CHUNK))  # BlockingIOError, EOF (b"") and errors pass through
            self._read = self._read or not tls_ready
            if len(data) <= n:
                return data
            self._buf, self._pos = data, n
            return data[:n]
        buf, start = self._buf, self._pos
        if n >= avail:  # the rest of the buffer: short, as a kernel read may be
            self._buf, self._pos = b"", 0
            return buf[start:]
        self._pos = start + n
        return buf[start : start + n]

    def _tls_pending(self) -> int:
        pending = getattr(self._sock, "pending", None)
        return int(pending()) if pending is not None else 0

    def pending(self) -> int:
        """Bytes read and not yet taken (a TLS socket's decrypted ones included); 0 while held.

        0 ends the reader's turn, and the next turn may read the kernel again."""
        left = 0 if self.hold else len(self._buf) - self._pos + self._tls_pending()
        if left == 0:
            self._read = False
        return left

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Take ``data`` for this turn's ``flush`` (all of it); off the loop's thread or on TLS, the socket's own send."""
        if self._out_error is not None:
            raise self._out_error
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop's thread
            if self.unsent:
                raise BlockingIOError("bytes of the event loop's are waiting") from None
            return int(self._sock.send(data))
        if not self._out:
            if hasattr(self._sock, "pending"):  # TLS
                return int(self._sock.send(data))
            self._loop = loop
            loop.call_soon(self.flush)
        self._out += data
        return len(data)

    @property
    def unsent(self) -> int:
        """Bytes paho wrote that the kernel has not taken yet."""
        return len(self._out) - self._sent

    def flush(self) -> None:
        """Hand what paho wrote to the kernel, ``SEND_MAX`` a call, until it takes less; wait for writability for the rest."""
        if self._out_error is not None:
            return
        while self.unsent:
            with memoryview(self._out) as view, view[self._sent : self._sent + SEND_MAX] as chunk:
                size = len(chunk)
                try:
                    sent = int(self._sock.send(chunk))
                except BlockingIOError:
                    sent = 0
                except OSError as exc:  # the connection broke: paho meets it at its next write, the reader at its next read
                    self._out_error = exc
                    break
            self._sent += sent
            if sent < size:
                break
        if self._out_error is not None:
            self._out, self._sent = bytearray(), 0
            self._unwatch()
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # the reader sees the end now, and paho reports the loss
            if self._closing is not None:
                self._close_now()
            return
        if not self.unsent:
            self._out, self._sent = bytearray(), 0
            self._unwatch()
            if self._closing is not None:
                self._close_now()
            return
        if self._sent >= SEND_MAX:  # drop what the kernel took: each byte is copied once more at most
            del self._out[: self._sent]
            self._sent = 0
        if not self.watching and self._loop is not None:
            self._loop.add_writer(self._sock.fileno(), self.flush)
            self.watching = True

    def _unwatch(self) -> None:
        if self.watching and self._loop is not None:
            self.watching = False
            with contextlib.suppress(Exception):  # the loop may be closed, the fd gone
                self._loop.remove_writer(self._sock.fileno())

    def close(self) -> None:
        """Close the socket once what paho wrote is out (paho's DISCONNECT, say), or ``CLOSE_DRAIN_S`` from now."""
        if self._closing is not None:
            return
        with contextlib.suppress(Exception):
            self.flush()
        loop = self._loop
        if self.unsent and loop is not None and not loop.is_closed():
            try:
                on_loop = asyncio.get_running_loop() is loop
            except RuntimeError:
                on_loop = False
            if on_loop:
                self._closing = loop.call_later(CLOSE_DRAIN_S, self._close_now)
                return
        self._close_now()

    def _close_now(self) -> None:
        if self._closing is not None:
            self._closing.cancel()
        self._closing = None
        self._unwatch()
        self._out, self._sent = bytearray(), 0
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def buffered_reads(client: Any) -> None:
    """Give the client's next connections a ``BufferedSocket`` (call before connecting).

    aiomqtt sets its ``socket_options`` (TCP_NODELAY here) only on a ``socket.socket``, which the
    wrapper is not, so they are set here on the socket it wraps."""
    p = paho(client)
    create = p._create_socket
    options = tuple(getattr(client, "_socket_options", ()))

    def buffered() -> BufferedSocket:
        sock = create()
        for option in options:
            sock.setsockopt(*option)
        return BufferedSocket(sock)

    p._create_socket = buffered


def eager_writes(client: Any) -> None:
    """Write a queued packet at once, not after epoll says the socket is writable (call before connecting).

    For each packet paho queues while nothing else waits, aiomqtt has the loop watch the socket
    for writability through ``call_soon_threadsafe`` (a write to the loop's self-pipe), then
    ``add_writer``, then a ``select``: two turns of the loop, 0.16-0.25 ms between a decision's
    publish and its bytes on the wire, and four system calls. A socket that can take the bytes
    needs none of that. So, on the event loop's thread, the packet is written at once, as paho
    does when no loop drives it; inside one of paho's callbacks (where paho itself never writes)
    it is written at the end of the loop's turn. When the kernel's buffer is full (the packet
    only partly written), aiomqtt's watch for writability takes over as before, and
    registrations from another thread (paho's connect runs in an executor) go to aiomqtt
    unchanged.
    """
    p = paho(client)
    watch = p.on_socket_register_write  # aiomqtt's: add_writer, by way of call_soon_threadsafe

    def write_now() -> None:
        if p._sock is None:
            p._registered_write = False
            return
        try:
            p.loop_write()  # unregisters when everything went out
        except Exception as exc:  # a broken pipe or a raising callback: end the session, as aiomqtt's write path does
            log.warning("writing to the broker failed: %s", exc)
            disconnected = client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)
            return
        if p._registered_write and p._sock is not None:  # the kernel took only part: wait until writable
            watch(p, p._userdata, p._sock)

    def register_write(c: Any, userdata: Any, sock: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop's thread
            watch(c, userdata, sock)
            return
        if p._in_callback_mutex.acquire(False):  # not inside a paho callback
            p._in_callback_mutex.release()
            write_now()
        else:
            loop.call_soon(write_now)

    unwatch = p.on_socket_unregister_write  # aiomqtt's: remove_writer

    def unregister_write(c: Any, userdata: Any, sock: Any) -> None:
        if getattr(sock, "watching", False):  # the loop's writer on this fd is a BufferedSocket's flush, not aiomqtt's
            return
        unwatch(c, userdata, sock)

    p.on_socket_register_write = register_write
    p.on_socket_unregister_write = unregister_write


def lean_packets(client: Any) -> None:
    """Skip work paho does per packet that this node never uses (call before connecting).

    - paho hands a debug line to its logger for every packet it sends or reads; with that logger
      (aiomqtt's ``mqtt``) not at debug level they go nowhere.
    - For a 3.1.1 PUBACK, paho 2.2 builds a reason code and an empty MQTT 5 property set for
      each; a PUBACK under 3.1.1 carries only its packet id, so one shared pair serves them all.
      Anything else (MQTT 5, PUBCOMP, a malformed PUBACK, a debug log) is paho's own path.
    - paho builds three lookup tables for every MQTT 5 property set it decodes (one per event
      received over MQTT 5): ``shared_property_tables``.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import MQTTErrorCode
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    p = paho(client)
    log_full = p._easy_log

    def debugging() -> bool:
        logger = p._logger
        return p.on_log is not None or (logger is not None and logger.isEnabledFor(logging.DEBUG))

    def easy_log(level: int, fmt: str, *args: Any) -> None:
        if level != mqtt.MQTT_LOG_DEBUG or debugging():
            log_full(level, fmt, *args)

    p._easy_log = easy_log
    handle_full = p._handle_pubackcomp
    success = ReasonCode(PacketTypes.PUBACK)
    no_properties = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]

    def handle_pubackcomp(cmd: str) -> Any:
        packet = p._in_packet["packet"]
        if cmd != "PUBACK" or p._protocol != mqtt.MQTTv311 or len(packet) != 2 or debugging():
            return handle_full(cmd)
        mid = (packet[0] << 8) | packet[1]
        with p._out_message_mutex:
            if mid in p._out_messages:
                return p._do_on_publish(mid, success, no_properties)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    p._handle_pubackcomp = handle_pubackcomp
    shared_property_tables()


def shared_property_tables() -> None:
    """Have paho's packet decoder build MQTT 5 property sets on tables built once (process-wide, idempotent).

    paho's ``Properties()`` fills a list of type names and two dicts of 28 entries each time, and
    ``unpack`` then clears all 28 names on the fresh object: 15 % of the event loop's time under
    the peer bench went to it. The tables are only ever read, so the subclass shares one copy;
    every other behaviour (validation, packing, the attributes set) is paho's.
    """
    from paho.mqtt import _packet
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    if getattr(_packet.Properties, "shared_tables", False):  # type: ignore[attr-defined]
        return
    template = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    private = frozenset(("packetType", "types", "names", "properties"))

    class SharedTables(Properties):
        """paho's MQTT 5 property set, on shared tables."""

        shared_tables = True

        def __init__(self, packetType: int) -> None:
            d = self.__dict__
            d["packetType"], d["types"], d["names"], d["properties"] = packetType, template.types, template.names, template.properties

        def clear(self) -> None:  # the properties set are the instance's attributes other than the four above
            for name in [n for n in self.__dict__ if n not in private]:
                delattr(self, name)

    # a module-level name, so that pickle finds the class a decoded message's properties have
    SharedTables.__qualname__ = SharedTables.__name__ = "SharedPropertyTables"
    SharedTables.__module__ = __name__
    globals()["SharedPropertyTables"] = SharedTables
    _packet.Properties = SharedTables  # type: ignore[attr-defined]


class ReadPause:
    """Stops reading a session's socket while the node holds too many events, and resumes.

    Events are acknowledged only after their commit, and MQTT 5's Receive Maximum should bound
    how many a broker sends unacknowledged; but mosquitto 2.0.11 sends past it as soon as
    acknowledgements come back while more is queued (a client with Receive Maximum 100 that
    acknowledged 300 of 3,000 got all 3,000), and a 3.1.1 broker may be set to no limit. So the
    node bounds it itself: with ``limit`` events in hand it takes the socket's reader off the
    event loop (TCP then holds the broker back), and puts it back at half that. Only the events'
    connection is paused: the node publishes on another (``MeshLink.run``).
    """

    def __init__(self, client: Any, limit: int) -> None:
        self._client, self.limit = client, limit
        self._resume: Any = None

    @property
    def paused(self) -> bool:
        """Whether the socket's reader is off the loop now."""
        return self._resume is not None

    def pause(self) -> bool:
        """Take aiomqtt's reader off the loop; False when already paused or the socket is gone."""
        if self._resume is not None:
            return False
        sock = paho(self._client).socket()
        if sock is None or sock.fileno() < 0:
            return False
        loop = asyncio.get_running_loop()
        fd = sock.fileno()
        try:
            handle = loop._selector.get_key(fd).data[0]  # type: ignore[attr-defined]  # (reader, writer) handles
        except (KeyError, AttributeError):
            return False
        if handle is None:
            return False
        callback, args = handle._callback, handle._args
        loop.remove_reader(fd)
        if isinstance(sock, BufferedSocket):
            sock.hold = True  # the reader stops when its loop_read returns; what it read stays buffered

        def resume() -> None:
            current = paho(self._client).socket()
            if current is sock and sock.fileno() == fd:  # the same live connection
                loop.add_reader(fd, callback, *args)
                if isinstance(sock, BufferedSocket):
                    sock.hold = False
                    if sock.pending():  # already read off the kernel: epoll will not say so
                        loop.call_soon(callback, *args)

        self._resume = resume
        return True

    def resume(self) -> None:
        """Put the reader back (no-op when not paused)."""
        resume, self._resume = self._resume, None
        if resume is not None:
            resume()


def refused_protocol(exc: BaseException) -> bool:
    """True when a CONNACK said the broker does not speak the MQTT version we asked for."""
    from aiomqtt.exceptions import MqttConnectError

    if not isinstance(exc, MqttConnectError):
        return False
    rc = getattr(exc.rc, "value", exc.rc)
    return rc in (1, 0x84)  # 3.1.1's "unacceptable protocol version", 5's "unsupported protocol version"


async def publish_in_loop(client: Any, name: str, payload: bytes, *, qos: int) -> None:
    """``client.publish`` for a periodic loop: re-raise a cancellation that got lost.

    aiomqtt waits for the publish with ``asyncio.wait_for``, which on Python 3.11 returns the
    result instead of raising when the task is cancelled in the same instant the publish
    completes; a loop would then run on and the daemon's TaskGroup wait for it forever.
    """
    await client.publish(name, payload, qos=qos)
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def aiomqtt_error(message: str) -> Exception:
    """An aiomqtt.MqttError, so that the connection loop treats it as a lost connection."""
    import aiomqtt

    return aiomqtt.MqttError(message)


def stamp_arrivals() -> None:
    """Give every message aiomqtt yields paho's receipt time as ``received_at`` (``time.monotonic``).

    aiomqtt queues messages without a timestamp, so a deadline counted from when the node
    takes a message off that queue would hide the time it waited there (under a flood, seconds).
    paho stamps each message when it reads it off the socket; this copies the stamp over.
    Idempotent.
    """
    import aiomqtt

    if getattr(aiomqtt.Message, "_agentd_stamped", False):
        return
    original = aiomqtt.Message._from_paho_message.__func__  # type: ignore[attr-defined]

    def from_paho(cls: Any, message: Any) -> Any:
        m = original(cls, message)
        m.received_at = message.timestamp or None
        return m

    aiomqtt.Message._from_paho_message = classmethod(from_paho)  # type: ignore[method-assign,assignment]
    aiomqtt.Message._agentd_stamped = True  # type: ignore[attr-defined]


def received_at(message: Any, default: float) -> float:
    """When paho read ``message`` off the socket (see ``stamp_arrivals``), or ``default``."""
    stamp = getattr(message, "received_at", None)
    return float(stamp) if stamp else default
