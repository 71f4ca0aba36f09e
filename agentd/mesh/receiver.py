"""The receive loop of one MQTT session: each inbound message to its handler, and its acknowledgement.

An event is acknowledged only after its decision is committed (paho's manual acks), so a
crash between receipt and commit means the broker sends it again, and the event id makes
that a repeat, not a second decision. Poison (refused input, or a bug met in a handler) is
acknowledged and counted, so that the broker never redelivers it. At most
``min(mqtt.receive_maximum, daemon.max_pending)`` events are in hand at once (past that the
events' socket is not read), and at most ``daemon.max_pending`` other messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agentd.errors import AgentdError, InputError, StateError
from agentd.mesh.inbound import Router, parse_event
from agentd.mesh.transport import ReadPause, ack, aiomqtt_error, on_message, received_at, set_on_message

if TYPE_CHECKING:
    from agentd.config.schema import Config
    from agentd.mesh.gossip import Gossip
    from agentd.mesh.refusals import RefusalTally

log = logging.getLogger(__name__)
Submit = Callable[[str, Any, "str | None", float], Awaitable[dict[str, Any]]]


class _Failed(InputError):
    """An event the engine could not decide for a reason of its own (counted as ``failed``)."""

    reason = "failed"

    def __init__(self, exc: AgentdError) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")


class Receiver:
    """Routes a session's inbound messages: events to ``submit``, commands to ``on_command``, peers' to ``gossip``."""

    def __init__(
        self,
        *,
        cfg: Config,
        submit: Submit,
        gossip: Gossip,
        counters: dict[str, int],
        refusals: RefusalTally,
        on_command: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        self.cfg = cfg
        self._submit, self._gossip, self._on_command = submit, gossip, on_command
        self._counters, self._refusals = counters, refusals
        self._router = Router(fleet=cfg.node.fleet, node=cfg.node.id)
        self._limit = min(cfg.mqtt.receive_maximum, cfg.daemon.max_pending)  # events in hand before the node stops reading
        self._pause = ReadPause(None, self._limit)  # the session's own is made in run()
        self._in_hand = 0  # events taken and not yet acknowledged, this session

    async def run(self, client: Any, tg: asyncio.TaskGroup) -> None:
        """Take the session's messages until it ends; each handler runs as a task in ``tg``.

        Events are taken in paho's own callback, as it reads them off the socket: a task each,
        and no trip through aiomqtt's queue (which costs a task and a loop turn per message, while
        the socket's reader takes in hundreds a turn). Everything else comes through ``client.messages``.
        """
        sem = asyncio.Semaphore(self.cfg.daemon.max_pending)
        self._pause = ReadPause(client, self._limit)
        self._in_hand = 0
        queued = on_message(client)

        def take(c: Any, userdata: Any, message: Any) -> None:
            try:
                name = message.topic
            except UnicodeDecodeError:
                name = None
            route = self._router.route(name) if name is not None else None
            if route is None or route.path != "event":
                queued(c, userdata, message)  # aiomqtt's queue, read below
                return
            try:
                self._take_event(client, tg, message, name, route.name, message.timestamp or time.monotonic())
            except Exception as exc:  # never into paho, which would end the session; unacknowledged, it comes again
                self._handler_failed("event", exc)

        set_on_message(client, take)
        try:
            async for message in client.messages:
                name = str(message.topic)
                route = self._router.route(name)
                if route is not None and route.path == "event":  # read before ``take`` was set (a session's queued events)
                    self._take_event(client, tg, message, name, route.name, received_at(message, time.monotonic()))
                    continue
                if route is not None and route.path == "command" and self._on_command:
                    await sem.acquire()
                    tg.create_task(self._command_task(message.payload, sem), name="mqtt-command")
                elif route is not None and route.path == "peer":
                    await sem.acquire()
                    tg.create_task(self._peer_task(route.name, route.kind, message.payload, sem), name="mqtt-peer")
                ack(client, message)  # fleet state is soft state: anti-entropy repairs what a crash loses
        finally:
            set_on_message(client, queued)
            self._pause.resume()

    def _take_event(self, client: Any, tg: asyncio.TaskGroup, message: Any, name: str, skill: str, received: float) -> None:
        """One event (paho's or aiomqtt's message), refused at once or handed to a task that decides it.

        ``received``: when it was read off the socket; the deadline counts from there.
        """
        try:  # junk is refused here, before it costs a task or a slot
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            parsed = parse_event(payload, max_bytes=self.cfg.mqtt.max_payload_bytes)
        except Exception as exc:  # the handler boundary, as in _one_event
            self._counters["events_refused"] += 1
            if isinstance(exc, InputError):
                self._refusals.refused("event", name, exc)
            else:
                self._handler_failed("event", exc)
            ack(client, message)
            return
        tg.create_task(self._one_event(client, message, name, skill, parsed, received), name="mqtt-event")
        self._in_hand += 1
        if self._in_hand >= self._pause.limit and self._pause.pause():
            self._counters["read_pauses"] += 1

    async def _one_event(self, client: Any, message: Any, name: str, skill: str, parsed: tuple[str | None, Any], received: float) -> None:
        """Decide one MQTT event, then acknowledge it: after its commit, or at once when it is refused.

        Only a commit that failed (disk) leaves the event unacknowledged, and ends the session
        so that the broker redelivers it.
        """
        try:
            try:
                eid, data = parsed
                await self._submit(skill, data, eid, received)
                self._counters["events_in"] += 1
            except InputError as exc:  # acknowledged: a redelivery would be refused again
                self._counters["events_refused"] += 1
                self._refusals.refused("event", name, exc)
            except StateError as exc:
                log.error("mqtt event on %s not committed; reconnecting so that the broker delivers it again: %s", name[:120], exc)
                raise aiomqtt_error(f"an event's commit failed: {exc}") from exc
            except AgentdError as exc:
                self._counters["events_refused"] += 1
                self._refusals.refused("event", name, _Failed(exc))
            except Exception as exc:  # the handler boundary: a bug costs this event, never the session
                self._counters["events_refused"] += 1
                self._handler_failed("event", exc)
            ack(client, message)
        finally:
            self._in_hand -= 1
            if self._pause.paused and self._in_hand <= self._pause.limit // 2:
                self._pause.resume()

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
            await self._gossip.peer_message(node, kind, payload)
        except AgentdError as exc:
            log.error("peer message from %s not stored: %s", node[:64], exc)
        except Exception as exc:  # the handler boundary: a bug costs this message, never the session
            self._handler_failed("peer", exc)
        finally:
            sem.release()

    def _handler_failed(self, path: str, exc: BaseException) -> None:
        """A bug met at a handler's boundary: counted, its traceback logged once a minute; the message was acknowledged."""
        self._counters["handler_errors"] += 1
        if self._refusals.add(path, "internal_error", detail=f"{type(exc).__name__}: {str(exc)[:160]}"):
            log.error("%s message handler failed; the message is acknowledged and counted (further ones this minute are only counted)",
                      path, exc_info=exc)
