"""Soak: `agentd run` fed by its simulator at a steady rate, sampling RSS, open fds and database size over time.

    .venv/bin/python scripts/soak.py --duration 3600 --rate 500 --out /tmp/soak      # the issue's hour
    .venv/bin/python scripts/soak.py --duration 900 --every 15 --out /tmp/soak       # a quarter of an hour

The daemon runs the example config's first skill with an ONNX stage (as `agentd bench` does;
the LLM skill is left out) on a private Mosquitto, so every decision is committed
(`synchronous: full`), audited, signed and published, and its outbox row deleted on PUBACK.
Retention keeps the database bounded: decisions older than ``--keep-s`` seconds go
(``max_age_days``, ``min_keep_hours: 0``, every ``--prune-every-s``), and the script exports
the audit trail with ``--mark`` (as an operator's SIEM export would) so that retention may
prune the audited records too. Each sample (``samples.csv``, and ``soak.json`` with a
summary) holds: seconds since READY, RSS and peak RSS (MB), open fds, threads, database,
WAL and total size (MB), decisions made (the daemon's counters), load average.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentd.config.loader import load_config  # noqa: E402 - after the path set-up
from agentd.devtools.bench import bench_config  # noqa: E402
from agentd.devtools.broker import Broker  # noqa: E402

FIELDS = ("t_s", "rss_mb", "hwm_mb", "fds", "threads", "db_mb", "wal_mb", "total_mb", "decisions", "load1")


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (MB) and threads of a process, from /proc."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
        elif key == "Threads":
            out[key] = int(value)
    return out


def decisions_made(sock: Path) -> int | None:
    """The daemon's count of decisions (its status counters over the local socket), or None."""
    from agentd.control.client import request

    try:
        st = request(sock, {"op": "status"}, timeout_s=5)
    except Exception:  # a sample without the count is still a sample
        return None
    counters = st.get("counters", {}) if isinstance(st, dict) else {}
    return sum(v for k, v in counters.items() if k.startswith("source:"))


