"""Issue 15 (review): tampering the review found beyond the table's rows, through the real CLI.

An attacker with write access to ``agentd.db`` and no node key rewrites the whole chain, deletes
every checkpoint and then makes the database look as if no agentd since issue 15 had written it
(the schema version and the checkpoints table of before): the node, at its next start, must not
bless the rewritten history with an ``audit_upgrade`` and a checkpoint signed by its own key.
Exports verified off the box must hold a signature and be the stored text byte for byte; a
peer must see a rewrite that the node signed after its checkpoints were deleted as a fork.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agentd.trust.audit import record_hash
from agentd.trust.canonical import canonical
from agentd.trust.checkpoints import GENESIS
from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc, cli
from tests.integration.test_audit_tamper import EVENTS, copy_of, edit_decision, make_node, quiet, run, verify  # noqa: F401
from tests.integration.test_mesh_link import wait_connected
from tests.integration.test_mesh_peers import WARM, _wait
from tests.integration.test_mesh_witness import _peer, witness_pair


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node that signs every 4 records (start, 12 decisions, a clean stop)."""
    return make_node(tmp_path_factory.mktemp("busy"), {"checkpoint_every": 4})


def rewrite_without(conn: sqlite3.Connection, kinds: tuple[str, ...]) -> None:
    """Drop the records of ``kinds`` (the sealed ones that would need a checkpoint), renumber and rehash all."""
    rows = conn.execute("SELECT ts, kind, ref, body FROM audit ORDER BY seq").fetchall()
    conn.execute("DELETE FROM audit")
    prev = GENESIS
    for seq, (ts, kind, ref, body) in enumerate((r for r in rows if r[1] not in kinds), start=1):
        h = record_hash(prev, seq, ts, kind, ref, body)
        conn.execute("INSERT INTO audit(seq, ts, kind, ref, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?)",
                     (seq, ts, kind, ref, body, prev, h))
        prev = h


def look_legacy(conn: sqlite3.Connection) -> None:
    """Make the schema what agentd before issue 15 left (version 5: no chained checkpoints, no witness table)."""
    conn.execute("DELETE FROM checkpoints")
    for column in ("v", "count", "prev", "every", "interval_s"):
        conn.execute(f"ALTER TABLE checkpoints DROP COLUMN {column}")
    conn.execute("DROP TABLE witness")
    conn.execute("PRAGMA user_version = 5")


def test_a_rewritten_chain_made_to_look_legacy_is_not_upgraded_into_a_signed_one(busy: Path, tmp_path: Path) -> None:
    config = copy_of(busy, tmp_path)
    conn = sqlite3.connect(config.parent / "data" / "agentd.db", isolation_level=None)
    seq, ref = conn.execute("SELECT seq, ref FROM audit WHERE kind = 'decision' AND seq >= 7 ORDER BY seq LIMIT 1").fetchone()
    edit_decision(conn, seq, ref)
    rewrite_without(conn, ("stop", "audit_gap", "audit_upgrade", "retention", "key_rotation"))
    look_legacy(conn)
    records = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    conn.close()
    assert records > 4  # longer than the tail bound: no checkpoint ever covered it, or they were deleted
    # The node starts on it (here `agentd decide`, which opens the store as the daemon does).
    r = cli(config, "decide", "freezer_health", "--data", json.dumps(EVENTS[0]), "--id", "after")
    assert r.returncode == 0, r.stderr
    rc, result = verify(config)
    assert rc == 1, result
    assert "at start the node found its checkpoints missing" in result["problem"], result


# -- exports: `agentd audit verify --export FILE --public-key KEY` off the box


def genuine_export(config: Path, tmp_path: Path) -> list[str]:
    out = tmp_path / "export.jsonl"
    assert cli(config, "audit", "export", "-o", str(out)).returncode == 0
    return out.read_text().splitlines()


def verify_file(config: Path, tmp_path: Path, lines: list[str]) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "tampered.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return verify(config, "--export", str(path), "--public-key", str(config.parent / "data" / "keys" / "node.pub"))


def exact_line(r: dict[str, Any]) -> str:
    """A record line as `agentd audit export` writes it (the format is public)."""
    head = json.dumps({k: r[k] for k in ("type", "seq", "ts", "kind", "ref")}, separators=(",", ":"), ensure_ascii=False)
    tail = json.dumps({"prev_hash": r["prev_hash"], "hash": r["hash"]}, separators=(",", ":"))
    return f'{head[:-1]},"body":{canonical(r["body"]).decode()},{tail[1:]}'


def test_an_export_with_no_checkpoint_in_it_proves_nothing(busy: Path, tmp_path: Path) -> None:
    """Anyone can write an export of a made-up history with its hashes: without a checkpoint nothing is signed."""
    records = [json.loads(x) for x in genuine_export(busy, tmp_path) if '"type":"record"' in x]
    prev = GENESIS
    for seq, r in enumerate(records, start=1):
        if r["kind"] == "decision":
            r["body"]["action"] = "none"
        r["seq"], r["prev_hash"] = seq, prev
        r["hash"] = prev = record_hash(prev, seq, r["ts"], r["kind"], r["ref"], canonical(r["body"]).decode())
    made_up = [exact_line(r) for r in records if r["kind"] != "stop"]
    rc, result = verify_file(busy, tmp_path, made_up)
    assert rc == 1 and "no signed checkpoint" in result["problem"], result


