"""Issue 15's tampering row 2 and a rewrite by someone holding the node key, through the real CLI:
`agentd audit verify` on the node cannot tell, `agentd audit verify --fleet` asks the peer that
witnessed the node's heads (a real daemon, on a real broker) and fails (exit 1, with the reason).

Node A ran (decisions over its socket, a clean stop) while peer B witnessed its heads; each test
attacks a fresh copy of A's data with plain SQL (and, for the rewrite, A's own key), and B, still
running, answers for node-a from its witness table.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.trust.checkpoints import GENESIS, Bound, make_checkpoint
from agentd.trust.keys import load_key
from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc, cli
from tests.integration.test_audit_tamper import copy_of, decision_at_or_after, edit_decision, rehash_from
from tests.integration.test_mesh_link import wait_connected
from tests.integration.test_mesh_peers import WARM, _wait
from tests.integration.test_mesh_witness import _peer, witness_pair


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, DaemonProc]]:
    """A's config (A stopped, its heads witnessed by B) and B, running."""
    tmp = tmp_path_factory.mktemp("fleet")
    broker = Broker(folder=tmp)
    broker.start()
    a, b = witness_pair(tmp, broker.port, checkpoint_every=4)
    try:
        b.start()
        wait_connected(b)
        a.start()
        wait_connected(a)
        for i in range(12):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"e-{i}"})["ok"]
        newest = _newest_checkpoint(a.data_dir)
        _wait(lambda: (_peer(b, "node-a").get("audit_head") or 0) >= newest)
        assert a.stop() == 0
        yield a.config_path, b
    finally:
        a.stop()
        b.stop()
        broker.stop()


def _newest_checkpoint(data: Path) -> int:
    conn = sqlite3.connect(f"file:{data / 'agentd.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT MAX(seq) FROM checkpoints").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def node(fleet: tuple[Path, DaemonProc], tmp_path: Path) -> tuple[Path, int]:
    """A fresh copy of A (same node id and key) and the head B witnessed of it."""
    config, b = fleet
    return copy_of(config, tmp_path), int(_peer(b, "node-a")["audit_head"])


def verify_fleet(config: Path) -> tuple[int, str, dict[str, Any]]:
    text = cli(config, "audit", "verify", "--fleet", "--timeout", "10")
    as_json = cli(config, "audit", "verify", "--fleet", "--timeout", "10", "--json")
    assert text.returncode == as_json.returncode, (text.stdout, as_json.stdout)
    return text.returncode, text.stdout + text.stderr, json.loads(as_json.stdout) if as_json.stdout else {}


def test_an_untouched_node_is_intact_for_the_fleet(node: tuple[Path, int]) -> None:
    config, witnessed = node
    rc, out, result = verify_fleet(config)
    assert rc == 0, out
    assert "audit trail intact for the fleet: 1 of 1 peer(s) answered" in out and f"record {witnessed}" in out
    assert result["fleet"]["ok"] and result["fleet"]["answered"] == ["node-b"]


def test_row_2_a_truncated_tail_fails_the_fleet_check(node: tuple[Path, int]) -> None:
    config, witnessed = node
    data = config.parent / "data"
    conn = sqlite3.connect(data / "agentd.db")
    with conn:  # back to a genuine checkpoint below the witnessed head: the records, decisions and checkpoints after it
        cut = conn.execute("SELECT MAX(seq) FROM checkpoints WHERE seq < ?", (witnessed,)).fetchone()[0]
        refs = [r for (r,) in conn.execute("SELECT ref FROM audit WHERE seq > ? AND kind = 'decision'", (cut,))]
        conn.executemany("DELETE FROM approvals WHERE decision_id = ?", [(r,) for r in refs])
        conn.executemany("DELETE FROM decisions WHERE id = ?", [(r,) for r in refs])
        conn.execute("DELETE FROM audit WHERE seq > ?", (cut,))
        conn.execute("DELETE FROM checkpoints WHERE seq > ?", (cut,))
    conn.close()
    local = cli(config, "audit", "verify")
    assert local.returncode == 0 and "intact" in local.stdout  # the node alone cannot tell
    rc, out, result = verify_fleet(config)
    assert rc == 1, out
    assert f"ends at record {cut}, below the head at record {witnessed} witnessed by node-b" in out
    assert "truncated" in out and not result["fleet"]["ok"]


def test_a_rewrite_by_someone_with_the_node_key_fails_the_fleet_check(node: tuple[Path, int]) -> None:
    config, witnessed = node
    data = config.parent / "data"
    key = load_key(data)
    conn = sqlite3.connect(data / "agentd.db")
    with conn:  # edit a decision, recompute every hash, re-sign every checkpoint with the node's own key
        seq, ref = decision_at_or_after(conn, 2)
        edit_decision(conn, seq, ref)
        rehash_from(conn, 1)
        old = conn.execute("SELECT seq, ts, node, every, interval_s FROM checkpoints ORDER BY seq").fetchall()
        conn.execute("DELETE FROM checkpoints")
        prev = GENESIS
        for s, ts, name, every, interval in old:
            h = conn.execute("SELECT hash FROM audit WHERE seq = ?", (s,)).fetchone()[0]
            cp = make_checkpoint(key, node=name, seq=s, hash_=h, ts=ts, prev=prev, bound=Bound(every, interval))
            conn.execute("INSERT INTO checkpoints(seq, hash, ts, node, public_key, sig, v, count, prev, every, interval_s)"
                         " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                         (cp.seq, cp.hash, cp.ts, cp.node, cp.public_key, cp.sig, cp.v, cp.count, cp.prev, cp.every, cp.interval_s))
            prev = cp.digest
    conn.close()
    local = cli(config, "audit", "verify")
    assert local.returncode == 0 and "intact" in local.stdout  # signed by the node key: the node alone cannot tell
    rc, out, _ = verify_fleet(config)
    assert rc == 1, out
    assert f"record {witnessed} of the local chain is not the one witnessed by node-b" in out and "rewritten" in out


def test_with_no_peer_answering_the_fleet_check_is_not_made(node: tuple[Path, int]) -> None:
    config, _ = node
    cfg = yaml.safe_load(config.read_text())
    cfg["trust"]["peers"] = {"node-c": load_key(config.parent / "data").public_b64}  # a peer that is not there
    config.write_text(yaml.safe_dump(cfg))
    r = cli(config, "audit", "verify", "--fleet", "--timeout", "1")
    assert r.returncode == 1
    assert "no peer answered (1 asked: node-c)" in r.stdout and "intact for the fleet" not in r.stdout
