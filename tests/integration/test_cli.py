"""The CLI as an operator uses it: exit codes, --json, tamper detection, fast --help."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import REPO, cli

EVENTS = [
    {"temperature_c": -20.0, "door_open_s": 2.0, "compressor_a": 5.0},
    {"temperature_c": -13.0, "door_open_s": 400.0, "compressor_a": 6.6},
    {"temperature_c": -15.0, "door_open_s": 0.0, "compressor_a": 9.0},
    {"temperature_c": -21.0, "door_open_s": 1.0, "compressor_a": 4.8},
    {"temperature_c": -19.0, "door_open_s": 0.0, "compressor_a": 5.1},
]


def _decide_all(config: Path) -> list[dict]:
    out = []
    for i, e in enumerate(EVENTS):
        r = cli(config, "decide", "freezer_health", "--data", json.dumps(e), "--id", f"e{i}", "--json")
        assert r.returncode == 0, r.stderr
        out.append(json.loads(r.stdout))
    return out


def test_help_is_fast_and_imports_no_runtime() -> None:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "agentd.cli", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and "decide" in r.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    for heavy in ("onnxruntime", "cel", "rich", "llama_cpp", "numpy", "pydantic", "prometheus_client"):
        assert heavy not in imported, f"`agentd --help` imported {heavy}"


def test_config_validate_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "agentd.cli", "config", "validate", str(REPO / "config" / "agentd.yaml")], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    text = (REPO / "config" / "agentd.yaml").read_text().replace("deadline_ms:", "deadline_msx:", 1)
    bad.write_text(text)
    r = subprocess.run([sys.executable, "-m", "agentd.cli", "config", "validate", str(bad)], capture_output=True, text=True, check=False)
    assert r.returncode == 1
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "deadline_msx:" in t)
    assert f"{bad}:{line}" in r.stderr and "deadline_msx" in r.stderr and "unknown key" in r.stderr
    cel_bad = tmp_path / "cel.yaml"
    cel_bad.write_text(text.replace("deadline_msx:", "deadline_ms:").replace("temperature_c >", "temp_c >", 1))
    r = subprocess.run([sys.executable, "-m", "agentd.cli", "config", "validate", str(cel_bad)], capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "unknown field 'temp_c'" in r.stderr and "known:" in r.stderr


def test_decide_explain_and_decisions(node_config: Path) -> None:
    decided = _decide_all(node_config)
    assert [d["event_id"] for d in decided] == [f"e{i}" for i in range(len(EVENTS))]
    r = cli(node_config, "explain", decided[1]["id"])
    assert r.returncode == 0
    for expected in ("inputs", "stage 1", "freezer_anomaly", "action", "audit #"):
        assert expected in r.stdout
    listed = json.loads(cli(node_config, "decisions", "--json", "--limit", "3").stdout)
    assert len(listed) == 3 and listed[0]["event_id"] == "e4"  # newest first
    by_stage = json.loads(cli(node_config, "decisions", "--json", "--stage", "prod").stdout)
    assert by_stage == []  # everything here is canary
    assert cli(node_config, "explain", "no-such-decision").returncode == 1
    r = cli(node_config, "decide", "freezer_health", "--data", '{"temperature_c": "warm"}')
    assert r.returncode == 2 and "temperature_c" in r.stderr


def test_keys_are_private_and_shown_as_base64(node_config: Path) -> None:
    r = cli(node_config, "keys", "init")
    assert r.returncode == 0
    key_file = node_config.parent / "data" / "keys" / "node.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    shown = json.loads(cli(node_config, "keys", "show", "--json").stdout)
    assert shown["node"] == "it-node" and len(shown["public_key"]) == 44
    os.chmod(key_file, 0o644)
    r = cli(node_config, "keys", "show")
    assert r.returncode == 1 and "chmod 600" in r.stderr


def _tamper(config: Path, sql: str) -> subprocess.CompletedProcess[str]:
    db = config.parent / "data" / "agentd.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.executescript(sql)
    conn.close()
    return cli(config, "audit", "verify", "--json")


def test_audit_verify_names_the_first_bad_record(tmp_path: Path, node_config: Path) -> None:
    _decide_all(node_config)
    db = node_config.parent / "data" / "agentd.db"
    pristine = tmp_path / "pristine.db"
    with sqlite3.connect(db) as src, sqlite3.connect(pristine) as dst:
        src.backup(dst)
    assert cli(node_config, "audit", "verify").returncode == 0

    def fresh() -> None:
        with sqlite3.connect(pristine) as src, sqlite3.connect(db) as dst:
            src.backup(dst)

    seqs = [s for (s,) in sqlite3.connect(db).execute("SELECT seq FROM audit ORDER BY seq")]
    target = seqs[3]
    cases = {
        "edit": f"UPDATE audit SET body = replace(body, 'freezer', 'fr33zer') WHERE seq = {target}",
        "delete": f"DELETE FROM audit WHERE seq = {target}",
        "reorder": f"UPDATE audit SET seq = -1 WHERE seq = {target}; UPDATE audit SET seq = {target} WHERE seq = {target + 1};"
                   f" UPDATE audit SET seq = {target + 1} WHERE seq = -1",
        "insert": f"UPDATE audit SET seq = seq + 1000 WHERE seq >= {target}; UPDATE audit SET seq = seq - 999 WHERE seq >= {target + 1000};"
                  f" INSERT INTO audit(seq, ts, kind, ref, body, prev_hash, hash) VALUES ({target}, 1, 'decision', 'x', '{{}}', 'aa', 'bb')",
    }
    for name, sql in cases.items():
        fresh()
        r = _tamper(node_config, sql)
        result = json.loads(r.stdout)
        assert r.returncode == 1, (name, r.stdout)
        assert result["first_bad_seq"] in (target, target + 1), (name, result)
        assert result["problem"], name
    fresh()
    r = _tamper(node_config, "UPDATE decisions SET action = 'shutdown' WHERE event_id = 'e0'")
    assert r.returncode == 1 and "edited" in json.loads(r.stdout)["problem"]
    fresh()
    r = cli(node_config, "audit", "export")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    records = [x for x in lines if x["type"] == "record"]  # since issue 15 the checkpoints covering them come along
    assert [x["seq"] for x in records] == seqs and all(x["hash"] for x in records)
    assert [x["seq"] for x in lines if x["type"] == "checkpoint"]


def test_single_node_demo_runs_and_stops_cleanly(node_config: Path) -> None:
    r = cli(node_config, "demo", "--nodes", "1", "--seconds", "3", "--rate", "20")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "Stopped." in r.stdout
    rows = json.loads(cli(node_config, "decisions", "--json", "--limit", "1000").stdout)
    assert len(rows) >= 10 and {d["origin"] for d in rows} == {"simulator"}
    assert cli(node_config, "audit", "verify").returncode == 0


def test_fleet_demo_gossips_between_three_nodes_and_stops_cleanly(node_config: Path) -> None:
    r = cli(node_config, "demo", "--nodes", "3", "--seconds", "8", "--rate", "10")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "Stopped." in r.stdout
    root = node_config.parent / "data" / "demo"
    for name in ("node-a", "node-b", "node-c"):
        cfg = root / name / "agentd.yaml"
        mine = json.loads(cli(cfg, "decisions", "--json", "--limit", "1000").stdout)
        assert len(mine) >= 10
        peers = {p["node"]: p for p in json.loads(cli(cfg, "peers", "--json").stdout)}
        assert set(peers) == {"node-a", "node-b", "node-c"} - {name}
        assert all(p["decisions"] > 0 for p in peers.values())  # gossip arrived from both peers
        assert cli(cfg, "audit", "verify").returncode == 0