@pytest.mark.parametrize("edit", [
    ('"action":"alert"', '"action":"none","action":"alert"'),  # a reader that takes the first member sees "none"
    ('{"type":"record",', '{"type":"record","kind":"note",'),
    ('"action":"alert"', '"action": "alert"'),  # one byte, the same JSON value: not the stored text
])
def test_an_export_line_must_be_the_stored_text_byte_for_byte(busy: Path, tmp_path: Path, edit: tuple[str, str]) -> None:
    lines = genuine_export(busy, tmp_path)
    assert verify_file(busy, tmp_path, lines)[0] == 0
    at = next(i for i, x in enumerate(lines) if '"action":"alert"' in x)
    lines[at] = lines[at].replace(*edit, 1)
    rc, result = verify_file(busy, tmp_path, lines)
    assert rc == 1, result
    assert f"tampered.jsonl:{at + 1}:" in result["problem"], result


# -- peers: a rewrite the node itself signs after every checkpoint was deleted


def test_a_peer_flags_a_node_that_signs_a_rewrite_after_its_checkpoints_were_deleted(tmp_path: Path, broker: Broker) -> None:
    """B witnesses A; with A stopped, the whole chain of A is rewritten and every checkpoint deleted (no key); A
    starts, records an audit_gap and signs a checkpoint over the rewrite that chains to nothing. B must see a fork,
    not a gap that would replace the head it witnessed (and with it what `verify --fleet` checks A against)."""
    a, b = witness_pair(tmp_path, broker.port, checkpoint_every=5)
    a_dir = a.data_dir
    b.start()
    wait_connected(b)
    try:
        a.start()
        wait_connected(a)
        for i in range(8):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"old-{i}"})["ok"]
        _wait(lambda: (_peer(b, "node-a").get("audit_head") or 0) >= 5)
        assert a.stop() == 0
        witnessed = _peer(b, "node-a")["audit_head"]
        conn = sqlite3.connect(a_dir / "agentd.db", isolation_level=None)
        seq, ref = conn.execute("SELECT seq, ref FROM audit WHERE kind = 'decision' ORDER BY seq LIMIT 1").fetchone()
        edit_decision(conn, seq, ref)
        rewrite_without(conn, ())
        conn.execute("DELETE FROM checkpoints")
        conn.close()
        a.start()
        wait_connected(a)
        _wait(lambda: _peer(b, "node-a").get("seen_seq", 0) > witnessed, timeout=60)
        _wait(lambda: _peer(b, "node-a")["audit_state"] == "forked", timeout=60)
        assert _peer(b, "node-a")["audit_head"] == witnessed  # the witnessed head is kept as the evidence
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("value", ["garbage", '{"seq": "x", "hash": 1}', "[]"])
def test_a_base_that_is_not_one_is_named_not_a_traceback(busy: Path, tmp_path: Path, value: str) -> None:
    config = copy_of(busy, tmp_path)
    conn = sqlite3.connect(config.parent / "data" / "agentd.db", isolation_level=None)
    conn.execute("INSERT OR REPLACE INTO settings(key, value) VALUES ('audit_base', ?)", (value,))
    conn.close()
    r = cli(config, "audit", "verify")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "settings.audit_base" in r.stderr, r.stderr


def _append_forged_decision(conn: sqlite3.Connection) -> int:
    """What someone with the database alone does while the node is stopped: chain a back-dated decision record on."""
    seq, ts, prev = conn.execute("SELECT seq, ts, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    body = canonical({"id": "f" * 32, "action": "none", "skill": "freezer_health", "note": "forged"}).decode()
    h = record_hash(prev, seq + 1, ts - 60, "decision", "f" * 32, body)
    conn.execute("INSERT INTO audit(seq, ts, kind, ref, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?)",
                 (seq + 1, ts - 60, "decision", "f" * 32, body, prev, h))
    return int(seq + 1)


@pytest.mark.parametrize("config_name", ["busy", "quiet"])
def test_records_appended_after_a_clean_stop_fail_verify_before_and_after_the_next_start(
    config_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    config = copy_of(request.getfixturevalue(config_name), tmp_path)
    assert verify(config)[0] == 0
    conn = sqlite3.connect(config.parent / "data" / "agentd.db", isolation_level=None)
    forged = _append_forged_decision(conn)
    conn.close()
    rc, out = verify(config)
    assert rc == 1 and out["first_bad_seq"] == forged and "appended while the node was stopped" in out["problem"], out
    node = DaemonProc(config_path=config, data_dir=config.parent / "data")  # the node starts on it, and says so
    node.start()
    assert node.stop() == 0
    rc, out = verify(config)
    assert rc == 1 and "appended while the node was stopped" in out["problem"], out
    gaps = [json.loads(b) for (b,) in sqlite3.connect(config.parent / "data" / "agentd.db").execute(
        "SELECT body FROM audit WHERE kind = 'audit_gap'")]
    assert gaps == [{"after_seq": forged - 1, "records": 1, "after_stop": True}]


def test_a_node_stopped_and_started_again_verifies(busy: Path, tmp_path: Path) -> None:
    config = copy_of(busy, tmp_path)
    run(config, ["again-1", "again-2"])  # each session after a stop opens with a sealed resume record
    run(config, ["again-3"])
    rc, out = verify(config)
    assert rc == 0, out
    kinds = [k for (k,) in sqlite3.connect(config.parent / "data" / "agentd.db").execute("SELECT kind FROM audit ORDER BY seq")]
    stops = [i for i, k in enumerate(kinds) if k == "stop"]
    assert all(kinds[i + 1] == "resume" for i in stops[:-1]) and kinds[-1] == "stop"
