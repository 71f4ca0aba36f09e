"""The outbox: messages committed with their decision, waiting for the broker's PUBACK.

Rows are written by the store in the transaction of the decision or command that caused
them. The MQTT publisher reads them here: the rows just committed come straight from
memory (``Outbox.take_fresh``), anything else from the table through a read-only
connection of its own (``OutboxReader``, used from one worker thread). ``ready`` is set
whenever there is something to send.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agentd.state import queries

BATCH = 500
MAX_FRESH = 10 * BATCH  # past this the publisher is behind: it reads the table instead


@dataclass(frozen=True)
class Message:
    """One outbox row."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """What was just committed, and the wake-up for the publisher."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self._fresh: list[Message] = []

    def committed(self, messages: list[Message]) -> None:
        """Rows a commit just made durable (called by the store, on the event loop)."""
        if len(self._fresh) + len(messages) > MAX_FRESH:
            self._fresh.clear()  # the table has them all
        else:
            self._fresh.extend(messages)
        self.ready.set()

    def take_fresh(self, after: int) -> list[Message]:
        """The committed rows that continue from ``after`` without a gap; [] when the table must be read."""
        fresh = [m for m in self._fresh if m.seq > after]
        self._fresh.clear()
        if not fresh or fresh[0].seq != after + 1 or fresh[-1].seq - fresh[0].seq != len(fresh) - 1:
            return []  # a gap (seqs only grow, so first and last tell)
        return fresh


class OutboxReader:
    """Reads outbox rows through a read-only connection; use from one thread."""

    def __init__(self, data_dir: Path) -> None:
        self._path = queries.db_path(data_dir)
        self._conn: sqlite3.Connection | None = None

    def read(self, after: int) -> tuple[list[Message], int]:
        """Rows after ``after``, and the outbox's sequence as it was before they were read."""
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=10)
        last = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        rows = self._conn.execute(
            "SELECT seq, topic, payload, qos, retain FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, BATCH)
        ).fetchall()
        return [Message(int(s), str(t), bytes(p), int(q), bool(r)) for s, t, p, q, r in rows], int(last[0]) if last else 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
