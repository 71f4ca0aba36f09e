"""The only module that knows aiomqtt's and paho's internals: manual acks, the paho client
under aiomqtt (PUBACK matching, a forced disconnect), refused-protocol and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)


def paho(client: Any) -> Any:
    """The paho client under an aiomqtt client (aiomqtt 2.x keeps it as ``_client``)."""
    return client._client


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
