"""The local socket API (``agentd.sock``): one JSON request per line, one JSON reply per line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.control.registry import LOCAL_OPS
from agentd.errors import AgentdError, InputError
from agentd.state.labels import MAX_BY
from agentd.trust.untrusted import parse_json

if TYPE_CHECKING:
    from agentd.daemon.node import Daemon

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 1024 * 1024
MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 30.0  # a request line must arrive within this; a long `submit` reply is not bounded by it


class SocketApi:
    """Serves the CLI's requests for one node."""

    def __init__(self, node: Daemon) -> None:
        self._node = node
        self._open = 0  # connections being served

    async def start(self, path: Path) -> asyncio.AbstractServer:  # the data-dir lock makes the unlink safe
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # noqa: ASYNC240 - a stale socket from a crash, at start-up
        server = await asyncio.start_unix_server(self._serve, path=str(path), limit=MAX_REQUEST_BYTES)
        os.chmod(path, 0o660)
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:  # a local flood of idle connections must not use up the daemon's files
            writer.close()
            return
        self._open += 1
        peer = peer_user(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT_S):
                        line = await reader.readline()
                except TimeoutError:
                    return  # a client that sends nothing holds no connection for long
                except (ValueError, asyncio.LimitOverrunError):
                    await _reply(writer, {"ok": False, "code": 2, "error": f"request over {MAX_REQUEST_BYTES} bytes"})
                    return
                if not line:
                    return
                received = time.monotonic()
                await _reply(writer, await self._handle(line, received, peer))
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._open -= 1
            writer.close()

    async def _handle(self, line: bytes, received: float, peer: str | None = None) -> dict[str, Any]:
        try:
            req = parse_json(line, max_bytes=MAX_REQUEST_BYTES, what="request")
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise InputError('a request is a JSON object with an "op" field')
            result = await self._dispatch(req, received, peer)
            return {"ok": True, "result": result}
        except AgentdError as exc:
            return {"ok": False, "code": exc.exit_code, "error": str(exc)}
        except Exception as exc:  # a bug must not take the daemon down; log it with its traceback
            log.exception("request failed")
            return {"ok": False, "code": 1, "error": f"internal error: {type(exc).__name__}: {exc}"}

    async def _dispatch(self, req: dict[str, Any], received: float, peer: str | None) -> Any:
        op = req["op"]
        if op not in LOCAL_OPS:
            raise InputError(f"unknown op {op!r} (known: {', '.join(LOCAL_OPS)})")
        claimed = req.get("by") or "local-cli"
        if not isinstance(claimed, str):
            raise InputError('"by" must be a string')
        return await self._node.commands.run(op, req, by=who(claimed, peer), via="socket", received=received)


async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n")
    await writer.drain()


def peer_user(sock: socket.socket | None) -> str | None:
    """Who is on the other end of a Unix socket, from the kernel (SO_PEERCRED): ``local:NAME(uid=N)``."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return None
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "?"
    return f"local:{name}(uid={uid})"


def who(claimed: str, peer: str | None) -> str:
    """What an action is recorded as done by: the kernel's word for the caller, with any name it claimed.

    A caller can write any ``--by``; it is kept as a label beside the uid, never instead of it.
    """
    if peer is None:
        return claimed
    if claimed in ("local-cli", peer) or peer.startswith(f"{claimed}("):
        return peer
    claimed = claimed.replace(" via ", " / ")  # the one " via " is the kernel's: a claim cannot add another
    room = MAX_BY - len(peer) - len(" via ")  # a long claim is cut, never the kernel's part
    return f"{claimed[:room]} via {peer}" if room > 0 else peer
