"""Action handlers: a log line, or a program run with the decision JSON on stdin."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    from agentd.config.schema import SkillConfig

log = logging.getLogger(__name__)


class HandlerMixin:
    """The engine's handlers (a part of ``Engine``; the attributes are the engine's)."""

    _run_handlers: bool

    if TYPE_CHECKING:
        def _spawn(self, coro: Any, *, name: str) -> None: ...

    def _run_handlers_for(self, skill: SkillConfig, record: dict[str, Any]) -> None:
        if not self._run_handlers:
            return
        for h in skill.handlers:
            if h.action != record["action"]:
                continue
            if h.type == "log":
                log.info("action %s for event %s (decision %s)", record["action"], record["event_id"], record["id"])
            else:
                self._spawn(_exec_handler(h.argv, h.timeout_s, record), name=f"handler-{record['id'][:8]}")


async def _exec_handler(argv: list[str], timeout_s: float, record: dict[str, Any]) -> None:
    """Run an exec handler with the decision JSON on stdin, bounded by ``timeout_s``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        log.error("handler %s could not start: %s", argv[0], exc)
        return
    try:
        async with asyncio.timeout(timeout_s):
            _, err = await proc.communicate(json.dumps(record).encode())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.error("handler %s timed out after %.1f s (killed)", argv[0], timeout_s)
        return
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()  # never leave an orphan behind on shutdown
        raise
    if proc.returncode:
        log.error("handler %s exited %s: %s", argv[0], proc.returncode, err[-300:].decode(errors="replace"))
