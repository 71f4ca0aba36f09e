"""The audit trail's writing end, on the store's writer thread: the chain's head, appends, signed checkpoints.

The hash chain itself (record hashes, checkpoint payloads, verification) is pure and lives
in ``agentd.trust.audit``; this module only keeps the head in step with the table.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from agentd.state import queries
from agentd.trust.audit import GENESIS, checkpoint_payload, record_hash
from agentd.trust.canonical import canonical

if TYPE_CHECKING:
    from agentd.trust.keys import NodeKey

INSERT = "INSERT INTO audit(seq, ts, kind, ref, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?)"

# The head (seq, hash) and the records appended since the last checkpoint: what a rolled-back write restores.
Mark = tuple[tuple[int, str], int]


class AuditLog:
    """Appends hash-chained audit records and signs a checkpoint every ``checkpoint_every`` of them.

    Only the writer thread calls it, inside its transactions; ``mark``/``rewind`` undo the
    head's advance when a write is rolled back.
    """

    def __init__(self, *, key: NodeKey, node: str, checkpoint_every: int) -> None:
        self._key = key
        self._node = node
        self._checkpoint_every = checkpoint_every
        self.head: tuple[int, str] = (0, GENESIS)
        self.since_checkpoint = 0
        self._pending: list[tuple[Any, ...]] | None = None

    def reload(self, conn: sqlite3.Connection) -> None:
        """Read the head from the table (another writer, `agentd decide` or a restore, may have appended)."""
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            base = queries.get_setting(conn, "audit_base")
            self.head = (json.loads(base)["seq"], json.loads(base)["hash"]) if base else (0, GENESIS)
        else:
            self.head = (int(row[0]), str(row[1]))
        last_cp = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM checkpoints").fetchone()[0]
        self.since_checkpoint = self.head[0] - last_cp

    def mark(self) -> Mark:
        """Where the chain stands now, for ``rewind``."""
        return self.head, self.since_checkpoint

    def rewind(self, mark: Mark) -> None:
        """Forget the appends since ``mark`` (their transaction or savepoint was rolled back)."""
        self.head, self.since_checkpoint = mark

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
        """Chain one record onto the head; returns its sequence number."""
        seq, prev = self.head[0] + 1, self.head[1]
        ts = round(ts if ts is not None else time.time(), 6)
        text = canonical(body).decode()
        h = record_hash(prev, seq, ts, kind, ref, text)
        row = (seq, ts, kind, ref, text, prev, h)
        if self._pending is not None:
            self._pending.append(row)
        else:
            conn.execute(INSERT, row)
        self.head = (seq, h)
        self.since_checkpoint += 1
        return seq

    @property
    def checkpoint_due(self) -> bool:
        """True once ``checkpoint_every`` records have come since the last checkpoint."""
        return self.since_checkpoint >= self._checkpoint_every

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        """Sign a checkpoint over the head (none while the trail is empty)."""
        seq, h = self.head
        if seq == 0:
            return
        ts = round(time.time(), 6)
        sig = self._key.sign(checkpoint_payload(self._node, seq, h, ts))
        conn.execute(
            "INSERT OR REPLACE INTO checkpoints(seq, hash, ts, node, public_key, sig) VALUES (?,?,?,?,?,?)",
            (seq, h, ts, self._node, self._key.public_b64, sig),
        )
        self.since_checkpoint = 0
