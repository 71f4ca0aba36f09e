"""`agentd demo`: one node deciding simulated freezer telemetry, with a live view."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from agentd import queries
from agentd.daemon import Daemon

if TYPE_CHECKING:
    from agentd.config import LoadedConfig


def _with_simulator(loaded: LoadedConfig, rate: float) -> LoadedConfig:
    from dataclasses import replace

    cfg = loaded.config
    daemon = cfg.daemon.model_copy(
        update={"log_level": "warning", "simulator": cfg.daemon.simulator.model_copy(update={"enabled": True, "rate_per_s": rate})}
    )
    return replace(loaded, config=cfg.model_copy(update={"daemon": daemon}))


def run_demo(loaded: LoadedConfig, *, seconds: float, rate: float) -> None:
    """Run the node with its simulator on and draw its latest decisions until Ctrl-C or ``seconds``."""
    asyncio.run(_demo(_with_simulator(loaded, rate), seconds))


async def _demo(loaded: LoadedConfig, seconds: float) -> None:
    from rich.console import Console
    from rich.live import Live

    daemon = Daemon(config_path=loaded.path, loaded=loaded)
    console = Console()
    console.print(
        f"[bold]agentd demo[/]: node [cyan]{loaded.config.node.id}[/] deciding simulated freezer telemetry"
        f" ({loaded.config.daemon.simulator.rate_per_s:g}/s). Ctrl-C stops."
    )
    runner = asyncio.create_task(daemon.run(), name="demo-daemon")
    started = time.monotonic()
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while not runner.done():
                await asyncio.sleep(0.5)
                if daemon.engine is not None:
                    live.update(await _view(daemon))
                if seconds and time.monotonic() - started >= seconds:
                    daemon._stop.set()
    finally:
        daemon._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    console.print(
        "Stopped. Try: [bold]agentd decisions[/], [bold]agentd explain <id>[/], [bold]agentd audit verify[/]"
        f" (with --config {loaded.path})"
    )


async def _view(daemon: Daemon) -> Any:
    from rich.table import Table

    engine = daemon.engine
    assert engine is not None
    rows = await engine.store.read(lambda c: queries.list_decisions(c, limit=12))
    sources = Counter({k.split(":", 1)[1]: v for k, v in engine.counters.items() if k.startswith("source:")})
    fallbacks = Counter({k.split(":", 1)[1]: v for k, v in engine.counters.items() if k.startswith("fallback:")})
    table = Table(
        title=f"mode {engine.mode} | decisions by source {dict(sources)} | fallback reasons {dict(fallbacks)}",
        title_justify="left",
    )
    for col in ("time", "temp °C", "door s", "comp A", "action", "status", "source", "conf", "fallback", "guard", "ms"):
        table.add_column(col)
    for d in rows:
        i = d["inputs"]
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(d["created_at"])),
            f"{i.get('temperature_c', ''):.1f}" if isinstance(i.get("temperature_c"), float) else "",
            f"{i.get('door_open_s', ''):.0f}" if isinstance(i.get("door_open_s"), float) else "",
            f"{i.get('compressor_a', ''):.1f}" if isinstance(i.get("compressor_a"), float) else "",
            d["action"], d["status"], d["source"],
            "" if d["confidence"] is None else f"{d['confidence']:.2f}",
            d["fallback_reason"] or "", d["guard"] or "", f"{d['latency_ms']:.1f}",
        )
    return table
