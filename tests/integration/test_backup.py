"""`agentd backup` / `agentd restore` on a running node: a real daemon writing decisions
while SQLite's online backup copies its database, then a restore over a stopped node."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from agentd.stages.loading import file_sha256
from agentd.trust.canonical import canonical
from agentd.trust.keys import load_key
from tests.integration.conftest import DaemonProc, cli

EVENT = {"temperature_c": -19.0, "door_open_s": 3.0, "compressor_a": 5.2}


def _submit(daemon: DaemonProc, event_id: str) -> str:
    reply = daemon.request({"op": "submit", "skill": "freezer_health", "data": EVENT, "id": event_id})
    assert reply["ok"], reply
    return str(reply["result"]["id"])


def _decision_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM decisions")}
    finally:
        conn.close()


def test_backup_while_deciding_then_restore(daemon: DaemonProc, tmp_path: Path) -> None:
    config = daemon.config_path
    before = {_submit(daemon, f"pre-{i}") for i in range(20)}

    during: list[str] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            during.append(_submit(daemon, f"during-{i}"))
            i += 1

    writer = threading.Thread(target=load)
    writer.start()
    try:
        while len(during) < 5:  # the backup starts while decisions are being committed
            stop.wait(0.01)
        backup = tmp_path / "backups" / "node.tar.gz"
        committed_before = len(during)
        r = cli(config, "backup", str(backup), "--json")
        committed_by_end = len(during)
    finally:
        stop.set()
        writer.join()
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout)
    assert manifest["node"] == "it-node"
    assert manifest["public_key"] == load_key(daemon.data_dir).public_b64
    unpacked = tmp_path / "unpacked"
    shutil.unpack_archive(backup, unpacked)
    backed_up = _decision_ids(unpacked / "agentd.db")
    # every decision committed before the backup began is in it; the copy is one consistent snapshot
    assert before <= backed_up
    assert set(during[:committed_before]) <= backed_up
    assert committed_by_end > committed_before  # decisions were committed while the backup ran
    assert manifest["decisions"] == len(backed_up)
    live = _decision_ids(daemon.data_dir / "agentd.db")
    assert before | set(during) <= live  # the daemon lost nothing while being backed up

    refused = cli(config, "restore", str(backup))
    assert refused.returncode == 1
    assert "is running" in refused.stderr and "systemctl stop agentd" in refused.stderr

    after = _submit(daemon, "after-backup")
    assert daemon.stop() == 0
    unasked = cli(config, "restore", str(backup))  # a broker is configured, and none listens: no peer can answer
    assert unasked.returncode == 1 and "cannot reach the broker" in unasked.stderr and "--force" in unasked.stderr
    restored = cli(config, "restore", str(backup), "--json", "--force")
    assert restored.returncode == 0, restored.stderr
    result = json.loads(restored.stdout)
    assert result["restore_record"]["forced"] and "cannot reach the broker" in result["restore_record"]["fleet"]["unreachable"]
    replaced = Path(result["replaced"])
    assert after in _decision_ids(replaced)  # what the restore replaced is kept
    now = _decision_ids(daemon.data_dir / "agentd.db")
    assert now == backed_up
    assert after not in now
    verify = cli(config, "audit", "verify", "--json")
    assert verify.returncode == 0, verify.stdout
    # the restore is history, not a rewind: one signed record of it after the backup's own
    assert json.loads(verify.stdout)["records"] == manifest["audit"]["records"] + 1
    record = result["restore_record"]
    assert record["to"]["seq"] == manifest["audit"]["records"] and record["from"]["seq"] > manifest["audit"]["records"]
    trail = [json.loads(line) for line in cli(config, "audit", "export").stdout.splitlines()]
    restore = [r for r in trail if r.get("kind") == "restore"]
    assert len(restore) == 1 and restore[0]["body"]["from"] == record["from"]

    daemon.start()  # the node carries on from the restored database
    _submit(daemon, "after-restore")
    assert cli(config, "audit", "verify").returncode == 0


def test_a_tampered_backup_is_refused(daemon: DaemonProc, tmp_path: Path) -> None:
    config = daemon.config_path
    for i in range(5):
        _submit(daemon, f"e-{i}")
    good = tmp_path / "good"
    assert cli(config, "backup", str(good)).returncode == 0
    daemon.stop()
    original = (daemon.data_dir / "agentd.db").read_bytes()

    # 1. a decision edited in the copy: the database no longer matches the signed manifest
    edited = tmp_path / "edited"
    shutil.copytree(good, edited)
    db = sqlite3.connect(edited / "agentd.db")
    with db:
        db.execute("UPDATE decisions SET action = 'shutdown' WHERE event_id = 'e-2'")
    db.close()
    r = cli(config, "restore", str(edited))
    assert r.returncode == 1
    assert "does not match its manifest" in r.stderr

    # 2. the same edit by someone holding the node key, who re-signs the manifest: the audit chain refuses it
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["database"]["sha256"] = file_sha256(edited / "agentd.db")
    key = load_key(daemon.data_dir)
    (edited / "manifest.json").write_bytes(canonical(manifest))
    (edited / "manifest.sig").write_text(key.sign(canonical(manifest)))
    r = cli(config, "restore", str(edited))
    assert r.returncode == 1
    assert "audit chain does not verify" in r.stderr and "was edited" in r.stderr

    # 3. a manifest changed without the key
    forged = tmp_path / "forged"
    shutil.copytree(good, forged)
    m = json.loads((forged / "manifest.json").read_text())
    m["created_at"] += 1
    (forged / "manifest.json").write_bytes(canonical(m))
    r = cli(config, "restore", str(forged))
    assert r.returncode == 1
    assert "signature does not verify" in r.stderr

    assert (daemon.data_dir / "agentd.db").read_bytes() == original  # nothing was replaced

    # 4. a good backup, but another process has the database open (a daemon whose socket is elsewhere)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1 FROM decisions').fetchall();"
         " print('open', flush=True); sys.stdin.read()", str(daemon.data_dir / "agentd.db")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        r = cli(config, "restore", str(good))
        assert r.returncode == 1
        assert f"is open in process(es) {holder.pid}" in r.stderr
    finally:
        holder.communicate("")
    assert cli(config, "restore", str(good), "--force").returncode == 0  # --force: no broker listens to ask the peers
