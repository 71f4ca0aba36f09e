"""`agentd demo`: a small fleet on this machine (a private Mosquitto, N nodes, simulated events).

Each node is a real `agentd run` child process with its own key, data folder and config
derived from the given one; the nodes trust each other's keys and gossip their signed
decisions through the broker. The live view reads each node's SQLite database.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agentd.devtools.broker import Broker, mosquitto_binary
from agentd.errors import AgentdError
from agentd.state import queries
from agentd.trust.keys import create_key

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig


def _prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # resolved in the parent: the child between fork and exec only makes the call


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the demo dies without cleaning up (Linux prctl PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal) stop the demo like Ctrl-C, so its cleanup runs."""

    def interrupt(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


@dataclass
class DemoNode:
    name: str
    config: Path
    data: Path
    proc: subprocess.Popen[bytes] | None = None


def _node_configs(loaded: LoadedConfig, root: Path, count: int, port: int, rate: float) -> list[DemoNode]:
    base = loaded.config.model_dump(mode="json", exclude_none=True)
    names = [f"node-{chr(ord('a') + i)}" if i < 26 else f"node-{i}" for i in range(count)]
    nodes, keys = [], {}
    for name in names:
        data = root / name
        key, _ = create_key(data)
        keys[name] = key.public_b64
        nodes.append(DemoNode(name=name, config=root / name / "agentd.yaml", data=data))
    for i, node in enumerate(nodes):
        cfg = json.loads(json.dumps(base))
        cfg["node"] = {**cfg["node"], "id": node.name, "data_dir": str(node.data)}
        cfg["mqtt"] = {"enabled": True, "host": "127.0.0.1", "port": port}
        cfg["trust"] = {**cfg.get("trust", {}), "peers": {n: k for n, k in keys.items() if n != node.name}}
        cfg["daemon"] = {
            **cfg.get("daemon", {}), "log_level": "warning", "socket": str(node.data / "agentd.sock"),
            "simulator": {"enabled": True, "rate_per_s": rate, "seed": i + 1},
        }
        cfg.get("metrics", {}).pop("port", None)
        if i > 0:  # one LLM on a small machine is plenty: node-a answers the staff requests
            _drop_llm(cfg)
        node.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return nodes


def _drop_llm(cfg: dict[str, Any]) -> None:
    """Remove llama_cpp models and the cascade stages that use them (the rules decide those skills)."""
    llm = {m["name"] for m in cfg.get("models", []) if m.get("backend") == "llama_cpp"}
    cfg["models"] = [m for m in cfg.get("models", []) if m["name"] not in llm]
    for skill in cfg["skills"]:
        skill["cascade"] = [st for st in skill.get("cascade", []) if st["model"] not in llm]


def _request_skill(loaded: LoadedConfig) -> str | None:
    """The skill that takes free-text staff requests (the LLM's), if the config has one."""
    for skill in loaded.config.skills:
        if "text" in skill.input and skill.cascade:
            return skill.name
    return None


def _send_requests(node: DemoNode, skill: str, stop: threading.Event, every_s: float = 4.0) -> None:
    """Submit a staff request to ``node`` every few seconds (a thread: the LLM takes a while)."""
    from agentd.control.client import request
    from agentd.devtools.labelled import operator_requests

    texts = [e for e, _ in operator_requests(400, seed=int(time.time()))]
    i = 0
    while not stop.wait(every_s):
        with contextlib.suppress(AgentdError, OSError):
            request(node.data / "agentd.sock", {"op": "submit", "skill": skill, "data": texts[i % len(texts)]}, timeout_s=30)
        i += 1


@contextlib.contextmanager
def _fleet(loaded: LoadedConfig, count: int, rate: float, root: Path) -> Iterator[tuple[list[DemoNode], int]]:
    broker_bin = mosquitto_binary()
    if broker_bin is None:
        raise AgentdError(
            "the fleet demo needs Mosquitto: `sudo apt-get install mosquitto` (scripts/demo.sh does it),"
            " or run a single node with `agentd demo --nodes 1`"
        )
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    broker = Broker(folder=root, extra="", preexec=_die_with_parent).start()  # started before any thread
    port = broker.port
    nodes = _node_configs(loaded, root, count, port, rate)
    try:
        for node in nodes:
            node_log = (node.data / "daemon.log").open("ab")
            node.proc = subprocess.Popen(
                [sys.executable, "-m", "agentd.cli", "run", "--config", str(node.config)],
                stdout=subprocess.DEVNULL, stderr=node_log, start_new_session=True,  # Ctrl-C goes to the demo only
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - started before any thread; the hook only calls prctl
            )
        yield nodes, port
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
        broker.stop()


def _snapshot(node: DemoNode, request_skill: str | None = None) -> dict[str, Any]:
    try:
        conn = queries.open_readonly(node.data)
    except AgentdError:
        return {"name": node.name, "up": False}
    try:
        counts = queries.counts(conn)
        peers = queries.list_peers(conn)
        fallbacks = dict(conn.execute(
            "SELECT fallback_reason, COUNT(*) FROM decisions WHERE fallback_reason IS NOT NULL GROUP BY fallback_reason"
        ).fetchall())
        recent = queries.list_decisions(conn, limit=3)
        if request_skill is not None:  # the rare LLM decision would scroll away among the freezer ones
            latest = queries.list_decisions(conn, queries.DecisionFilter(skill=request_skill), limit=1)
            recent = latest + [d for d in recent if d["id"] not in {x["id"] for x in latest}]
    except Exception:  # a node may be mid-migration at start-up
        return {"name": node.name, "up": False}
    finally:
        conn.close()
    return {
        "name": node.name, "up": node.proc is not None and node.proc.poll() is None, **counts,
        "fallbacks": fallbacks, "recent": recent,
        "gossip_in": sum(p["decisions"] for p in peers),
        "peers_online": sum(1 for p in peers if p["status"] == "online"),
    }


_SHORT = {"low_confidence": "lowconf", "invalid_output": "invalid", "model_error": "error", "model_missing": "missing",
          "circuit_open": "circuit", "overloaded": "overload", "mode_rules_only": "rules-only", "timeout": "timeout"}


def _view(snaps: list[dict[str, Any]], port: int) -> Any:
    from rich import box
    from rich.console import Group
    from rich.table import Table

    from agentd.devtools.demo import action_label

    nodes = Table(title=f"fleet of {len(snaps)} on a private Mosquitto (127.0.0.1:{port})", title_justify="left", box=box.SIMPLE_HEAD)
    nodes.add_column("node", no_wrap=True, min_width=6)
    for col in ("decided", "model/rules", "fallbacks", "pending", "gossip in", "peers"):
        nodes.add_column(col, overflow="fold")
    feed = Table(title="latest decisions", title_justify="left", box=box.SIMPLE_HEAD)
    # fixed widths that fit 80 columns: the node and the action must never be cut
    feed.add_column("node", no_wrap=True, min_width=6)
    feed.add_column("input (°C / door s / A, or request)", no_wrap=True, overflow="ellipsis", max_width=30)
    feed.add_column("action", no_wrap=True, min_width=8)
    feed.add_column("source", no_wrap=True, min_width=6)
    feed.add_column("why", overflow="fold")
    for s in snaps:
        if "decisions" not in s:
            nodes.add_row(s["name"], "starting…", "", "", "", "", "")
            continue
        by = f"{s['by_source'].get('model', 0)}/{s['by_source'].get('rules', 0)}"
        fb = " ".join(f"{_SHORT.get(k, k)}:{v}" for k, v in sorted(s["fallbacks"].items()))
        nodes.add_row(s["name"], str(s["decisions"]), by, fb, str(s["pending_approvals"]), str(s["gossip_in"]), str(s["peers_online"]))
        for d in s["recent"][:3]:
            i = d["inputs"]
            if "text" in i:
                reading = repr(str(i["text"])[:28])
            else:
                reading = " / ".join(f"{i.get(k, 0):.{p}f}" for k, p in (("temperature_c", 1), ("door_open_s", 0), ("compressor_a", 1)))
            feed.add_row(s["name"], reading, action_label(d), d["source"], (d["guard"] and f"guard {d['guard']}") or d["fallback_reason"] or "")
    return Group(nodes, feed)


def run_fleet_demo(loaded: LoadedConfig, *, nodes: int, seconds: float, rate: float) -> None:
    """Run the fleet until Ctrl-C or ``seconds``, drawing a live view; then stop everything."""
    from rich.console import Console
    from rich.live import Live

    root = loaded.config.data_dir / "demo"
    _stop_on_signals()
    console = Console()
    console.print(f"[bold]agentd demo[/]: {nodes} nodes gossiping signed decisions, {rate:g} simulated events/s each. Ctrl-C stops.")
    interrupted = False
    with _fleet(loaded, nodes, rate, root) as (fleet, port):
        started = time.monotonic()
        stop = threading.Event()
        request_skill = _request_skill(loaded)
        if request_skill is not None:
            console.print(f"{fleet[0].name} also gets a staff request for {request_skill} every 4 s (its LLM, or its keyword rules).")
            threading.Thread(target=_send_requests, args=(fleet[0], request_skill, stop), daemon=True).start()
        try:
            with Live(console=console, refresh_per_second=2) as live:
                while not seconds or time.monotonic() - started < seconds:
                    live.update(_view([_snapshot(n, request_skill if k == 0 else None) for k, n in enumerate(fleet)], port))
                    if any(n.proc is not None and n.proc.poll() is not None for n in fleet):
                        raise AgentdError(f"a node exited; see {root}/<node>/daemon.log")
                    time.sleep(0.5)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            stop.set()
    exe = _display_path(Path(sys.argv[0])) if Path(sys.argv[0]).name == "agentd" else "agentd"
    cfg = _display_path(fleet[0].config)
    console.print(
        ("\nInterrupted" if interrupted else "\nStopped") + f". The fleet's data is in {_display_path(root)}; try:\n"
        f"  export AGENTD_CONFIG={cfg}\n  {exe} decisions\n  {exe} peers\n  {exe} fleet-state\n  {exe} audit verify",
        highlight=False,
    )


def _display_path(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
