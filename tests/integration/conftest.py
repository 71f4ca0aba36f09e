"""Fixtures that run the real daemon as a subprocess against a real SQLite file and real onnxruntime.

Readiness is the systemd notify protocol: each daemon gets its own NOTIFY_SOCKET and the
fixture waits for READY=1, as systemd would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.broker import Broker, free_port

REPO = Path(__file__).resolve().parents[2]
MANIFEST = json.loads((REPO / "models" / "freezer_anomaly.json").read_text())


def freezer_config(data_dir: Path, *, mqtt_port: int | None = None, node_id: str = "it-node", **daemon: Any) -> dict[str, Any]:
    """The example skill with the real ONNX model. MQTT points at ``mqtt_port``, by default a
    free port where no broker listens (the node decides offline and queues its outbox)."""
    return {
        "node": {"id": node_id, "fleet": "it", "data_dir": str(data_dir)},
        "lifecycle": {"stage": "canary", "release": "it-1"},
        "mqtt": {"enabled": True, "port": mqtt_port or free_port()},
        "daemon": {"drain_timeout_s": 5, "watchdog_interval_s": 0.2, **daemon},
        "models": [
            {
                "name": "freezer_anomaly",
                "backend": "onnx",
                "path": str(REPO / "models" / MANIFEST["file"]),
                "sha256": MANIFEST["sha256"],
                "inputs": MANIFEST["inputs"],
                "labels": MANIFEST["labels"],
            },
            {"name": "slow", "backend": "delay", "delay_ms": 400, "label": "alert"},
        ],
        "skills": [
            {
                "name": "freezer_health",
                "input": {
                    "temperature_c": {"type": "number", "min": -60, "max": 60},
                    "door_open_s": {"type": "number", "min": 0, "max": 86400},
                    "compressor_a": {"type": "number", "min": 0, "max": 100},
                    "note": {"type": "string", "required": False, "max_length": 500},
                },
                "actions": ["none", "alert", "defrost", "shutdown"],
                "deadline_ms": 200,
                "cascade": [
                    {"model": "freezer_anomaly", "min_confidence": 0.8,
                     "map": {"normal": "none", "door_open": "alert", "icing": "defrost", "failure": "shutdown"}}
                ],
                "rules": [
                    {"name": "dead", "when": "compressor_a < 0.5 && temperature_c > -10.0", "action": "shutdown"},
                    {"name": "door", "when": "door_open_s > 120.0", "action": "alert"},
                    {"name": "default", "action": "none", "default": True},
                ],
                "approval": {"actions": ["shutdown"], "interim": "alert", "timeout_s": 900},
            },
            {
                "name": "slow_skill",
                "input": {"x": {"type": "number"}},
                "actions": ["none", "alert"],
                "deadline_ms": 100,
                "cascade": [{"model": "slow", "min_confidence": 0.5}],
                "rules": [{"name": "default", "action": "none", "default": True}],
            },
        ],
    }


@dataclass
class DaemonProc:
    config_path: Path
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "agentd.sock"

    def start(self, *, timeout: float = 30.0, env: dict[str, str] | None = None) -> float:
        """Start `agentd run`; returns seconds to READY=1."""
        notify_path = self.data_dir.parent / f"notify-{os.getpid()}-{time.monotonic_ns()}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        self.notify.settimeout(0.2)
        self.messages = []
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentd.cli", "run", "--config", str(self.config_path)],
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path), **(env or {})},
            stderr=open(self.data_dir.parent / "daemon.log", "ab"),  # noqa: SIM115 - the child owns it
        )
        self.wait_for("READY=1", timeout=timeout)
        return time.monotonic() - t0

    def wait_for(self, text: str, *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in m for m in self.messages):
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}; log:\n{self.log()}")
            self.drain_notify()
        raise AssertionError(f"no {text!r} from the daemon in {timeout} s; got {self.messages}; log:\n{self.log()}")

    def drain_notify(self) -> None:
        if self.notify is None:
            return
        with contextlib.suppress(TimeoutError):
            self.messages.append(self.notify.recv(4096).decode())

    def log(self) -> str:
        p = self.data_dir.parent / "daemon.log"
        return p.read_text()[-4000:] if p.exists() else ""

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(str(self.socket_path))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        s.close()
        return json.loads(buf)

    def raw(self, payload: bytes) -> bytes:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(str(self.socket_path))
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon refused the request early; its reply is still readable
        buf = b""
        try:
            while chunk := s.recv(65536):
                buf += chunk
        except ConnectionResetError:
            pass
        s.close()
        return buf

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, *, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # dump the daemon's stacks into its log
            time.sleep(0.5)
            print(self.log())
            raise
        if self.notify is not None:
            self.notify.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                while True:
                    self.messages.append(self.notify.recv(4096).decode())
            self.notify.close()
            self.notify = None
        return rc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)


def cli(config: Path, *args: str, input_: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `agentd` CLI."""
    return subprocess.run(
        [sys.executable, "-m", "agentd.cli", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=120, input=input_, check=False,
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(folder=tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def node_config(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(freezer_config(data)))
    return path


@pytest.fixture
def daemon(node_config: Path) -> Iterator[DaemonProc]:
    d = DaemonProc(config_path=node_config, data_dir=node_config.parent / "data")
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop()
