"""The daemon: event loop, named tasks in one TaskGroup, signals, systemd notify, local socket API."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import fcntl
import json
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, TextIO

from agentd import __version__
from agentd.config.loader import LoadedConfig, load_config, parse_config
from agentd.control.commands import ANSWERED, CommandRefused, check_command
from agentd.daemon import logs
from agentd.daemon.metrics import NodeMetrics
from agentd.daemon.notify import Notifier
from agentd.daemon.sources import event_for
from agentd.decision.engine import Engine, open_store, store_settings
from agentd.decision.rules import compile_all
from agentd.errors import AgentdError, ConfigError, InputError, Rejected, StateError
from agentd.files import replace_atomically
from agentd.mesh.link import MeshLink
from agentd.mesh.refusals import RefusalTally
from agentd.mesh.topics import topic
from agentd.mesh.wire import decision_wire
from agentd.stages.pool import ModelPool
from agentd.state import queries
from agentd.state.store import Store
from agentd.trust.envelope import envelope
from agentd.trust.hlc import Clock
from agentd.trust.keys import create_key
from agentd.trust.untrusted import parse_json

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 1024 * 1024


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
        self._lock: TextIO | None = None

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
        server = await self._start_socket(cfg.socket_path)
        self._gate.set()
        startup = time.monotonic() - t0
        self.notifier.send("READY=1", f"STATUS=deciding; mode {self.engine.mode}; {len(cfg.skills)} skill(s)")
        log.info("ready in %.3f s; socket %s", startup, cfg.socket_path, extra={"fields": {"startup_s": round(startup, 3)}})
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._watchdog(), name="watchdog")
                tg.create_task(self._housekeeping(), name="housekeeping")
                tg.create_task(self._reloader(), name="reloader")
                tg.create_task(self._simulator(), name="simulator")
                if cfg.mqtt.enabled:
                    peers = await self._engine().store.read(queries.list_peers)
                    self.link = MeshLink(
                        cfg=cfg, key=key, clock=self.clock, store=lambda: self._engine().store,
                        submit=self._mqtt_submit,
                        on_peer_decision=lambda node, body: self._engine().fleet.add_decision(body["action"], float(body["created_at"])),
                        learned_keys={p["node"]: p["public_key"] for p in peers if p["learned"] and p["public_key"]},
                        on_command=self.handle_command, refusals=self.refusals,
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
            with contextlib.suppress(Exception):
                await self._audit_refusals()
                await self.engine.store.audit("stop", {"reason": "signal", "inflight": self._inflight})
                await self.engine.store.checkpoint()  # a clean stop leaves the whole chain under a signature
            await self.engine.__aexit__(None, None, None)
            await self.pool.close()
            await self._close_store()
            if self.link is not None:
                await self.link.close()
            if self.metrics is not None:
                self.metrics.close()
            with contextlib.suppress(OSError):
                cfg.socket_path.unlink()
            self.notifier.close()
            log.info("stopped")

    async def handle_command(self, payload: bytes) -> None:
        """A signed fleet command from MQTT: check, use its nonce, apply, audit, reply (signed).

        Only a command whose operator signature verifies is audited by itself and answered;
        the rest (unsigned, forged, malformed, replayed, for another node) is counted and
        audited as one summary per reason per interval (``mesh.refusal_summary_s``).
        """
        await self._gate.wait()
        engine = self._engine()
        cfg = self.loaded.config
        try:
            env = check_command(payload, cfg=cfg, now=time.time())
        except CommandRefused as exc:
            if exc.reason in ANSWERED:
                self.refusals.add("command", exc.reason, summarise=False)  # counted; audited by itself below
                await self._command_done(exc.env, False, {"error": str(exc), "reason": exc.reason})
            else:
                self._command_refused(exc, exc.env["node"])
            return
        except Rejected as exc:
            self._command_refused(exc, "")
            return
        body, operator = env["body"], env["node"]
        if not await engine.store.claim_nonce(env["id"], float(body["expires_at"])):
            self._command_refused(Rejected("replayed", f"command id {env['id'][:40]!r} was already used"), operator)
            return
        try:
            result = await self._apply_command(body["cmd"], body.get("args", {}), operator)
            await self._command_done(env, True, {"result": result})
            log.info("fleet command %s (%s) by %s applied", body["cmd"], env["id"][:12], operator)
        except AgentdError as exc:
            await self._command_done(env, False, {"error": str(exc), "reason": "failed"})

    def _command_refused(self, exc: Rejected, operator: str) -> None:
        if self.refusals.add("command", exc.reason, sender=operator, detail=str(exc)):
            log.warning("fleet command refused: %s: %s (further %s refusals are counted and audited as a summary)",
                        exc.reason, exc, exc.reason)

    async def _command_done(self, env: dict[str, Any], ok: bool, outcome: dict[str, Any]) -> None:
        engine = self._engine()
        cfg = self.loaded.config
        body, ident = env["body"], env["id"]
        audit = {"command_id": ident, "cmd": body.get("cmd"), "operator": env["node"], "accepted": ok,
                 "target": body.get("target"), **{k: v for k, v in outcome.items() if k != "result"}}
        reply_body = {"command_id": ident, "cmd": body.get("cmd"), "ok": ok, **outcome}
        payload = envelope("reply", fleet=cfg.node.fleet, node=cfg.node.id, hlc=self.clock.now(), body=reply_body, key=engine.key)
        await engine.store.command_outcome(ident, audit, (topic(cfg.node.fleet, "nodes", cfg.node.id, "reply"), payload))

    async def _audit_refusals(self) -> None:
        """One audit record per path and reason refused since the last call (a flood costs a few records)."""
        for summary in self.refusals.take():
            await self._engine().store.audit("input_refused", summary)

    async def _apply_command(self, cmd: str, args: dict[str, Any], operator: str) -> Any:
        engine = self._engine()
        by = f"operator:{operator}"
        if cmd == "status":
            st = await engine.status()
            return {k: st[k] for k in ("node", "mode", "lifecycle", "models", "decisions", "fallback_rate", "outbox_depth", "pending_approvals")}
        if cmd in ("set_mode", "quarantine"):
            mode = "observe" if cmd == "quarantine" else args.get("mode")
            if not isinstance(mode, str):
                raise InputError('set_mode needs args {"mode": "auto|rules_only|observe|manual"}')
            await engine.set_mode(mode, by=by)
            return {"mode": engine.mode}
        if cmd in ("approve", "reject"):
            did = args.get("id")
            if not isinstance(did, str):
                raise InputError(f'{cmd} needs args {{"id": "<decision id>"}}')
            rec = await (engine.approve(did, by=by) if cmd == "approve" else engine.reject(did, by=by, reason=str(args.get("reason", ""))[:500]))
            return {"id": rec["id"], "status": rec["status"], "action": rec["action"]}
        if cmd == "activate_model":
            skill, index, model = args.get("skill"), args.get("stage", 0), args.get("model")
            if not isinstance(skill, str) or not isinstance(model, str) or isinstance(index, bool) or not isinstance(index, int):
                raise InputError('activate_model needs args {"skill": "<skill>", "stage": <cascade index>, "model": "<declared model>"}')
            return await engine.activate_model(skill, index, model, by=by)
        if cmd == "set_stage":
            stage = args.get("stage")
            if not isinstance(stage, str):
                raise InputError('set_stage needs args {"stage": "dev|canary|prod"}')
            await engine.set_stage(stage, by=by)
            return {"stage": engine.stage}
        if cmd == "reload":
            return await self.reload()
        if cmd == "set_config":
            return await self._set_config(args.get("config"), by)
        raise InputError(f"unknown command {cmd!r}")

    async def _set_config(self, text: Any, by: str) -> dict[str, Any]:
        """Validate a whole config document, write it atomically, reload; roll back if it fails to load."""
        if not isinstance(text, str):
            raise InputError('set_config needs args {"config": "<the whole YAML document>"}')
        path = self.config_path
        new = parse_config(text.encode(), source=f"{path} (set_config)", base=path.resolve().parent)
        compile_all(new)
        if new.config.node.id != self.loaded.config.node.id:
            raise ConfigError("set_config may not change node.id")
        old_text = path.read_bytes()
        replace_atomically(path, text.encode())
        result = await self.reload()
        if not result.get("reloaded"):
            replace_atomically(path, old_text)
            await self.reload()
            raise ConfigError(f"the new config failed to load and was rolled back: {result.get('error')}")
        await self._engine().store.audit("config_set", {"by": by, "config_sha256": new.sha256})
        return result

    def _engine(self) -> Engine:
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
                    depth = await self._engine().store.read(lambda c: c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
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
                        outbound=decision_wire(loaded.config, key))
        engine.on_decision = self.metrics.observe if self.metrics else None
        await engine.__aenter__()
        await self.pool.retain([loaded.config.model(n) for n in engine.stages if engine.stages[n].available])
        return engine

    async def _close_store(self) -> None:
        if self.store is not None:
            store, self.store = self.store, None
            await store.__aexit__(None, None, None)

    # -- background tasks -----------------------------------------------------

    async def _watchdog(self) -> None:
        interval = self.loaded.config.daemon.watchdog_interval_s
        if self.notifier.watchdog_s:
            interval = min(interval, self.notifier.watchdog_s / 2)
        while True:
            t = time.monotonic()
            await asyncio.sleep(interval)
            lag = time.monotonic() - t - interval
            # Only a loop that keeps turning pets the watchdog; a blocked loop lets systemd restart us.
            if lag < interval:
                self.notifier.send("WATCHDOG=1")
            else:
                log.warning("event loop lagged %.3f s", lag)

    async def _housekeeping(self) -> None:
        st = self.loaded.config.state
        next_prune = time.monotonic() + 5.0
        next_checkpoint = time.monotonic() + st.checkpoint_interval_s
        next_summary = time.monotonic() + self.loaded.config.mesh.refusal_summary_s
        while True:
            await asyncio.sleep(min(st.checkpoint_interval_s, 5.0))
            await self._gate.wait()  # not while a reload swaps the engine
            engine = self.engine
            if engine is None:
                continue
            try:
                if time.monotonic() >= next_summary:
                    next_summary = time.monotonic() + self.loaded.config.mesh.refusal_summary_s
                    await self._audit_refusals()
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
                self.notifier.send(f"STATUS=deciding; mode {engine.mode}; {sum(v for k, v in engine.counters.items() if k.startswith('source:'))} decisions")
            except AgentdError as exc:
                log.error("housekeeping failed: %s", exc)

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

    # -- local socket API ----------------------------------------------------

    async def _start_socket(self, path: Path) -> asyncio.AbstractServer:  # the data-dir lock makes the unlink safe
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # noqa: ASYNC240 - a stale socket from a crash, at start-up
        server = await asyncio.start_unix_server(self._serve, path=str(path), limit=MAX_REQUEST_BYTES)
        os.chmod(path, 0o660)
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
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
            return await self.reload()
        await self._gate.wait()  # not while a reload swaps the engine
        engine = self.engine
        assert engine is not None
        if op == "submit":
            skill, data, eid = req.get("skill"), req.get("data"), req.get("id")
            if not isinstance(skill, str):
                raise InputError('submit needs "skill" (a string)')
            if eid is not None and not isinstance(eid, str):
                raise InputError('"id" must be a string')
            return await self.submit(skill, data, eid, origin="socket", received=received)
        if op == "status":
            status = await engine.status()
            status.update({"pid": os.getpid(), "uptime_s": round(time.time() - self.started_at, 1), "inflight": self._inflight, "daemon": "running"})
            m = self.loaded.config.mqtt
            status["broker"] = {"enabled": m.enabled, "host": m.host, "port": m.port, "connected": bool(self.link and self.link.connected)}
            if self.link is not None:
                status["broker"].update(self.link.counters)
                status["broker"]["protocol"] = self.link.protocol  # "5" or "3.1.1" while connected
                status["broker"]["rejected"] = dict(self.link.rejected)
            status["broker"]["refused"] = dict(self.refusals.total)
            status["peers"] = await engine.store.read(queries.list_peers)
            # What a reload kept: the store's open time and each model runtime's load time stay put.
            status["resources"] = {"store_opened_at": self.store_opened_at, "models_loaded_at": self.pool.loaded(),
                                   "model_loads": self.pool.loads}
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

async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n")
    await writer.drain()


def run_daemon(config_path: Path) -> None:
    """`agentd run`: load and validate the config, then run until stopped."""
    loaded = load_config(config_path)
    compile_all(loaded)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` dumps every stack to the journal
    asyncio.run(Daemon(config_path=config_path, loaded=loaded).run())
