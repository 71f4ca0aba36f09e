"""`agentd demo --nodes 1`: one node, no broker, deciding simulated freezer telemetry, with a live view."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.daemon.node import Daemon
from agentd.state import queries

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig


def _with_simulator(loaded: LoadedConfig, rate: float) -> LoadedConfig:
    from dataclasses import replace

    cfg = loaded.config
    # log lines would tear through the live view; errors only (the log is in the audit trail anyway)
    daemon = cfg.daemon.model_copy(
        update={"log_level": "error", "simulator": cfg.daemon.simulator.model_copy(update={"enabled": True, "rate_per_s": rate})}
    )
    mqtt = cfg.mqtt.model_copy(update={"enabled": False})  # one node alone: no broker
    return replace(loaded, config=cfg.model_copy(update={"daemon": daemon, "mqtt": mqtt}))


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
            while not runner.done() and not daemon.stopping:
                await asyncio.sleep(0.5)
                if seconds and time.monotonic() - started >= seconds:
                    break
                if daemon.engine is not None and not daemon.stopping:
                    live.update(await _view(daemon))
    finally:
        daemon.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    exe = sys.argv[0] if Path(sys.argv[0]).name == "agentd" else "agentd"
    console.print(
        f"\nStopped. Try: [bold]{exe} decisions[/], [bold]{exe} explain <id>[/], [bold]{exe} audit verify[/]"
        f" (with --config {loaded.path})",
        highlight=False,
    )


async def _view(daemon: Daemon) -> Any:
    from rich import box
    from rich.table import Table

    engine = daemon.engine
    assert engine is not None
    rows = await engine.store.read(lambda c: queries.list_decisions(c, limit=12))
    sources = Counter({k.split(":", 1)[1]: v for k, v in engine.counters.items() if k.startswith("source:")})
    fallbacks = Counter({k.split(":", 1)[1]: v for k, v in engine.counters.items() if k.startswith("fallback:")})
    table = Table(
        title=f"mode {engine.mode} | by source {dict(sources)} | fallbacks {dict(fallbacks)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    for col in ("time", "°C / door s / A", "action", "source", "conf", "why"):
        table.add_column(col, no_wrap=True)
    for d in rows:
        i = d["inputs"]
        reading = f"{_num(i.get('temperature_c'), 1)} / {_num(i.get('door_open_s'), 0)} / {_num(i.get('compressor_a'), 1)}"
        why = d["fallback_reason"] or ""
        if d.get("guard"):
            why = f"guard {d['guard']}"
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(d["created_at"])), reading, action_label(d), d["source"],
            "" if d["confidence"] is None else f"{d['confidence']:.2f}", why,
        )
    return table


def _num(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else ""


def action_label(d: dict[str, Any]) -> str:
    """The action in force, and the one waiting for approval: ``alert (shutdown?)``."""
    if d["status"] == "pending_approval" and d.get("approval"):
        return f"{d['action']} ({d['approval']['requested_action']}?)"
    return str(d["action"])