def export_audit(cfg_path: Path, after: int, out: Path, log: Path) -> int:
    """`agentd audit export --after N --mark` to a file (then removed); the newest record seq exported.

    A failed export (a busy database on a loaded box) is logged and tried again at the next turn."""
    try:
        subprocess.run([sys.executable, "-m", "agentd.cli", "audit", "export", "--config", str(cfg_path), "--after", str(after),
                        "--mark", "-o", str(out)], check=True, capture_output=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        with log.open("ab") as f:
            f.write(f"soak: audit export after {after} failed: {exc}\n".encode() + (exc.stderr or b"")[-2000:] + b"\n")
        return after
    newest = after
    with out.open() as f:
        for line in f:
            seq = json.loads(line).get("seq")
            if isinstance(seq, int) and seq > newest:
                newest = seq
    out.unlink()
    return newest


def write_config(data_dir: Path, broker_port: int, args: argparse.Namespace) -> Path:
    """The example config's ONNX skill, the simulator at ``args.rate``, bounded retention, a private broker."""
    bl = bench_config(load_config(args.config), data_dir)
    raw = bl.config.model_dump(mode="json", exclude_none=True)
    raw["mqtt"].update({"enabled": True, "host": "127.0.0.1", "port": broker_port})
    raw["daemon"].update({"log_level": "warning", "simulator": {"enabled": True, "skill": raw["skills"][0]["name"],
                                                                "rate_per_s": args.rate, "seed": 7}})
    raw["state"]["retention"].update({"max_age_days": args.keep_s / 86400, "min_keep_hours": 0,
                                      "interval_s": args.prune_every_s, "max_db_mb": args.max_db_mb})
    raw.get("metrics", {}).update({"enabled": False})
    path = data_dir / "soak.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config/agentd.yaml"))
    ap.add_argument("--duration", type=float, default=3600.0, help="seconds after READY (default 3600)")
    ap.add_argument("--rate", type=float, default=500.0, help="events per second (default 500)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--keep-s", type=float, default=120.0, help="retention: decisions older than this go")
    ap.add_argument("--prune-every-s", type=float, default=30.0, help="retention's interval")
    ap.add_argument("--export-every-s", type=float, default=60.0, help="how often the audit trail is exported with --mark")
    ap.add_argument("--max-db-mb", type=float, default=512.0)
    ap.add_argument("--out", type=Path, default=Path("soak-out"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="agentd-soak-"))
    data_dir = tmp / "node"
    data_dir.mkdir()
    broker = Broker(folder=tmp).start()
    proc: subprocess.Popen[bytes] | None = None
    rows: list[dict[str, Any]] = []
    try:
        cfg_path = write_config(data_dir, broker.port, args)
        subprocess.run([sys.executable, "-m", "agentd.cli", "keys", "init", "--config", str(cfg_path)], check=True, capture_output=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp / "notify.sock"))
        notify.settimeout(60)
        with (args.out / "daemon.log").open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "agentd.cli", "run", "--config", str(cfg_path)],
                                    env={**os.environ, "NOTIFY_SOCKET": str(tmp / "notify.sock")}, stderr=log)
        while "READY=1" not in notify.recv(4096).decode():
            pass
        cfg = load_config(cfg_path).config
        db = data_dir / "agentd.db"
        t0 = time.monotonic()
        next_sample, next_export, exported = t0, t0 + args.export_every_s, 0
        with (args.out / "samples.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            while time.monotonic() - t0 <= args.duration:
                if proc.poll() is not None:
                    raise SystemExit(f"the daemon exited {proc.returncode}; see {args.out / 'daemon.log'}")
                now = time.monotonic()
                if now >= next_export:
                    exported = export_audit(cfg_path, exported, tmp / "export.jsonl", args.out / "exports.log")
                    next_export = now + args.export_every_s
                if now >= next_sample:
                    st = proc_status(proc.pid)
                    size = {p: (Path(f"{db}{p}").stat().st_size / 2**20 if Path(f"{db}{p}").exists() else 0.0) for p in ("", "-wal", "-shm")}
                    row = {"t_s": round(now - t0, 1), "rss_mb": round(st["VmRSS"], 1), "hwm_mb": round(st["VmHWM"], 1),
                           "fds": len(os.listdir(f"/proc/{proc.pid}/fd")), "threads": int(st["Threads"]),
                           "db_mb": round(size[""], 1), "wal_mb": round(size["-wal"], 1), "total_mb": round(sum(size.values()), 1),
                           "decisions": decisions_made(cfg.socket_path), "load1": round(os.getloadavg()[0], 2)}
                    rows.append(row)
                    w.writerow(row)
                    f.flush()
                    print(json.dumps(row), flush=True)
                    next_sample += args.every
                time.sleep(max(0.0, min(next_sample, next_export) - time.monotonic()))
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    (args.out / "soak.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary(rows),
                                                    "samples": rows}, indent=1))
    print(json.dumps(summary(rows), indent=1))


def summary(rows: list[dict[str, Any]], skip_s: float = 600.0) -> dict[str, Any]:
    """First and last figures, and RSS after the first ``skip_s`` (the caches filling): min, max, spread."""
    if not rows:
        return {}
    later = [r for r in rows if r["t_s"] >= skip_s] or rows
    rss = [r["rss_mb"] for r in later]
    first, last = rows[0], rows[-1]
    counted = [r for r in rows if r["decisions"] is not None]  # a status request can time out on a loaded box
    made = [r["decisions"] for r in counted]
    span = counted[-1]["t_s"] - counted[0]["t_s"] if counted else 0.0
    return {
        "duration_s": last["t_s"], "samples": len(rows),
        "rss_first_mb": first["rss_mb"], "rss_last_mb": last["rss_mb"], "rss_peak_mb": max(r["hwm_mb"] for r in rows),
        f"rss_after_{int(skip_s)}s_min_mb": min(rss), f"rss_after_{int(skip_s)}s_max_mb": max(rss),
        f"rss_after_{int(skip_s)}s_spread_pct": round(100 * (max(rss) - min(rss)) / min(rss), 1),
        "fds_min": min(r["fds"] for r in rows), "fds_max": max(r["fds"] for r in rows),
        "total_mb_max": max(r["total_mb"] for r in rows), "total_mb_last": last["total_mb"],
        "decisions": made[-1] if made else None,
        "decisions_per_s": round((made[-1] - made[0]) / span, 1) if len(made) > 1 and span > 0 else None,
        "load1_min": min(r["load1"] for r in rows), "load1_max": max(r["load1"] for r in rows),
    }


if __name__ == "__main__":
    main()
