"""The SQLite store: one connection, one writer thread, group commit.

Every write is an operation queued to the writer thread. The writer takes whatever is
queued, runs each operation inside its own SAVEPOINT of one transaction, commits with
``synchronous=FULL`` and only then resolves the callers' futures. So a decision (event +
decision + audit + outbox rows) is all-or-nothing, and a caller never sees a decision
that a power cut could take back. Under load, decisions that arrive while a commit is in
progress share the next commit (group commit); at low load each commit holds one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agentd.errors import NotFound, StateError
from agentd.state import queries, retention
from agentd.state.migrations import migrate
from agentd.state.outbox import Message, Outbox
from agentd.trust.audit import GENESIS, checkpoint_payload, record_hash
from agentd.trust.canonical import canonical, sha256_hex
from agentd.trust.keys import NodeKey

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig

T = TypeVar("T")
log = logging.getLogger(__name__)
MAX_BATCH = 512


@dataclass
class DecisionWrite:
    """Everything one decision writes, committed together."""

    event_id: str
    skill: str
    received_at: float
    data: dict[str, Any]
    record: dict[str, Any]
    node: str
    outbox: list[tuple[str, bytes, int, bool]] = field(default_factory=list)
    approval_expires_at: float | None = None
    record_canonical: bytes | None = None
    outbox_seqs: list[int] = field(default_factory=list)  # filled in by the writer


Op = Callable[[sqlite3.Connection], Any] | DecisionWrite


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


class DuplicateEvent(StateError):
    """The event id already has a decision; nothing was written."""


class Store:
    """Owns the node's SQLite database. Use as ``async with Store(...) as store``."""

    def __init__(
        self,
        *,
        data_dir: Path,
        key: NodeKey,
        node: str,
        synchronous: str = "full",
        checkpoint_every: int = 1000,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError("synchronous must be 'full' or 'normal'")
        self.path = queries.db_path(data_dir)
        self._data_dir = data_dir
        self._key = key
        self._node = node
        self._sync = synchronous.upper()
        self._sync_now = self._sync
        self._checkpoint_every = checkpoint_every
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentd-store")
        self._conn: sqlite3.Connection | None = None
        self._queue: list[tuple[Op, asyncio.Future[Any]]] = []
        self._lock = threading.Lock()
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._head: tuple[int, str] = (0, GENESIS)
        self._since_checkpoint = 0
        self._pending_audit: list[tuple[Any, ...]] | None = None
        self._closed = False
        self.commits = 0
        # The rows each commit added, so the MQTT publisher can send them without reading them
        # back (they stay in the table until their PUBACK), and its wake-up.
        self.outbox = Outbox()

    async def __aenter__(self) -> Store:
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(self._exec, self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.flush()
        self._closed = True
        assert self._loop is not None
        await self._loop.run_in_executor(self._exec, self._close)
        self._exec.shutdown(wait=True)

    # -- writer thread -------------------------------------------------------

    def _open(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._sync}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            migrate(conn)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot open database: {exc}; run `agentd doctor`") from exc
        self._reload_head(conn)
        self._conn = conn

    def _reload_head(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            base = queries.get_setting(conn, "audit_base")
            self._head = (json.loads(base)["seq"], json.loads(base)["hash"]) if base else (0, GENESIS)
        else:
            self._head = (int(row[0]), str(row[1]))
        last_cp = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM checkpoints").fetchone()[0]
        self._since_checkpoint = self._head[0] - last_cp

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run_batch(self, batch: list[tuple[Op, asyncio.Future[Any]]], *, bulk: bool = True) -> list[tuple[bool, Any]]:
        conn = self._conn
        assert conn is not None
        results: list[tuple[bool, Any]] = []
        head_before = self._head
        since_before = self._since_checkpoint
        sync = "NORMAL" if all(isinstance(op, Soft) for op, _ in batch) else self._sync
        if sync != self._sync_now:
            conn.execute(f"PRAGMA synchronous={sync}")
            self._sync_now = sync
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._reload_head(conn)  # another writer (`agentd decide`, a restore) may have appended
            head_before, since_before = self._head, self._since_checkpoint
            i = 0
            while i < len(batch):
                op = batch[i][0]
                if isinstance(op, DecisionWrite) and bulk:  # a run of decisions: bulk statements, no savepoints
                    j = i
                    while j < len(batch) and isinstance(batch[j][0], DecisionWrite):
                        j += 1
                    try:
                        with self._audit_rows(conn):
                            results.extend(self._write_decisions(conn, [b[0] for b in batch[i:j]]))  # type: ignore[misc]
                    except Exception:  # one bad write in the run: redo the batch one operation at a time
                        conn.execute("ROLLBACK")
                        self._head, self._since_checkpoint = head_before, since_before
                        return self._run_batch(batch, bulk=False)
                    i = j
                    continue
                i += 1
                head, since = self._head, self._since_checkpoint
                conn.execute("SAVEPOINT op")
                try:
                    if isinstance(op, DecisionWrite):
                        ok, value = self._write_decisions(conn, [op])[0]
                        if not ok:
                            raise value
                        results.append((True, None))
                    else:
                        results.append((True, op(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:  # one bad operation must not sink the batch
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    self._head, self._since_checkpoint = head, since
                    if isinstance(exc, sqlite3.Error):
                        exc = StateError(f"{self.path}: write failed: {exc}")
                    results.append((False, exc))
            if self._since_checkpoint >= self._checkpoint_every:
                self._write_checkpoint(conn)
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._head, self._since_checkpoint = head_before, since_before
            err = StateError(f"{self.path}: write failed: {exc}")
            return [(False, err) for _ in batch]
        return results

    @contextlib.contextmanager
    def _audit_rows(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Collect the audit rows appended inside the block and insert them with one statement."""
        self._pending_audit = []
        try:
            yield
            conn.executemany(
                "INSERT INTO audit(seq, ts, kind, ref, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?)", self._pending_audit
            )
        finally:
            self._pending_audit = None

    def _append_audit(self, conn: sqlite3.Connection, kind: str, ref: str | None, body: dict[str, Any], ts: float | None = None) -> int:
        seq, prev = self._head[0] + 1, self._head[1]
        ts = round(ts if ts is not None else time.time(), 6)
        text = canonical(body).decode()
        h = record_hash(prev, seq, ts, kind, ref, text)
        row = (seq, ts, kind, ref, text, prev, h)
        if self._pending_audit is not None:
            self._pending_audit.append(row)
        else:
            conn.execute("INSERT INTO audit(seq, ts, kind, ref, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?)", row)
        self._head = (seq, h)
        self._since_checkpoint += 1
        return seq

    def _write_checkpoint(self, conn: sqlite3.Connection) -> None:
        seq, h = self._head
        if seq == 0:
            return
        ts = round(time.time(), 6)
        sig = self._key.sign(checkpoint_payload(self._node, seq, h, ts))
        conn.execute(
            "INSERT OR REPLACE INTO checkpoints(seq, hash, ts, node, public_key, sig) VALUES (?,?,?,?,?,?)",
            (seq, h, ts, self._node, self._key.public_b64, sig),
        )
        self._since_checkpoint = 0

    # -- queueing ------------------------------------------------------------

    async def _submit(self, op: Callable[[sqlite3.Connection], T] | DecisionWrite) -> T:
        if self._loop is None or self._closed:
            raise StateError(f"{self.path}: the store is closed (the daemon is reloading or stopping); retry")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._queue.append((op, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._start_flush)
        return await fut

    def _start_flush(self) -> None:
        assert self._loop is not None
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        cfut = self._loop.run_in_executor(self._exec, self._run_batch, batch)
        cfut.add_done_callback(lambda f: self._finish(batch, f))

    def _finish(self, batch: list[tuple[Op, asyncio.Future[Any]]], done: asyncio.Future[list[tuple[bool, Any]]]) -> None:
        exc = done.exception()
        results = [(False, exc)] * len(batch) if exc else done.result()
        fresh = [
            Message(seq, row[0], row[1], row[2], bool(row[3]))
            for (op, _), (ok, _) in zip(batch, results, strict=True)
            if ok and isinstance(op, DecisionWrite)
            for seq, row in zip(op.outbox_seqs, op.outbox, strict=True)
        ]
        if fresh:
            self.outbox.committed(fresh)
        for (_, fut), (ok, value) in zip(batch, results, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        if self._queue:
            self._start_flush()
        else:
            self._flush_scheduled = False

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._loop is not None and (self._queue or self._flush_scheduled):
            await self._submit(lambda conn: None)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a query function (see ``agentd.queries``) on the store's connection."""
        if self._loop is None or self._closed:
            raise StateError(f"{self.path}: the store is closed (the daemon is reloading or stopping); retry")

        def run() -> T:
            assert self._conn is not None
            return fn(self._conn)

        return await self._loop.run_in_executor(self._exec, run)

    # -- operations ----------------------------------------------------------

    async def record_decision(self, w: DecisionWrite) -> None:
        """Commit event, decision, audit record, outbox rows (and approval, fleet row) together.

        DuplicateEvent if the event id already has a decision; nothing is written then.
        """
        await self._submit(w)

    def _write_decisions(self, conn: sqlite3.Connection, writes: list[DecisionWrite]) -> list[tuple[bool, Any]]:
        """Write a run of decisions with one statement per table (the hot path)."""
        ids = [w.event_id for w in writes]
        existing: set[str] = set()
        for k in range(0, len(ids), 500):
            chunk = ids[k : k + 500]
            marks = ",".join("?" * len(chunk))
            existing.update(r[0] for r in conn.execute(f"SELECT id FROM events WHERE id IN ({marks})", chunk))
        results: list[tuple[bool, Any]] = []
        events: list[tuple[Any, ...]] = []
        decisions: list[tuple[Any, ...]] = []
        outbox: list[tuple[Any, ...]] = []
        approvals: list[tuple[Any, ...]] = []
        fleet: list[tuple[Any, ...]] = []
        sent: list[DecisionWrite] = []
        for w in writes:
            if w.event_id in existing:
                results.append((False, DuplicateEvent(f"event {w.event_id!r} already has a decision")))
                continue
            existing.add(w.event_id)
            results.append((True, None))
            r = w.record
            text = w.record_canonical if w.record_canonical is not None else canonical(r)
            events.append((w.event_id, w.skill, w.received_at, json.dumps(w.data, separators=(",", ":"))))
            decisions.append((
                r["id"], w.event_id, w.skill, r["action"], r["status"], r["source"], r["fallback_reason"], r["guard"],
                r["lifecycle"]["stage"], r["lifecycle"]["release"], r["created_at"], text.decode(),
            ))
            self._append_audit(conn, "decision", r["id"], _audit_body(r, sha256_hex(text)))
            outbox.extend((t, p, q, int(retain), r["created_at"]) for t, p, q, retain in w.outbox)
            if w.outbox:
                sent.append(w)
            if w.approval_expires_at is not None:
                a = r["approval"]
                approvals.append((r["id"], w.skill, a["requested_action"], a["interim_action"], "pending", r["created_at"], w.approval_expires_at))
            fleet.append((w.node, r["id"], w.skill, r["action"], r["created_at"], r["hlc"]))
        conn.executemany("INSERT INTO events(id, skill, received_at, data) VALUES (?,?,?,?)", events)
        conn.executemany(
            "INSERT INTO decisions(id, event_id, skill, action, status, source, fallback_reason, guard,"
            " stage, release, created_at, record) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            decisions,
        )
        if outbox:
            conn.executemany("INSERT INTO outbox(topic, payload, qos, retain, created_at) VALUES (?,?,?,?,?)", outbox)
            # AUTOINCREMENT under the write lock: this run's rows hold the last len(outbox) numbers, in order
            last = int(conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()[0])
            seq = last - len(outbox) + 1
            for w in sent:
                w.outbox_seqs = list(range(seq, seq + len(w.outbox)))
                seq += len(w.outbox)
        if approvals:
            conn.executemany(
                "INSERT INTO approvals(decision_id, skill, requested_action, interim_action, status,"
                " created_at, expires_at) VALUES (?,?,?,?,?,?,?)",
                approvals,
            )
        conn.executemany(
            "INSERT OR IGNORE INTO fleet_decisions(node, decision_id, skill, action, ts, hlc) VALUES (?,?,?,?,?,?)", fleet
        )
        return results

    async def resolve_approval(
        self,
        decision_id: str,
        *,
        status: str,
        applied_action: str,
        by: str,
        reason: str = "",
        only_pending: bool = True,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Move a pending approval to approved/rejected/expired; audited; returns the updated record."""
        when = now if now is not None else time.time()

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT status FROM approvals WHERE decision_id = ?", (decision_id,)).fetchone()
            if row is None:
                raise NotFound(f"no approval for decision {decision_id!r}")
            if only_pending and row[0] != "pending":
                raise NotFound(f"decision {decision_id!r} is not pending (it is {row[0]})")
            conn.execute(
                "UPDATE approvals SET status = ?, resolved_at = ?, resolved_by = ?, applied_action = ? WHERE decision_id = ?",
                (status, when, by, applied_action, decision_id),
            )
            row = conn.execute("SELECT record, late_answer FROM decisions WHERE id = ?", (decision_id,)).fetchone()
            record = json.loads(row[0])  # as stored and audited; a late answer lives in its own column
            record["status"] = status
            record["action"] = applied_action
            record["approval"] = {**record.get("approval", {}), "status": status, "resolved_by": by, "resolved_at": when, "reason": reason}
            if status == "approved":
                record["source"] = "human"
            text = canonical(record)
            conn.execute(
                "UPDATE decisions SET status = ?, action = ?, source = ?, record = ? WHERE id = ?",
                (status, applied_action, record["source"], text.decode(), decision_id),
            )
            conn.execute(
                "UPDATE fleet_decisions SET action = ?, ts = ? WHERE node = ? AND decision_id = ?",
                (applied_action, when, self._node, decision_id),
            )
            self._append_audit(conn, "approval", decision_id, {**_audit_body(record, sha256_hex(text)), "by": by, "reason": reason})
            if row[1] is not None:
                record["late_answer"] = json.loads(row[1])
            return dict(record)

        return await self._submit(op)

    async def record_peer_decision(self, node: str, body: dict[str, Any], hlc: str) -> bool:
        """Keep a peer's decision in the fleet state (rules read it through ``fleet_count``).

        Returns False when it was already known (a redelivery or an anti-entropy resend).
        """

        def op(conn: sqlite3.Connection) -> bool:
            fresh = conn.execute(
                "INSERT OR IGNORE INTO fleet_decisions(node, decision_id, skill, action, ts, hlc) VALUES (?,?,?,?,?,?)",
                (node, str(body["id"]), str(body.get("skill", "")), str(body["action"]), float(body["created_at"]), hlc),
            ).rowcount == 1
            conn.execute(
                "INSERT INTO peers(node, status, last_seen, last_hlc, decisions) VALUES (?, 'online', ?, ?, ?)"
                " ON CONFLICT(node) DO UPDATE SET last_seen = excluded.last_seen, last_hlc = excluded.last_hlc,"
                " decisions = decisions + excluded.decisions",
                (node, time.time(), hlc, int(fresh)),
            )
            return fresh

        return await self._submit(Soft(op))

    async def upsert_peer(self, node: str, *, status: str, hlc: str, public_key: str | None = None, learned: bool = False) -> None:
        """Record a peer's presence (and a key learned on first use)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO peers(node, public_key, learned, status, last_seen, last_hlc) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT(node) DO UPDATE SET status = excluded.status, last_seen = excluded.last_seen,"
                " last_hlc = excluded.last_hlc, public_key = COALESCE(peers.public_key, excluded.public_key),"
                " learned = MAX(peers.learned, excluded.learned)",
                (node, public_key, int(learned), status, time.time(), hlc),
            )
            if learned:
                self._append_audit(conn, "peer_learned", node, {"node": node, "public_key": public_key})

        await self._submit(op if learned else Soft(op))

    async def claim_nonce(self, command_id: str, expires_at: float) -> bool:
        """Use a command id once: False if it was used before (a replay)."""

        def op(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM nonces WHERE expires_at < ?", (time.time(),))
            cur = conn.execute("INSERT OR IGNORE INTO nonces(id, expires_at) VALUES (?, ?)", (command_id, expires_at))
            return cur.rowcount == 1

        return await self._submit(op)

    async def command_outcome(self, command_id: str, audit: dict[str, Any], reply: tuple[str, bytes] | None) -> None:
        """Audit a command's outcome (accepted or rejected) and queue its signed reply, together."""

        def op(conn: sqlite3.Connection) -> None:
            self._append_audit(conn, "command", command_id[:128], audit)
            if reply is not None:
                conn.execute(
                    "INSERT INTO outbox(topic, payload, qos, retain, created_at) VALUES (?,?,?,?,?)",
                    (reply[0], reply[1], 1, 0, time.time()),
                )

        await self._submit(op)
        if reply is not None:
            self.outbox.ready.set()

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in a transaction on the writer thread (batched with other writes)."""
        return await self._submit(op)

    async def delete_outbox(self, seqs: list[int]) -> None:
        """Forget outbox rows the broker acknowledged."""
        await self._submit(Soft(lambda conn: conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])))

    async def set_late_answer(self, decision_id: str, late: dict[str, Any]) -> None:
        """Attach a model's late answer to a decision (never acted on) and audit it."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE decisions SET late_answer = ? WHERE id = ?", (json.dumps(late, separators=(",", ":")), decision_id)
            )
            self._append_audit(conn, "late_answer", decision_id, late)

        await self._submit(op)

    async def audit(self, kind: str, body: dict[str, Any], ref: str | None = None) -> int:
        """Append one audit record (start, stop, config, key, model load...)."""
        return await self._submit(lambda conn: self._append_audit(conn, kind, ref, body))

    async def checkpoint(self) -> None:
        """Sign a checkpoint over the newest audit record, if any came since the last one."""

        def op(conn: sqlite3.Connection) -> None:
            if self._since_checkpoint:
                self._write_checkpoint(conn)

        await self._submit(op)

    async def set_setting(self, key: str, value: str) -> None:
        await self._submit(
            lambda conn: conn.execute("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)", (key, value))
        )

    async def prune(
        self, *, max_age_s: float, max_db_bytes: int, outbox_max_rows: int, min_keep_s: float = 3600.0, now: float | None = None
    ) -> dict[str, int]:
        """Apply retention: age, then size (oldest decisions first), then the outbox cap.

        Pending approvals are kept. The audit trail is pruned only up to the newest signed
        checkpoint that an export has covered (``settings.audit_exported_seq``).
        """
        now_ = now if now is not None else time.time()
        cutoff = now_ - max_age_s

        def op(conn: sqlite3.Connection) -> dict[str, int]:
            result, pruned_seq = retention.prune(
                conn, cutoff=cutoff, now=now_, max_db_bytes=max_db_bytes, outbox_max_rows=outbox_max_rows, min_keep_s=min_keep_s
            )
            if any(result.values()):
                self._append_audit(conn, "retention", None, {**result, "pruned_through_seq": pruned_seq})
            return result

        return await self._submit(op)


def _audit_body(record: dict[str, Any], digest: str | None = None) -> dict[str, Any]:
    return {
        "decision_id": record["id"],
        "event_id": record["event_id"],
        "skill": record["skill"],
        "action": record["action"],
        "status": record["status"],
        "source": record["source"],
        "record_sha256": digest or queries.record_digest(record),
    }


def open_store(loaded: LoadedConfig, key: NodeKey) -> Store:
    """The node's store, configured from ``loaded`` (not yet open: use ``async with``)."""
    cfg = loaded.config
    return Store(data_dir=cfg.data_dir, key=key, node=cfg.node.id, synchronous=cfg.state.synchronous,
                 checkpoint_every=cfg.state.checkpoint_every)


def store_settings(loaded: LoadedConfig) -> tuple[Any, ...]:
    """What a store is opened with: a reload that changes any of it reopens the store."""
    cfg = loaded.config
    return (cfg.data_dir, cfg.node.id, cfg.state.synchronous, cfg.state.checkpoint_every)
