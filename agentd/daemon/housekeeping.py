"""The daemon's periodic work: the systemd watchdog, refusal summaries, signed checkpoints, retention.

Each function is one long-lived task that the ``Daemon`` runs in its TaskGroup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from agentd.errors import AgentdError

if TYPE_CHECKING:
    from agentd.daemon.node import Daemon

log = logging.getLogger(__name__)


async def watchdog(daemon: Daemon) -> None:
    """Pet systemd's watchdog (``WATCHDOG=1``) while the event loop keeps turning; log lags."""
    interval = daemon.loaded.config.daemon.watchdog_interval_s
    if daemon.notifier.watchdog_s:
        interval = min(interval, daemon.notifier.watchdog_s / 2)
    while True:
        t = time.monotonic()
        await asyncio.sleep(interval)
        lag = time.monotonic() - t - interval
        # Only a loop that keeps turning pets the watchdog; a blocked loop lets systemd restart us.
        if lag < interval:
            daemon.notifier.send("WATCHDOG=1")
        else:
            log.warning("event loop lagged %.3f s", lag)


async def housekeeping(daemon: Daemon) -> None:
    """Audit refusal summaries, sign checkpoints and apply retention on their intervals; update the status line."""
    st = daemon.loaded.config.state
    next_prune = time.monotonic() + 5.0
    next_checkpoint = time.monotonic() + st.checkpoint_interval_s
    next_summary = time.monotonic() + daemon.loaded.config.mesh.refusal_summary_s
    while True:
        await asyncio.sleep(min(st.checkpoint_interval_s, 5.0))
        await daemon.accepting()  # not while a reload swaps the engine
        engine = daemon.engine
        if engine is None:
            continue
        try:
            if time.monotonic() >= next_summary:
                next_summary = time.monotonic() + daemon.loaded.config.mesh.refusal_summary_s
                await daemon.audit_refusals()
            if time.monotonic() >= next_checkpoint:
                await engine.store.checkpoint()
                next_checkpoint = time.monotonic() + st.checkpoint_interval_s
            if time.monotonic() >= next_prune:
                r = st.retention
                result = await engine.store.prune(
                    max_age_s=r.max_age_days * 86400, max_db_bytes=int(r.max_db_mb * 2**20),
                    outbox_max_rows=r.outbox_max_rows, min_keep_s=r.min_keep_hours * 3600,
                )
                if any(result.values()):
                    log.info("retention: %s", result)
                next_prune = time.monotonic() + r.interval_s
            decided = sum(v for k, v in engine.counters.items() if k.startswith("source:"))
            daemon.notifier.send(f"STATUS=deciding; mode {engine.mode}; {decided} decisions")
        except AgentdError as exc:
            log.error("housekeeping failed: %s", exc)
