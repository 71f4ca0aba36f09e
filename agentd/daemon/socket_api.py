"""The local socket API (``agentd.sock``): one JSON request per line, one JSON reply per line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.errors import AgentdError, InputError
from agentd.state import queries
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
                await _reply(writer, await self._handle(line, received))
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._open -= 1
            writer.close()

    async def _handle(self, line: bytes, received: float) -> dict[str, Any]:
        try:
            req = parse_json(line, max_bytes=MAX_REQUEST_BYTES, what="request")
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise InputError('a request is a JSON object with an "op" field')
            result = await self._dispatch(req, received)
            return {"ok": True, "result": result}
        except AgentdError as exc:
            return {"ok": False, "code": exc.exit_code, "error": str(exc)}
        except Exception as exc:  # a bug must not take the daemon down; log it with its traceback
            log.exception("request failed")
            return {"ok": False, "code": 1, "error": f"internal error: {type(exc).__name__}: {exc}"}

    async def _dispatch(self, req: dict[str, Any], received: float) -> Any:
        op = req["op"]
        if op == "ping":
            return {"pong": True}
        if op == "reload":
            return await self._node.reload()
        await self._node.accepting()  # not while a reload swaps the engine
        engine = self._node.engine
        assert engine is not None
        if op == "submit":
            skill, data, eid = req.get("skill"), req.get("data"), req.get("id")
            if not isinstance(skill, str):
                raise InputError('submit needs "skill" (a string)')
            if eid is not None and not isinstance(eid, str):
                raise InputError('"id" must be a string')
            return await self._node.submit(skill, data, eid, origin="socket", received=received)
        if op == "status":
            status = await engine.status()
            status.update({"pid": os.getpid(), "uptime_s": round(time.time() - self._node.started_at, 1), "inflight": self._node.inflight, "daemon": "running"})
            m = self._node.loaded.config.mqtt
            status["broker"] = {"enabled": m.enabled, "host": m.host, "port": m.port, "connected": bool(self._node.link and self._node.link.connected)}
            if self._node.link is not None:
                status["broker"].update(self._node.link.counters)
                status["broker"]["protocol"] = self._node.link.protocol  # "5" or "3.1.1" while connected
                status["broker"]["rejected"] = dict(self._node.link.rejected)
            status["broker"]["refused"] = dict(self._node.refusals.total)
            status["peers"] = await engine.store.read(queries.list_peers)
            # What a reload kept: the store's open time and each model runtime's load time stay put.
            status["resources"] = {"store_opened_at": self._node.store_opened_at, "models_loaded_at": self._node.pool.loaded(),
                                   "model_loads": self._node.pool.loads}
            return status
        if op in ("approve", "reject"):
            did, by = req.get("id"), req.get("by") or "local-cli"
            if not isinstance(did, str) or not isinstance(by, str):
                raise InputError(f'{op} needs "id" (a decision id)')
            if op == "approve":
                return await engine.approve(did, by=by)
            return await engine.reject(did, by=by, reason=str(req.get("reason") or "")[:500])
        if op == "set_mode":
            mode = req.get("mode")
            if not isinstance(mode, str):
                raise InputError('set_mode needs "mode"')
            await engine.set_mode(mode, by=str(req.get("by") or "local-cli"))
            return {"mode": engine.mode}
        if op == "approvals":
            return await engine.store.read(queries.pending_approvals)
        raise InputError(f"unknown op {op!r} (known: submit, status, approve, reject, set_mode, reload, approvals, ping)")


async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n")
    await writer.drain()
