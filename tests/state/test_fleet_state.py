"""agentd.state.fleet_state: the map in SQLite merges like the pure register, sums itself up for
digests and hands out the signed writes it holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agentd.state import fleet_state
from agentd.state.fleet_state import StateWrite
from agentd.state.lww import Entry
from agentd.state.migrations import migrate


def _db(tmp_path: Path, name: str = "t") -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / f"{name}.db", isolation_level=None)
    migrate(conn)
    return conn


def test_apply_keeps_the_winner_and_says_what_happened(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    old = Entry("site/m", "1700000000000-0000", "operator:alice", "c1", {"until": "18:00"})
    new = Entry("site/m", "1700000000005-0000", "operator:bob", "c2", deleted=True)
    assert fleet_state.apply(conn, [StateWrite(old, b'{"id":"c1"}')]) == ["applied"]
    assert fleet_state.apply(conn, [StateWrite(old, b'{"id":"c1"}')]) == ["older"]  # a repeat changes nothing
    assert fleet_state.apply(conn, [StateWrite(new, b'{"id":"c2"}'), StateWrite(old, b'{"id":"c1"}')]) == ["applied", "older"]
    assert fleet_state.entries(conn) == [new]
    assert fleet_state.origins(conn) == [("site/m", new.hlc, {"id": "c2"})]
    assert fleet_state.origins(conn, after=new.hlc) == []


def test_a_new_key_past_the_cap_is_refused(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    writes = [StateWrite(Entry(f"nodes/a/k{i}", "1700000000000-0000", "a", f"w{i}", i)) for i in range(3)]
    assert fleet_state.apply(conn, writes, max_keys=2) == ["applied", "applied", "full"]


def test_replicas_with_the_same_winners_have_the_same_digest(tmp_path: Path) -> None:
    a, b = _db(tmp_path, "a"), _db(tmp_path, "b")
    e1 = Entry("nodes/a/down", "1700000000000-0000", "a", "w1", True)
    e2 = Entry("nodes/b/down", "1700000000001-0000", "b", "w2", True)
    fleet_state.apply(a, [StateWrite(e1, b'{"id":"w1"}'), StateWrite(e2, b'{"id":"w2"}')])
    fleet_state.apply(b, [StateWrite(e2, b'{"id":"w2"}')])
    assert fleet_state.digest(a) != fleet_state.digest(b)
    fleet_state.apply(b, [StateWrite(e1, b'{"id":"w1"}')])
    assert fleet_state.digest(a) == fleet_state.digest(b) == {**fleet_state.digest(a), "n": 2, "newest": e2.hlc}


def test_a_write_made_with_mqtt_off_stays_local(tmp_path: Path) -> None:
    """No signed write to relay: it is neither offered nor counted in the digest (no peer could mend the difference)."""
    conn = _db(tmp_path)
    fleet_state.apply(conn, [StateWrite(Entry("nodes/a/down", "1700000000000-0000", "a", "w1", True))])
    assert fleet_state.origins(conn) == []
    assert fleet_state.digest(conn) == fleet_state.digest(_db(tmp_path, "empty"))
