"""A private Mosquitto on a free loopback port: the one launcher the tests, the benches and the demo use."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from agentd.errors import MeshError

BASE_CONF = "allow_anonymous true\npersistence false\nset_tcp_nodelay true\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    """The mosquitto broker binary, if installed (Debian puts it in /usr/sbin)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


@dataclass
class Broker:
    """``Broker(folder=...)``: start() / stop(), or use it as a context manager.

    ``extra`` holds more mosquitto.conf lines (default: a deep queue, for load tests);
    ``preexec`` runs in the child before exec (the demo ties the broker's life to its own).
    """

    folder: Path
    port: int = field(default_factory=free_port)
    extra: str | None = None
    preexec: Callable[[], None] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        binary = mosquitto_binary()
        if binary is None:
            raise MeshError("this needs the Mosquitto broker: sudo apt-get install mosquitto mosquitto-clients")
        conf = self.folder / f"mosquitto-{self.port}.conf"
        extra = "max_queued_messages 100000\n" if self.extra is None else self.extra
        conf.write_text(f"listener {self.port} 127.0.0.1\n{BASE_CONF}{extra}")
        with (self.folder / f"mosquitto-{self.port}.log").open("ab") as log:
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log, preexec_fn=self.preexec)  # noqa: PLW1509 - the demo's hook only calls prctl
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise MeshError(f"mosquitto exited {self.proc.returncode}; see {self.folder}/mosquitto-{self.port}.log") from None
                time.sleep(0.05)
        raise MeshError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        """Kill it (as a crash would: the fault tests rely on that; nothing is persisted anyway)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
