"""The audit trail's writing end, on the store's writer thread: the chain's head, appends, chained signed checkpoints.

The hash chain itself (record hashes, checkpoint payloads, verification) is pure and lives
in ``agentd.trust.audit`` and ``agentd.trust.checkpoints``; this module keeps the head in
step with the table and decides when to sign.

The unsigned tail is kept within its bound in the transaction that would exceed it: a commit
that leaves ``checkpoint_every`` records, or a record more than ``checkpoint_interval_s``
after the last checkpoint, signs a checkpoint before it commits. So after any commit at most
``checkpoint_every`` records and ``checkpoint_interval_s`` seconds lie under no signature,
whether the node then stops, crashes or loses power, and `agentd audit verify` can fail a
longer tail as tampering. Sealed records (``trust.audit.SEALED``: a clean stop, a retention,
a key rotation) get a checkpoint at themselves in their own transaction.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from agentd.errors import StateError
from agentd.state import queries
from agentd.trust.audit import SEALED, record_hash
from agentd.trust.canonical import canonical
from agentd.trust.checkpoints import GENESIS, Bound, Checkpoint, make_checkpoint, rotation_body

if TYPE_CHECKING:
    from agentd.trust.keys import NodeKey

INSERT = "INSERT INTO audit(seq, ts, kind, ref, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?)"
CP_COLUMNS = ("seq", "hash", "ts", "node", "public_key", "sig", "v", "count", "prev", "every", "interval_s")
CP_INSERT = f"INSERT INTO checkpoints({', '.join(CP_COLUMNS)}) VALUES ({','.join('?' * len(CP_COLUMNS))})"

# What a rolled-back write restores: head, head time, records since the checkpoint, the newest
# checkpoint, the digest the next one chains to, the first unsigned record's time, the key.
Mark = tuple[tuple[int, str], float, int, Checkpoint | None, str, float | None, "NodeKey"]


def read_checkpoints(conn: sqlite3.Connection, where: str = "", args: tuple[Any, ...] = (), *, migrated: bool = False) -> list[Checkpoint]:
    """Checkpoints in seq order. A database no agentd since issue 15 has opened has the legacy columns
    only (a read-only reader looks; the writer, ``migrated``, knows)."""
    legacy = not migrated and "v" not in {r[1] for r in conn.execute("PRAGMA table_info(checkpoints)")}
    columns = CP_COLUMNS[:6] if legacy else CP_COLUMNS
    rows = conn.execute(f"SELECT {', '.join(columns)} FROM checkpoints {where} ORDER BY seq", args)
    return [Checkpoint(*r) for r in rows]


class AuditLog:
    """Appends hash-chained audit records and signs chained checkpoints to keep the unsigned tail bounded.

    Only the writer thread calls it, inside its transactions; ``mark``/``rewind`` undo the
    head's advance when a write is rolled back.
    """

    def __init__(self, *, key: NodeKey, node: str, checkpoint_every: int, checkpoint_interval_s: float = 300.0) -> None:
        self._key = key
        self._node = node
        self.bound = Bound(checkpoint_every, checkpoint_interval_s)
        self.head: tuple[int, str] = (0, GENESIS)
        self.head_ts = 0.0
        self.since_checkpoint = 0
        self.last: Checkpoint | None = None
        self._prev = GENESIS  # the digest of the newest chained checkpoint
        self._tail_start: float | None = None  # with no checkpoint yet: the first record's time
        self._pending: list[tuple[Any, ...]] | None = None

    def reload(self, conn: sqlite3.Connection) -> None:
        """Read the head from the table (another writer, `agentd decide` or a restore, may have appended)."""
        row = conn.execute("SELECT seq, hash, ts FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        newest = conn.execute("SELECT seq, sig FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        if newest is None or self.last is None or (self.last.seq, self.last.sig) != tuple(newest):
            last = read_checkpoints(conn, "WHERE seq = ?", (newest[0],), migrated=True) if newest else []
            self.last = last[0] if last else None
            self._prev = self._chain_digest(conn)  # a digest only when the newest checkpoint changed
        base_seq, base_hash = base_of(conn) if row is None or self.last is None else (0, GENESIS)
        self.head, self.head_ts = ((int(row[0]), str(row[1])), float(row[2])) if row else ((base_seq, base_hash), 0.0)
        self.since_checkpoint = self.head[0] - (self.last.seq if self.last else base_seq)
        self._tail_start = None
        if self.last is None and self.since_checkpoint:
            first = conn.execute("SELECT ts FROM audit WHERE seq = ?", (base_seq + 1,)).fetchone()
            self._tail_start = float(first[0]) if first else None

    def _chain_digest(self, conn: sqlite3.Connection) -> str:
        """The digest the next checkpoint chains to: the newest chained one's (the genesis over legacy ones only)."""
        if self.last is None or self.last.v >= 2:
            return self.last.digest if self.last else GENESIS
        chained = read_checkpoints(conn, "WHERE seq = (SELECT MAX(seq) FROM checkpoints WHERE v >= 2)", migrated=True)
        return chained[0].digest if chained else GENESIS

    def mark(self) -> Mark:
        """Where the chain stands now, for ``rewind``."""
        return self.head, self.head_ts, self.since_checkpoint, self.last, self._prev, self._tail_start, self._key

    def rewind(self, mark: Mark) -> None:
        """Forget the appends and checkpoints since ``mark`` (their transaction or savepoint was rolled back)."""
        self.head, self.head_ts, self.since_checkpoint, self.last, self._prev, self._tail_start, self._key = mark

    @contextlib.contextmanager
    def batched(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Collect the records appended inside the block and insert them with one statement."""
        self._pending = []
        try:
            yield
            conn.executemany(INSERT, self._pending)
        finally:
            self._pending = None

    def append(self, conn: sqlite3.Connection, kind: str, ref: str | None, body: dict[str, Any], ts: float | None = None) -> int:
        """Chain one record onto the head (a sealed kind with a checkpoint at it); returns its sequence number."""
        seq, prev = self.head[0] + 1, self.head[1]
        ts = round(ts if ts is not None else time.time(), 6)
        text = canonical(body).decode()
        h = record_hash(prev, seq, ts, kind, ref, text)
        row = (seq, ts, kind, ref, text, prev, h)
        if self._pending is not None:
            self._pending.append(row)
        else:
            conn.execute(INSERT, row)
        self.head, self.head_ts = (seq, h), ts
        if self.last is None and self._tail_start is None:
            self._tail_start = ts
        self.since_checkpoint += 1
        if kind in SEALED:
            self.checkpoint(conn)
        return seq

    @property
    def checkpoint_due(self) -> bool:
        """True when this commit must sign: ``checkpoint_every`` records, or a record more than
        ``checkpoint_interval_s`` after the last checkpoint, or a bound changed since it."""
        if not self.since_checkpoint:
            return False
        if self.since_checkpoint >= self.bound.records:
            return True
        since = self.last.ts if self.last is not None else self._tail_start
        if since is not None and self.head_ts - since > self.bound.seconds:
            return True
        return self.last is not None and self.last.bound != self.bound

    def beyond_bound(self) -> dict[str, Any] | None:
        """The unsigned tail as found, when it is longer than the bound it was written under (checkpoints deleted)."""
        bound = self.last.bound if self.last is not None else self.bound
        since = self.last.ts if self.last is not None else self._tail_start
        seconds = self.head_ts - since if since is not None and self.since_checkpoint else 0.0
        if bound is None or (self.since_checkpoint <= bound.records and seconds <= bound.seconds):
            return None
        after = self.last.seq if self.last is not None else self.head[0] - self.since_checkpoint
        return {"after_seq": after, "records": self.since_checkpoint, "seconds": round(seconds, 3),
                "bound_records": bound.records, "bound_s": bound.seconds}

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        """Sign a checkpoint over the head, chained to the last one (none when nothing is new)."""
        seq, h = self.head
        if seq == 0 or (self.last is not None and self.last.seq >= seq):
            return
        ts = round(max(time.time(), self.head_ts, self.last.ts if self.last else 0.0), 6)
        cp = make_checkpoint(self._key, node=self._node, seq=seq, hash_=h, ts=ts, prev=self._prev, bound=self.bound)
        conn.execute(CP_INSERT, tuple(getattr(cp, c) for c in CP_COLUMNS))
        self.last, self._prev, self.since_checkpoint, self._tail_start = cp, cp.digest, 0, None

    def rotate(self, conn: sqlite3.Connection, new: NodeKey) -> int:
        """Hand the chain to ``new``: a ``key_rotation`` record signed by the old and the new key,
        and a checkpoint at it signed by the new key. Returns the record's seq."""
        body = rotation_body(self._key, new, seq=self.head[0] + 1, prev_hash=self.head[1])
        self._key = new
        return self.append(conn, "key_rotation", None, body)


def base_of(conn: sqlite3.Connection) -> tuple[int, str]:
    """Where the kept chain starts: ``settings.audit_base`` after retention, else the genesis."""
    base = queries.get_setting(conn, "audit_base")
    if not base:
        return 0, GENESIS
    try:
        parsed = json.loads(base)
        seq, hash_ = parsed["seq"], parsed["hash"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0 or not isinstance(hash_, str):
            raise TypeError("a whole seq and a hash")
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"settings.audit_base is not the base retention writes ({exc!r} in {base[:80]!r}):"
                         " the database was edited; see docs/OPERATIONS.md") from exc
    return seq, hash_
