"""The fleet-state map in SQLite: one row per key, the winning write (``agentd.state.lww``).

``fleet_state(key, value, hlc, node)`` (schema 1): ``node`` is the writer and ``value`` the
rest of the entry as JSON: ``{"value", "deleted", "expires_at", "wid", "origin"}``, where
``origin`` is the signed write itself (canonical JSON), kept so that any node can relay it
to a peer that missed it (anti-entropy) and the peer can check its signature itself.
Functions here run on the store's writer thread (``apply``) or its read connection.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from agentd.state.lww import Entry, merge

LABEL_GLOB = "nodes/*/labels/*"  # the keys of replicated labels
LABEL_GLOB_RE = re.compile(r"nodes/[^/]+/labels/[^/]+")
MAX_KEYS = 10_000  # keys held at most; a new key past this is refused (a buggy or hostile writer cannot fill the disk)


@dataclass(frozen=True, slots=True)
class StateWrite:
    """An entry to merge and the signed write it came from (b"" when there is none to relay: MQTT off)."""

    entry: Entry
    origin: bytes = b""


def _row(conn: sqlite3.Connection, key: str) -> Entry | None:
    row = conn.execute("SELECT key, value, hlc, node FROM fleet_state WHERE key = ?", (key,)).fetchone()
    return None if row is None else _entry(row)


def _entry(row: tuple[Any, ...]) -> Entry:
    key, text, hlc, node = row
    rest = json.loads(text)
    return Entry(key=key, hlc=hlc, writer=node, wid=rest["wid"], value=rest["value"], deleted=bool(rest["deleted"]),
                 expires_at=rest["expires_at"])


def apply(conn: sqlite3.Connection, writes: list[StateWrite], *, max_keys: int = MAX_KEYS) -> list[str]:
    """Merge each write into the map; per write ``applied``, ``older`` (the key holds a newer write)
    or ``full`` (a new key with ``max_keys`` keys held)."""
    out: list[str] = []
    for w in writes:
        e = w.entry
        current = _row(conn, e.key)
        if current is None and conn.execute("SELECT COUNT(*) FROM fleet_state").fetchone()[0] >= max_keys:
            out.append("full")
            continue
        if current is None and LABEL_GLOB_RE.fullmatch(e.key) and conn.execute(
                "SELECT COUNT(*) FROM fleet_state WHERE key GLOB ?", (LABEL_GLOB,)).fetchone()[0] >= max_keys // 2:
            out.append("full")  # replicated labels (decision/label_writes.py) hold at most half the map
            continue
        if merge(current, e) is not e:  # the key holds this write already, or a newer one
            out.append("older")
            continue
        rest = {"value": e.value, "deleted": e.deleted, "expires_at": e.expires_at, "wid": e.wid, "origin": w.origin.decode()}
        conn.execute("INSERT OR REPLACE INTO fleet_state(key, value, hlc, node) VALUES (?,?,?,?)",
                     (e.key, json.dumps(rest, separators=(",", ":"), ensure_ascii=False), e.hlc, e.writer))
        out.append("applied")
    return out


def entries(conn: sqlite3.Connection, glob: str = "*") -> list[Entry]:
    """Every key's entry (tombstones and expired ones too) whose key matches ``glob``, by key."""
    return [_entry(r) for r in conn.execute("SELECT key, value, hlc, node FROM fleet_state WHERE key GLOB ? ORDER BY key", (glob,))]


def digest(conn: sqlite3.Connection) -> dict[str, Any]:
    """What a digest says of the map: ``{"n": keys, "newest": greatest HLC, "sha": a hash of every key's winner}``.

    Two replicas with the same winner for every key have the same hash. Entries without a
    signed write (made while MQTT was off) stay local: they are left out, or the peers
    would see a difference that no relay can mend.
    """
    h = hashlib.sha256()
    n, newest = 0, ""
    for key, hlc, node, text in conn.execute("SELECT key, hlc, node, value FROM fleet_state ORDER BY key"):
        rest = json.loads(text)
        if not rest["origin"]:
            continue
        h.update(f"{key}\0{hlc}\0{node}\0{rest['wid']}\n".encode())
        n += 1
        newest = max(newest, hlc)
    return {"n": n, "newest": newest, "sha": h.hexdigest()[:32]}


def origins(conn: sqlite3.Connection, *, after: str = "", limit: int = 1000) -> list[tuple[str, str, dict[str, Any]]]:
    """``(key, hlc, signed write)`` of the keys whose winner is newer than HLC ``after`` (all with ""),
    oldest first, for a peer that misses them; entries without a signed write (MQTT was off) are left out."""
    out = []
    for key, hlc, text in conn.execute("SELECT key, hlc, value FROM fleet_state WHERE hlc > ? ORDER BY hlc LIMIT ?", (after, limit)):
        origin = json.loads(text)["origin"]
        if origin:
            out.append((key, hlc, json.loads(origin)))
    return out
