"""The daemon: event loop, named tasks in one TaskGroup, signals, systemd notify, local socket API."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import fcntl
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, TextIO

from agentd import __version__
from agentd.config.loader import LoadedConfig, load_config
from agentd.daemon import housekeeping, logs
from agentd.daemon.commands import NodeCommands
from agentd.daemon.fleet_commands import FleetCommands
from agentd.daemon.fleet_state import FleetState
from agentd.daemon.memory import settle_heap
from agentd.daemon.metrics import NodeMetrics
from agentd.daemon.notify import Notifier
from agentd.daemon.socket_api import SocketApi
from agentd.daemon.sources import event_for
from agentd.decision.engine import Engine
from agentd.decision.rules import compile_all
from agentd.errors import AgentdError, ConfigError, Rejected, StateError
from agentd.mesh.link import MeshLink
from agentd.mesh.refusals import RefusalTally
from agentd.mesh.wire import decision_wire
from agentd.stages.pool import ModelPool
from agentd.state import queries
from agentd.state.store import Store, open_store, store_settings
from agentd.trust.audit import SEALS_NEXT
from agentd.trust.hlc import Clock
from agentd.trust.keys import create_key

log = logging.getLogger(__name__)


class Daemon:
    """Runs one node until SIGTERM/SIGINT; SIGHUP reloads the config."""

    def __init__(self, *, config_path: Path, loaded: LoadedConfig) -> None:
        self.config_path = config_path
        self.loaded = loaded
        self.notifier = Notifier()
        self.engine: Engine | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._gate = asyncio.Event()  # set while the engine accepts events
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.started_at = time.time()
        self._tg: asyncio.TaskGroup | None = None
        self._reload_lock = asyncio.Lock()
        self.refusals = RefusalTally()  # every refused input, by path and reason; audited as summaries
        self._room = asyncio.Event()  # set when an event in flight finishes (back-pressure for MQTT)
        self.clock = Clock()
        self.link: MeshLink | None = None
        self.metrics: NodeMetrics | None = None
        # Long-lived resources: they outlive a reload, which only swaps the engine over them.
        self.store: Store | None = None
        self.store_opened_at: float | None = None
        self.pool = ModelPool()
        self.commands = NodeCommands(self)  # one set of handlers for the socket and the fleet path
        self.fleet_state = FleetState(self)  # fleet-state writes of operators (commands) and peers (gossip)
        self._lock: TextIO | None = None

    @property
    def inflight(self) -> int:
        """Events being decided now."""
        return self._inflight

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the daemon to drain and stop (as SIGTERM does)."""
        self._stop.set()

    # -- main ----------------------------------------------------------------

    async def run(self) -> None:
        t0 = time.monotonic()
        cfg = self.loaded.config
        self._setup_logging()
        self._lock = lock_data_dir(cfg.data_dir)  # held until the process exits
        key, created = await asyncio.to_thread(create_key, cfg.data_dir)
        if cfg.metrics.enabled:
            self.metrics = NodeMetrics(cfg=cfg, config_sha256=self.loaded.sha256, live=lambda: (self.engine, self.link))
            self.metrics.serve()
        self.engine = await self._open_engine(self.loaded, key)
        if created:
            await self.engine.store.audit("key_created", {"public_key": key.public_b64})
        await self.engine.store.audit("start", {"version": __version__, "config_sha256": self.loaded.sha256, "pid": os.getpid()})
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGTERM, self._stop.set), (signal.SIGINT, self._stop.set), (signal.SIGHUP, self._reload.set)):
            loop.add_signal_handler(sig, handler)
        server = await SocketApi(self).start(cfg.socket_path)
        self._gate.set()
        settle_heap()  # the loaded engine frozen out of the collector's passes; what loading freed given back
        startup = time.monotonic() - t0
        self.notifier.send("READY=1", f"STATUS=deciding; mode {self.engine.mode}; {len(cfg.skills)} skill(s)")
        log.info("ready in %.3f s; socket %s", startup, cfg.socket_path, extra={"fields": {"startup_s": round(startup, 3)}})
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(housekeeping.watchdog(self), name="watchdog")
                tg.create_task(housekeeping.housekeeping(self), name="housekeeping")
                tg.create_task(self._reloader(), name="reloader")
                tg.create_task(self._simulator(), name="simulator")
                if cfg.mqtt.enabled:
                    peers = await self.current_engine().store.read(queries.list_peers)
                    self.link = MeshLink(
                        cfg=cfg, key=key, clock=self.clock, store=lambda: self.current_engine().store,
                        submit=self._mqtt_submit,
                        on_peer_decision=lambda node, body: self.current_engine().fleet.add_decision(body["action"], float(body["created_at"])),
                        learned_keys={p["node"]: p["public_key"] for p in peers if p["learned"] and p["public_key"]},
                        on_command=FleetCommands(self).handle, on_state=self.fleet_state.peer_write, refusals=self.refusals,
                    )
                    self.link.metrics_source = self.metrics.snapshot_async if self.metrics else None
                    tg.create_task(self.link.run(), name="mqtt-link")
                await self._stop.wait()
                self.notifier.send("STOPPING=1", "STATUS=draining")
                log.info("stopping: draining in-flight decisions and the outbox")
                await self._drain()
                raise _Shutdown
        except* _Shutdown:
            pass
        finally:
            server.close()
            self._gate.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.loaded.config.daemon.drain_timeout_s):
                    await self._idle.wait()
                    await self.engine.store.flush()
            await self.engine.__aexit__(None, None, None)
            await self.pool.close()
            with contextlib.suppress(Exception):  # the last record of the session: nothing is written after it
                await self.audit_refusals()
                # sealed (a checkpoint at it), and promising that the next session opens with a sealed record
                await self.engine.store.audit("stop", {"reason": "signal", "inflight": self._inflight, SEALS_NEXT: True})
            await self._close_store()
            if self.link is not None:
                await self.link.close()
            if self.metrics is not None:
                self.metrics.close()
            with contextlib.suppress(OSError):
                cfg.socket_path.unlink()
            self.notifier.close()
            log.info("stopped")

    async def audit_refusals(self) -> None:
        """One audit record per path and reason refused since the last call (a flood costs a few records)."""
        for summary in self.refusals.take():
            await self.current_engine().store.audit("input_refused", summary)

    async def accepting(self) -> None:
        """Wait while a reload swaps the engine (and until the node is up)."""
        await self._gate.wait()

    def current_engine(self) -> Engine:
        """The engine over the current config (it changes on every reload)."""
        assert self.engine is not None
        return self.engine

    async def _mqtt_submit(self, skill: str, data: Any, event_id: str | None, received: float) -> dict[str, Any]:
        # Busy is back-pressure here: wait for room (the link reads no further meanwhile), never drop.
        return await self.submit(skill, data, event_id, origin="mqtt", received=received, wait=True)

    async def _drain(self) -> None:
        """Let in-flight decisions finish and the outbox empty, for at most drain_timeout_s."""
        self._gate.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.loaded.config.daemon.drain_timeout_s):
                await self._idle.wait()
                while self.link is not None and self.link.connected:
                    depth = await self.current_engine().store.read(lambda c: c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
                    if depth == 0:
                        break
                    await asyncio.sleep(0.05)

    def _setup_logging(self) -> None:
        cfg = self.loaded.config
        logs.setup(
            cfg.daemon.log_level,
            node=cfg.node.id,
            stage=cfg.lifecycle.stage,
            release=cfg.lifecycle.release,
            config_sha256=self.loaded.sha256[:12],
        )

    async def _open_engine(self, loaded: LoadedConfig, key: Any) -> Engine:
        """An engine over ``loaded`` on the node's store and model pool (opening the store if it is not)."""
        if self.store is None:
            store = open_store(loaded, key)
            await store.__aenter__()
            self.store, self.store_opened_at = store, time.time()
        engine = Engine(loaded=loaded, key=key, clock=self.clock, store=self.store, pool=self.pool,
                        outbound=decision_wire(loaded.config, key), on_decision=self.metrics.observe if self.metrics else None)
        await engine.__aenter__()
        await self.pool.retain([loaded.config.model(n) for n in engine.stages if engine.stages[n].available])
        return engine

    async def _close_store(self) -> None:
        if self.store is not None:
            store, self.store = self.store, None
            await store.__aexit__(None, None, None)

    # -- background tasks -----------------------------------------------------

    async def _reloader(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self.reload()

    async def reload(self) -> dict[str, Any]:
        """Validate the config file; if good, swap the engine; if not, keep the old one."""
        async with self._reload_lock:  # SIGHUP and the socket's reload must not overlap
            return await self._reload_locked()

    async def _reload_locked(self) -> dict[str, Any]:
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        old = self.loaded
        assert self.engine is not None
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
            compile_all(new)
            if new.config.node.data_dir != old.config.node.data_dir:
                raise ConfigError("node.data_dir cannot change on reload; restart the daemon instead")
        except AgentdError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            await self.engine.store.audit("config_reload_failed", {"error": str(exc)[:2000]})
            self.notifier.send("READY=1", "STATUS=reload refused; old config kept")
            return {"reloaded": False, "error": str(exc)}
        self._gate.clear()
        await self._idle.wait()
        key = self.engine.key
        await self.engine.__aexit__(None, None, None)
        if store_settings(new) != store_settings(old):  # e.g. state.synchronous: the store is reopened
            await self._close_store()
        await self.pool.retain(list(new.config.models))  # a changed model's old runtime goes before the new one loads
        try:
            self.engine = await self._open_engine(new, key)
            self.loaded = new
        except AgentdError as exc:
            log.error("new config failed to start, rolling back: %s", exc)
            if store_settings(new) != store_settings(old):
                await self._close_store()
            self.engine = await self._open_engine(old, key)
            await self.engine.store.audit("config_reload_failed", {"error": str(exc)[:2000]})
            self._gate.set()
            return {"reloaded": False, "error": str(exc)}
        self._setup_logging()
        if self.link is not None:
            self.link.update_trust(new.config.trust.peers)  # the MQTT session itself keeps its settings until a restart
        await self.engine.store.audit("config_reload", {"from": old.sha256, "to": new.sha256})
        settle_heap()
        self._gate.set()
        self.notifier.send("READY=1", "STATUS=config reloaded")
        log.info("config reloaded (%s)", new.sha256[:12])
        return {"reloaded": True, "config_sha256": new.sha256}

    async def _simulator(self) -> None:
        sim = self.loaded.config.daemon.simulator
        if not sim.enabled:
            return
        rng = random.Random(sim.seed)
        skill = self.loaded.config.skill(sim.skill) if sim.skill else self.loaded.config.skills[0]
        period = 1.0 / sim.rate_per_s
        next_at = time.monotonic()
        while True:
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if self._inflight >= self.loaded.config.daemon.max_pending:
                continue
            self._spawn_decide(skill.name, event_for(skill, rng), origin="simulator")

    def _spawn_decide(self, skill: str, data: dict[str, Any], *, origin: str) -> None:
        assert self._tg is not None
        self._tg.create_task(self._decide_logged(skill, data, origin), name="simulated-event")

    async def _decide_logged(self, skill: str, data: dict[str, Any], origin: str) -> None:
        try:
            await self.submit(skill, data, None, origin=origin)
        except AgentdError as exc:
            log.error("%s event refused: %s", origin, exc)

    # -- decisions through the gate ------------------------------------------

    async def submit(
        self, skill: str, data: Any, event_id: str | None, *, origin: str, received: float | None = None, wait: bool = False
    ) -> dict[str, Any]:
        """Decide an event through the current engine, counting it as in flight.

        With ``daemon.max_pending`` events in flight, a caller that can retry (the socket)
        gets ``busy``; with ``wait``, the call waits for room instead.
        """
        received = received if received is not None else time.monotonic()
        while self._inflight >= self.loaded.config.daemon.max_pending:
            if not wait:
                raise Rejected("busy", f"daemon busy: {self._inflight} events in flight (daemon.max_pending); retry later")
            self._room.clear()
            await self._room.wait()
        await self._gate.wait()
        assert self.engine is not None
        self._inflight += 1
        self._idle.clear()
        try:
            return await self.engine.decide(skill, data, event_id=event_id, received=received, origin=origin)
        finally:
            self._inflight -= 1
            self._room.set()
            if self._inflight == 0:
                self._idle.set()


class _Shutdown(Exception):
    pass


def lock_data_dir(data_dir: Path) -> TextIO:
    """Take the data folder's exclusive lock (``agentd.lock``), or StateError naming the holder.

    Two daemons on one folder would steal each other's socket and MQTT session; the
    kernel drops the lock when the process dies, so a crash leaves nothing to clean up.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fh = open(data_dir / "agentd.lock", "a+")  # noqa: SIM115 - held open for the process's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise StateError(
            f"another agentd (pid {holder}) is running on {data_dir}; stop it first (e.g. systemctl stop agentd),"
            " or give this one its own node.data_dir"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def run_daemon(config_path: Path) -> None:
    """`agentd run`: load and validate the config, then run until stopped."""
    loaded = load_config(config_path)
    compile_all(loaded)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` dumps every stack to the journal
    asyncio.run(Daemon(config_path=config_path, loaded=loaded).run())
