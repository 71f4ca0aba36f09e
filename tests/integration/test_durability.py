"""Power-cut behaviour: SIGKILL under load, restart, then every acknowledged event has exactly one decision."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time

from tests.integration.conftest import DaemonProc, cli

EVENT = {"temperature_c": -19.0, "door_open_s": 3.0, "compressor_a": 5.2}


def _submitter(daemon: DaemonProc, prefix: str, acked: list[str], stop: threading.Event) -> None:
    """Submit events one connection at a time; record each id whose decision came back."""
    i = 0
    while not stop.is_set():
        eid = f"{prefix}-{i}"
        i += 1
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(str(daemon.socket_path))
            for _ in range(20):  # 20 requests per connection
                s.sendall(json.dumps({"op": "submit", "skill": "freezer_health", "data": EVENT, "id": eid}).encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError
                    buf += chunk
                reply = json.loads(buf)
                if reply["ok"]:
                    acked.append(eid)
                eid = f"{prefix}-{i}"
                i += 1
            s.close()
        except (OSError, ConnectionError, json.JSONDecodeError):
            return  # the daemon died mid-request: that event was never acknowledged


def test_sigkill_under_load_loses_and_duplicates_nothing(daemon: DaemonProc) -> None:
    acked: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_submitter, args=(daemon, f"t{n}", acked, stop)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.kill()  # SIGKILL: no drain, no clean close
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(acked) >= 300, "the load did not get going"

    # Restart on the same database: WAL recovery, then more events, some of them repeats.
    daemon.start()
    again = daemon.request({"op": "submit", "skill": "freezer_health", "data": EVENT, "id": acked[0]})
    assert again["ok"]
    daemon.stop()

    conn = sqlite3.connect(daemon.data_dir / "agentd.db")
    counts = dict(conn.execute("SELECT event_id, COUNT(*) FROM decisions GROUP BY event_id").fetchall())
    missing = [e for e in acked if counts.get(e) != 1]
    assert missing == [], f"acknowledged events without exactly one decision: {missing[:5]}"
    assert all(c == 1 for c in counts.values())
    # every decision has its event and its audit record, every event its decision
    assert conn.execute("SELECT COUNT(*) FROM events WHERE id NOT IN (SELECT event_id FROM decisions)").fetchone()[0] == 0
    assert conn.execute(
        "SELECT COUNT(*) FROM decisions WHERE id NOT IN (SELECT ref FROM audit WHERE kind = 'decision')"
    ).fetchone()[0] == 0
    r = cli(daemon.config_path, "audit", "verify", "--json")
    assert r.returncode == 0, r.stdout
    assert json.loads(r.stdout)["ok"] is True
