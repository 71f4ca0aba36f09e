"""The store's one connection and the one thread that writes on it: queued operations, group commit.

Every write is an operation queued to the writer thread. The writer takes whatever is
queued, runs each operation inside its own SAVEPOINT of one transaction, commits with
``synchronous=FULL`` and only then resolves the callers' futures. So a decision (event +
decision + audit + outbox rows) is all-or-nothing, and a caller never sees a decision
that a power cut could take back. Under load, decisions that arrive while a commit is in
progress share the next commit (group commit); at low load each commit holds one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from agentd.errors import StateError
from agentd.state import audit_upgrade
from agentd.state.decisions import DecisionWrite, write_decisions
from agentd.state.migrations import migrate
from agentd.state.outbox import Message

if TYPE_CHECKING:
    from pathlib import Path

    from agentd.state.audit_log import AuditLog
    from agentd.state.outbox import Outbox

T = TypeVar("T")
MAX_BATCH = 512
RIDE_S = 0.5  # how long a write that can wait (``Writer.submit_later``) waits for a commit to ride with
CHAINED_CHECKPOINTS = 6  # the schema version that brought chained checkpoints (state.migrations)


class Soft:
    """A write whose loss on a power cut is repaired elsewhere: peer decisions and presence
    (anti-entropy brings them again) and outbox deletes after a PUBACK (the row is sent
    again, and receivers drop the repeat). A commit holding only such writes skips the
    fsync (``synchronous=NORMAL`` for that commit). WAL keeps commits in order, so a later
    durable commit's fsync covers it, and a crash of the process alone loses nothing.
    """

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn

    def __call__(self, conn: sqlite3.Connection) -> Any:
        return self.fn(conn)


class Later(Soft):
    """A soft write that waits for a commit to ride with (``Writer.submit_later``).

    It waits in memory, so a crash of the process too (not only a power cut) can lose it
    within ``RIDE_S``: an outbox row is then sent once more, and receivers drop the repeat.
    """


Op = Callable[[sqlite3.Connection], Any] | DecisionWrite
Queued = tuple[Op, asyncio.Future[Any]]


class Writer:
    """Runs queued operations in batched transactions on one thread; ``open`` and ``close`` bracket its life.

    ``audit`` keeps the chain's head in step with each commit or rollback; ``outbox`` hears
    of the rows each commit added.
    """

    def __init__(self, *, path: Path, synchronous: str, audit: AuditLog, outbox: Outbox) -> None:
        self.path = path
        self._sync = synchronous.upper()
        self._sync_now = self._sync
        self._audit = audit
        self._outbox = outbox
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentd-store")
        self._conn: sqlite3.Connection | None = None
        self._queue: list[Queued] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._ride: asyncio.TimerHandle | None = None  # the commit of its own for writes left waiting (submit_later)
        self.commits = 0

    async def open(self) -> None:
        """Open (and migrate) the database on the writer thread."""
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(self._exec, self._open)

    async def close(self) -> None:
        """Commit what is queued (writes that would wait to ride too), then close the connection and stop the thread."""
        while self._queue or self._flush_scheduled:  # a delete queued during the last commit rides too
            await self.submit(lambda conn: None)
        self._closed = True
        if self._ride is not None:
            self._ride.cancel()
            self._ride = None
        assert self._loop is not None
        await self._loop.run_in_executor(self._exec, self._close)
        self._exec.shutdown(wait=True)

    async def submit(self, op: Callable[[sqlite3.Connection], T] | DecisionWrite) -> T:
        """Queue ``op`` for the next commit and wait until it is durable; its result or its exception."""
        loop = self._running()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.append((op, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        return await fut

    async def submit_later(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Queue a soft write (``Soft``) that rides with the next commit; if none comes within
        ``RIDE_S`` seconds, it gets a commit of its own.

        For outbox deletes after a PUBACK: at a low rate each cost a commit of its own, which the
        next event's decision then queued behind (0.3-0.45 ms on its latency).
        """
        loop = self._running()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.append((Later(fn), fut))
        if not self._flush_scheduled and self._ride is None:
            self._ride = loop.call_later(RIDE_S, self._ride_due)
        return await fut

    def _ride_due(self) -> None:
        self._ride = None
        if not self._closed and self._queue and not self._flush_scheduled:
            self._flush_scheduled = True
            self._start_flush()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._loop is not None and (self._queue or self._flush_scheduled):
            await self.submit(lambda conn: None)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a query function on the connection, on the writer thread (between commits)."""
        loop = self._running()

        def run() -> T:
            assert self._conn is not None
            return fn(self._conn)

        return await loop.run_in_executor(self._exec, run)

    def _running(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._closed:
            raise StateError(f"{self.path}: the store is closed (the daemon is reloading or stopping); retry")
        return self._loop

    # -- on the writer thread ------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._sync}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            before = conn.execute("PRAGMA user_version").fetchone()[0]
            migrate(conn)
            self._on_open(conn, legacy=0 < before < CHAINED_CHECKPOINTS)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot open database: {exc}; run `agentd doctor`") from exc
        self._conn = conn

    def _on_open(self, conn: sqlite3.Connection, *, legacy: bool) -> None:
        """The audit trail's checks at open (``state.audit_upgrade``), in a transaction of their own."""
        conn.execute("BEGIN IMMEDIATE")
        self._audit.reload(conn)
        mark = self._audit.mark()
        try:
            audit_upgrade.on_open(conn, self._audit, legacy=legacy)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self._audit.rewind(mark)
            raise

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run_batch(self, batch: list[Queued], *, bulk: bool = True) -> list[tuple[bool, Any]]:
        conn = self._conn
        assert conn is not None
        results: list[tuple[bool, Any]] = []
        before = self._audit.mark()
        sync = "NORMAL" if all(isinstance(op, Soft) for op, _ in batch) else self._sync
        if sync != self._sync_now:
            conn.execute(f"PRAGMA synchronous={sync}")
            self._sync_now = sync
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._audit.reload(conn)  # another writer (`agentd decide`, a restore) may have appended
            before = self._audit.mark()
            i = 0
            while i < len(batch):
                op = batch[i][0]
                if isinstance(op, DecisionWrite) and bulk:  # a run of decisions: bulk statements, no savepoints
                    j = i
                    while j < len(batch) and isinstance(batch[j][0], DecisionWrite):
                        j += 1
                    try:
                        with self._audit.batched(conn):
                            results.extend(write_decisions(conn, self._audit, [b[0] for b in batch[i:j]]))  # type: ignore[misc]
                    except Exception:  # one bad write in the run: redo the batch one operation at a time
                        conn.execute("ROLLBACK")
                        self._audit.rewind(before)
                        return self._run_batch(batch, bulk=False)
                    i = j
                    continue
                i += 1
                results.append(self._run_one(conn, op))
            if self._audit.checkpoint_due:
                self._audit.checkpoint(conn)
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._audit.rewind(before)
            err = StateError(f"{self.path}: write failed: {exc}")
            return [(False, err) for _ in batch]
        return results

    def _run_one(self, conn: sqlite3.Connection, op: Op) -> tuple[bool, Any]:
        """One operation in its own savepoint: a bad one must not sink the batch."""
        mark = self._audit.mark()
        conn.execute("SAVEPOINT op")
        try:
            if isinstance(op, DecisionWrite):
                ok, value = write_decisions(conn, self._audit, [op])[0]
                if not ok:
                    raise value
                result: tuple[bool, Any] = (True, None)
            else:
                result = (True, op(conn))
            conn.execute("RELEASE op")
        except Exception as exc:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            self._audit.rewind(mark)
            if isinstance(exc, sqlite3.Error):
                exc = StateError(f"{self.path}: write failed: {exc}")
            return False, exc
        return result

    # -- back on the event loop ----------------------------------------------

    def _start_flush(self) -> None:
        assert self._loop is not None
        if self._ride is not None:  # what waited rides with this commit
            self._ride.cancel()
            self._ride = None
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        cfut = self._loop.run_in_executor(self._exec, self._run_batch, batch)
        cfut.add_done_callback(lambda f: self._finish(batch, f))

    def _finish(self, batch: list[Queued], done: asyncio.Future[list[tuple[bool, Any]]]) -> None:
        exc = done.exception()
        results = [(False, exc)] * len(batch) if exc else done.result()
        fresh = [
            Message(seq, row[0], row[1], row[2], bool(row[3]))
            for (op, _), (ok, _) in zip(batch, results, strict=True)
            if ok and isinstance(op, DecisionWrite)
            for seq, row in zip(op.outbox_seqs, op.outbox, strict=True)
        ]
        if fresh:
            self._outbox.committed(fresh)
        for (_, fut), (ok, value) in zip(batch, results, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        if any(not isinstance(op, Later) for op, _ in self._queue):
            self._start_flush()
        else:
            self._flush_scheduled = False
            if self._queue and self._ride is None:  # only writes that can wait: they wait for the next commit
                assert self._loop is not None
                self._ride = self._loop.call_later(RIDE_S, self._ride_due)
