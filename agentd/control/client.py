"""A client for the daemon's local socket (newline-delimited JSON)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from agentd.errors import AgentdError, InputError, MeshError, NotFound, Unreachable


def request(path: Path, req: dict[str, Any], *, timeout_s: float = 30.0) -> Any:
    """Send one request; the result, or the daemon's error raised with its exit code."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise Unreachable(f"daemon unreachable at {path}: is `agentd run` (or the agentd service) running?") from exc
    except OSError as exc:
        sock.close()
        raise Unreachable(f"daemon unreachable at {path}: {exc.strerror}") from exc
    try:
        sock.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError as exc:
        raise MeshError(f"daemon did not answer within {timeout_s:.0f} s") from exc
    finally:
        sock.close()
    try:
        reply = json.loads(buf)
    except json.JSONDecodeError as exc:
        raise MeshError("daemon sent a malformed reply") from exc
    if reply.get("ok"):
        return reply.get("result")
    code = reply.get("code", 1)
    cls: type[AgentdError] = InputError if code == 2 else NotFound if code == 1 else AgentdError
    raise cls(reply.get("error", "unknown error"))
