"""The SQLite store: the node's database behind narrow async operations.

``Store`` composes the parts: the writer thread and its group commit (``state.writer``),
the audit trail's head (``state.audit_log``), a decision's rows (``state.decisions``) and
the peers' (``state.peers``). Each operation here is one write queued to the writer, so
it commits, with its audit record, all or nothing.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from agentd.errors import NotFound, StateError
from agentd.state import decisions, labels, peers, queries, retention, witness
from agentd.state.audit_log import AuditLog
from agentd.state.decisions import OUTBOX_INSERT, DecisionWrite, DuplicateEvent, Expiry, Resolution
from agentd.state.labels import LabelWrite
from agentd.state.outbox import Outbox
from agentd.state.writer import Soft, Writer

if TYPE_CHECKING:
    from pathlib import Path

    from agentd.config.loader import LoadedConfig
    from agentd.trust.checkpoints import Checkpoint
    from agentd.trust.keys import NodeKey
    from agentd.trust.witness import Verdict

__all__ = ["DecisionWrite", "DuplicateEvent", "LabelWrite", "Soft", "Store", "open_store", "store_settings"]

T = TypeVar("T")
log = logging.getLogger(__name__)


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
        checkpoint_interval_s: float = 300.0,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError("synchronous must be 'full' or 'normal'")
        self.path = queries.db_path(data_dir)
        self._node = node
        self._audit = AuditLog(key=key, node=node, checkpoint_every=checkpoint_every, checkpoint_interval_s=checkpoint_interval_s)
        # The rows each commit added, so the MQTT publisher can send them without reading them
        # back (they stay in the table until their PUBACK), and its wake-up.
        self.outbox = Outbox()
        self._writer = Writer(path=self.path, synchronous=synchronous, audit=self._audit, outbox=self.outbox)

    async def __aenter__(self) -> Store:
        await self._writer.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.checkpoint()  # a clean close leaves no unsigned tail
        except StateError as err:
            log.warning("no checkpoint at close: %s", err)
        finally:
            await self._writer.close()

    @property
    def commits(self) -> int:
        """Transactions committed since the store was opened."""
        return self._writer.commits

    async def _submit(self, op: Callable[[sqlite3.Connection], T] | DecisionWrite) -> T:
        return await self._writer.submit(op)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._writer.flush()

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a query function (see ``agentd.queries``) on the store's connection."""
        return await self._writer.read(fn)

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in a transaction on the writer thread (batched with other writes)."""
        return await self._submit(op)

    # -- decisions -----------------------------------------------------------

    async def record_decision(self, w: DecisionWrite) -> None:
        """Commit event, decision, audit record, outbox rows (and approval, fleet row) together.

        DuplicateEvent if the event id already has a decision; nothing is written then.
        """
        await self._submit(w)

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
        label: LabelWrite | None = None,
        after: Callable[[sqlite3.Connection, dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Move a pending approval to approved/rejected/expired; audited; returns the updated record.

        ``label`` (an approval, or a rejection naming the right action) is written and audited
        in the same transaction, and ``after`` runs in it (``state.decisions.resolve_approval``).
        """
        answer = Resolution(status, applied_action, by, reason, now if now is not None else time.time())
        return await self._submit(
            lambda conn: decisions.resolve_approval(
                conn, self._audit, node=self._node, decision_id=decision_id, answer=answer, only_pending=only_pending,
                label=label, after=after,
            )
        )

    async def expire_approvals(self, expiries: list[Expiry], *, now: float | None = None) -> list[dict[str, Any] | Exception | None]:
        """Expire many pending approvals in one operation of the writer, each in its own savepoint.

        Returns, in order, each updated record; None for one no longer pending (approved or
        rejected meanwhile); the exception of one whose write failed (nothing of it written).
        """
        when = now if now is not None else time.time()

        def op(conn: sqlite3.Connection) -> list[dict[str, Any] | Exception | None]:
            out: list[dict[str, Any] | Exception | None] = []
            for e in expiries:
                mark = self._audit.mark()
                conn.execute("SAVEPOINT expiry")
                try:
                    out.append(decisions.resolve_approval(
                        conn, self._audit, node=self._node, decision_id=e.decision_id,
                        answer=Resolution("expired", e.applied_action, "timeout", "", when), only_pending=True, after=e.after,
                    ))
                except Exception as exc:
                    conn.execute("ROLLBACK TO expiry")
                    self._audit.rewind(mark)  # the chain's head goes back with the rows
                    out.append(None if isinstance(exc, NotFound) else exc)
                conn.execute("RELEASE expiry")
            return out

        return await self._submit(op)

    async def add_label(self, w: LabelWrite, *, after: Callable[[sqlite3.Connection, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Record a label (the right action for a decision) with its audit record; returns the stored label.
        ``after`` runs in the same transaction (the label's replicated key, decision/label_writes.py)."""

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            row = labels.insert(conn, self._audit, w)
            if after is not None:
                after(conn, row)
            return row

        return await self._submit(op)

    async def set_late_answer(self, decision_id: str, late: dict[str, Any]) -> None:
        """Attach a model's late answer to a decision (never acted on) and audit it."""
        await self._submit(lambda conn: decisions.set_late_answer(conn, self._audit, decision_id, late))

    # -- peers and fleet commands --------------------------------------------

    async def record_peer_decision(self, node: str, body: dict[str, Any], hlc: str) -> bool:
        """Keep a peer's decision in the fleet state (rules read it through ``fleet_count``).

        Returns False when it was already known (a redelivery or an anti-entropy resend).
        """
        return await self._submit(Soft(lambda conn: peers.record_decision(conn, node, body, hlc)))

    async def upsert_peer(self, node: str, *, status: str, hlc: str, public_key: str | None = None, learned: bool = False) -> None:
        """Record a peer's presence (and a key learned on first use)."""

        def op(conn: sqlite3.Connection) -> None:
            peers.upsert(conn, self._audit, node, status=status, hlc=hlc, public_key=public_key, learned=learned)

        await self._submit(op if learned else Soft(op))  # a learned key is audited: durable

    async def witness_head(
        self, node: str, head: Checkpoint, chain: list[Checkpoint], *, key: str,
        fetched: list[Checkpoint] | None = None, lowest: int | None = None, hold_gap: bool = False,
    ) -> tuple[Verdict, bool]:
        """Judge peer ``node``'s signed audit head against the one witnessed and keep it (``state.witness``,
        which says what ``fetched``, ``lowest`` and ``hold_gap`` do); a rolled-back or forked peer is
        audited. Returns the verdict and whether the peer's state changed."""
        return await self._submit(lambda conn: witness.witness(conn, self._audit, node, head, chain, key=key, now=time.time(),
                                                               fetched=fetched, lowest=lowest, hold_gap=hold_gap))

    async def clear_peer_flag(self, node: str, *, by: str, reason: str) -> dict[str, Any]:
        """Clear a peer's audit flag after an investigation, audited (``state.witness.clear_flag``)."""
        return await self._submit(lambda conn: witness.clear_flag(conn, self._audit, node, by=by, reason=reason))

    @property
    def signed_head(self) -> Checkpoint | None:
        """The newest checkpoint the writer signed (or found at open): what the node publishes for its peers."""
        return self._audit.last

    async def claim_nonce(self, command_id: str, expires_at: float) -> bool:
        """Use a command id once: False if it was used before (a replay). A used id is also named by its
        command's audit record, which plain SQL cannot delete unseen as it can the nonce (issue 15, review)."""

        def op(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM audit WHERE ref = ? AND kind = 'command' LIMIT 1", (command_id[:128],)).fetchone():
                return False
            conn.execute("DELETE FROM nonces WHERE expires_at < ?", (time.time(),))
            cur = conn.execute("INSERT OR IGNORE INTO nonces(id, expires_at) VALUES (?, ?)", (command_id, expires_at))
            return cur.rowcount == 1

        return await self._submit(op)

    async def command_outcome(self, command_id: str, audit: dict[str, Any], reply: tuple[str, bytes] | None) -> None:
        """Audit a command's outcome (accepted or rejected) and queue its signed reply, together."""

        def op(conn: sqlite3.Connection) -> None:
            self._audit.append(conn, "command", command_id[:128], audit)
            if reply is not None:
                conn.execute(OUTBOX_INSERT, (reply[0], reply[1], 1, 0, time.time()))

        await self._submit(op)
        if reply is not None:
            self.outbox.ready.set()

    async def delete_outbox(self, seqs: list[int]) -> None:
        """Forget outbox rows the broker acknowledged (with the next commit, or within ``RIDE_S``)."""
        await self._writer.submit_later(lambda conn: conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs]))

    # -- the audit trail, settings, retention --------------------------------

    async def audit(self, kind: str, body: dict[str, Any], ref: str | None = None) -> int:
        """Append one audit record (start, stop, config, key, model load...)."""
        return await self._submit(lambda conn: self._audit.append(conn, kind, ref, body))

    async def checkpoint(self) -> None:
        """Sign a checkpoint over the newest audit record, if any came since the last one."""

        def op(conn: sqlite3.Connection) -> None:
            if self._audit.since_checkpoint:
                self._audit.checkpoint(conn)

        await self._submit(op)

    async def rotate_key(self, new: NodeKey) -> int:
        """Hand the audit trail to the key ``new``: a ``key_rotation`` record signed by the old and the
        new key, and a checkpoint at it by the new key (``trust.checkpoints``). Returns its seq.

        The caller then makes ``new`` the node key and re-pins it (there is no CLI command for it yet).
        """
        return await self._submit(lambda conn: self._audit.rotate(conn, new))

    async def set_setting(self, key: str, value: str) -> None:
        """Set one row of the settings table."""
        await self._submit(
            lambda conn: conn.execute("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)", (key, value))
        )

    async def prune(
        self, *, max_age_s: float, max_db_bytes: int, outbox_max_rows: int, min_keep_s: float = 3600.0, now: float | None = None
    ) -> dict[str, int]:
        """Apply retention: age, then size (oldest decisions first), then the outbox cap.

        Pending approvals are kept. The audit trail is pruned only up to the newest signed
        checkpoint that an export has covered (``settings.audit_exported_seq``) and below every
        kept decision's audit records; the ``retention`` record binds the chain's new start and
        is signed with it (a checkpoint at it, in this transaction).
        """
        now_ = now if now is not None else time.time()
        cutoff = now_ - max_age_s

        def op(conn: sqlite3.Connection) -> dict[str, int]:
            result, pruned_seq, base = retention.prune(
                conn, cutoff=cutoff, now=now_, max_db_bytes=max_db_bytes, outbox_max_rows=outbox_max_rows, min_keep_s=min_keep_s
            )
            if any(result.values()):
                self._audit.append(conn, "retention", None, {**result, "pruned_through_seq": pruned_seq, "base": base})
            return result

        return await self._submit(op)


def open_store(loaded: LoadedConfig, key: NodeKey) -> Store:
    """The node's store, configured from ``loaded`` (not yet open: use ``async with``)."""
    cfg = loaded.config
    return Store(data_dir=cfg.data_dir, key=key, node=cfg.node.id, synchronous=cfg.state.synchronous,
                 checkpoint_every=cfg.state.checkpoint_every, checkpoint_interval_s=cfg.state.checkpoint_interval_s)


def store_settings(loaded: LoadedConfig) -> tuple[Any, ...]:
    """What a store is opened with: a reload that changes any of it reopens the store."""
    cfg = loaded.config
    return (cfg.data_dir, cfg.node.id, cfg.state.synchronous, cfg.state.checkpoint_every, cfg.state.checkpoint_interval_s)
