"""The audit hash chain and its verification, as pure functions over rows.

Each record's hash is SHA-256 over the previous record's hash and the canonical JSON of
``{seq, ts, kind, ref, body}``. Signed checkpoints (``agentd.trust.checkpoints``) pin the head
with the node key and chain to each other, so that rewriting the chain, deleting checkpoints
or cutting records from its start is detected even by someone who recomputes every hash.

``verify_chain`` checks, in this order: the records' links and hashes; the checkpoints'
signatures, keys (rotations included), links and the pinned key; that each checkpoint matches
its record; the base (a pruned chain starts at a signed checkpoint that a signed retention
record binds); the unsigned tail after the last checkpoint against its signed bound; that the
node never found its own checkpoints missing (``audit_gap``); and a checkpoint at every
sealed record (a clean stop, a retention, a key rotation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentd.errors import TrustError
from agentd.trust.canonical import canonical, sha256_hex
from agentd.trust.checkpoints import (
    DEFAULT_BOUND,
    GENESIS,
    Bound,
    Checkpoint,
    Rotation,
    check_checkpoints,
    checkpoint_payload,
)

__all__ = ["DEFAULT_BOUND", "GENESIS", "SEALED", "AuditRow", "Bound", "Checkpoint", "Tail", "VerifyResult",
           "checkpoint_payload", "record_hash", "verify_chain"]

# Records the writer signs a checkpoint at in their own transaction: a clean stop, a retention
# (it binds the new base), a key rotation, the upgrade of a legacy chain, a gap found at start.
SEALED = frozenset({"stop", "retention", "key_rotation", "audit_upgrade", "audit_gap", "resume"})
# A clean stop whose body says so (``sealed_next``) promises that the next record is sealed (every
# agentd session that writes after it opens with a sealed ``resume``, or finds an ``audit_gap``): a
# record after it with no checkpoint of its own was appended while the node was stopped.
SEALS_NEXT = "sealed_next"
BINDERS = ("retention", "audit_upgrade")  # records whose body's "base" binds the chain's start


def record_hash(prev_hash: str, seq: int, ts: float, kind: str, ref: str | None, body: str) -> str:
    """The chain hash of one audit record: SHA-256 over the previous hash and the canonical JSON
    of ``{body, kind, ref, seq, ts}``, where ``body`` is the record's stored canonical JSON text
    (spliced in as is, so the hash covers exactly the bytes kept)."""
    material = (
        b'{"body":' + body.encode() + b',"kind":' + canonical(kind) + b',"ref":' + canonical(ref)
        + b',"seq":' + canonical(seq) + b',"ts":' + canonical(ts) + b"}"
    )
    return sha256_hex(prev_hash.encode("ascii") + material)


@dataclass(frozen=True)
class AuditRow:
    seq: int
    ts: float
    kind: str
    ref: str | None
    body: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Tail:
    """The records after the last checkpoint (or the base): not yet under any signature."""

    after_seq: int
    records: int
    seconds: float
    bound: Bound

    def as_dict(self) -> dict[str, Any]:
        return {"after_seq": self.after_seq, "records": self.records, "seconds": round(self.seconds, 3),
                "bound_records": self.bound.records, "bound_s": self.bound.seconds if math.isfinite(self.bound.seconds) else None}


@dataclass
class VerifyResult:
    ok: bool
    records: int
    checkpoints: int
    first_bad_seq: int | None = None
    problem: str | None = None
    tail: Tail | None = None
    key: str | None = None  # the key in force at the head
    head: tuple[int, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "tail": self.tail.as_dict() if self.tail else None,
            "key": self.key,
            "head": {"seq": self.head[0], "hash": self.head[1]} if self.head else None,
        }


@dataclass
class _Walk:
    """What one pass over the records collects for the checks after it."""

    count: int = 0
    hashes: dict[int, str] = field(default_factory=dict)
    first_ts: float | None = None
    last_ts: float | None = None
    sealed: list[tuple[int, str]] = field(default_factory=list)
    rotations: list[Rotation] = field(default_factory=list)
    binder: tuple[int, dict[str, Any]] | None = None
    gaps: list[tuple[int, Any]] = field(default_factory=list)
    after_stop: list[tuple[int, int, str]] = field(default_factory=list)  # (stop seq, next seq, next kind)


def _walk(rows: Iterable[AuditRow], base_seq: int, base_hash: str) -> tuple[_Walk, int | None, str | None]:
    w = _Walk()
    expected_seq, prev = base_seq + 1, base_hash
    stop_seals: int | None = None  # the seq of a clean stop that promised a sealed next record
    for row in rows:
        w.count += 1
        if row.seq != expected_seq:
            what = "missing (deleted?)" if row.seq > expected_seq else "out of order"
            return w, expected_seq, f"record {expected_seq} is {what}; found {row.seq} next"
        if row.prev_hash != prev:
            return w, row.seq, f"record {row.seq} does not link to record {row.seq - 1} (inserted, deleted or reordered)"
        try:
            body = json.loads(row.body)
            actual = record_hash(row.prev_hash, row.seq, row.ts, row.kind, row.ref, row.body)
        except (ValueError, TypeError, TrustError) as exc:
            return w, row.seq, f"record {row.seq} is unreadable: {exc}"
        if actual != row.hash:
            return w, row.seq, f"record {row.seq} was edited: its hash does not match its content"
        w.hashes[row.seq] = row.hash
        w.first_ts = row.ts if w.first_ts is None else w.first_ts
        w.last_ts = row.ts
        if row.kind in SEALED:
            w.sealed.append((row.seq, row.kind))
        if row.kind == "key_rotation":
            w.rotations.append(Rotation(row.seq, row.prev_hash, body if isinstance(body, dict) else {}))
        if row.kind in BINDERS and isinstance(body, dict) and isinstance(body.get("base"), dict):
            w.binder = (row.seq, body["base"])
        if row.kind == "audit_gap":
            w.gaps.append((row.seq, body))
        if stop_seals is not None:
            w.after_stop.append((stop_seals, row.seq, row.kind))
        stop_seals = row.seq if row.kind == "stop" and isinstance(body, dict) and body.get(SEALS_NEXT) is True else None
        prev, expected_seq = row.hash, row.seq + 1
    return w, None, None


def verify_chain(
    rows: Iterable[AuditRow],
    checkpoints: Iterable[Checkpoint],
    *,
    base_seq: int = 0,
    base_hash: str = GENESIS,
    trusted_key: str | None = None,
    bound: Bound = DEFAULT_BOUND,
    anchored: bool = True,
) -> VerifyResult:
    """Walk the chain from ``(base_seq, base_hash)``; name the first record that breaks it.

    ``anchored``: the base is the chain's real start (genesis, or a pruned database's base);
    False for an export that starts mid-chain, whose first record's link is vouched for only
    by the checkpoints after it. ``bound`` applies to a tail with no version 2 checkpoint
    before it (a version 2 checkpoint carries its own). ``trusted_key``: the pinned key;
    None checks each signature against the key the checkpoint names (no anchor).
    """
    cps = sorted((c for c in checkpoints if c.seq >= base_seq), key=lambda c: c.seq)
    w, bad_seq, problem = _walk(rows, base_seq, base_hash)

    def bad(seq: int | None, what: str) -> VerifyResult:
        return VerifyResult(False, w.count, len(cps), seq, what)

    if problem is not None:
        return bad(bad_seq, problem)
    head_seq = base_seq + w.count
    bad_seq, problem, key = check_checkpoints(cps, w.rotations, start_seq=base_seq, anchored=anchored, trusted_key=trusted_key)
    if problem is not None:
        return bad(bad_seq, problem)
    for cp in cps:
        if cp.seq in w.hashes and w.hashes[cp.seq] != cp.hash:
            return bad(cp.seq, f"record {cp.seq} does not match its signed checkpoint (chain rewritten)")
        if cp.seq > head_seq:
            return bad(cp.seq, f"record {cp.seq} is covered by a checkpoint but missing (chain truncated)")
    problem = _base_problem(cps, w, base_seq, base_hash, anchored)
    if problem is not None:
        return bad(base_seq, problem)
    tail = _tail(cps, w, base_seq, head_seq, bound)
    if tail.records > tail.bound.records or tail.seconds > tail.bound.seconds:
        start = f"the checkpoint at record {tail.after_seq}" if cps else f"the chain's start (record {base_seq})"
        return bad(tail.after_seq + 1, (
            f"{tail.records} record(s) over {tail.seconds:.1f} s after {start} are under no signature, beyond the"
            f" bound of {tail.bound.records} records / {tail.bound.seconds:g} s (checkpoints deleted?)"))
    if w.gaps:
        seq, body = w.gaps[0]
        if isinstance(body, dict) and body.get("after_stop") is True:
            return bad(seq, f"record {seq}: at start the node found {body.get('records')} record(s) after its clean stop at record"
                            f" {body.get('after_seq')} that no agentd session wrote: appended while the node was stopped")
        return bad(seq, f"record {seq}: at start the node found its checkpoints missing: {json.dumps(body, sort_keys=True)[:300]}")
    at = {c.seq for c in cps}
    exempt_below = 0  # a legacy chain's sealed records had their checkpoint in a transaction of its own
    if any(c.v < 2 for c in cps):
        exempt_below = next((c.seq for c in cps if c.v >= 2), head_seq + 1)
    for seq, kind in w.sealed:
        if seq >= exempt_below and seq not in at:
            return bad(seq, f"record {seq} ({kind}) has no signed checkpoint at it, which the node writes with it (checkpoints deleted?)")
    for stop, seq, kind in w.after_stop:
        if kind not in SEALED:
            return bad(seq, f"record {seq} ({kind}) follows the clean stop at record {stop} with no signed checkpoint of its"
                            " own, which every session after a stop opens with: it was appended while the node was stopped")
    return VerifyResult(True, w.count, len(cps), tail=tail, key=key, head=(head_seq, w.hashes.get(head_seq, base_hash)))


def _base_problem(cps: list[Checkpoint], w: _Walk, base_seq: int, base_hash: str, anchored: bool) -> str | None:
    """A pruned chain starts at a signed checkpoint that the latest signed retention record binds."""
    if w.binder is not None:
        seq, base = w.binder
        cp = next((c for c in cps if c.seq == base.get("seq")), None)
        if cp is not None and (cp.hash != base.get("hash") or cp.digest != base.get("checkpoint")):
            return f"the checkpoint at record {cp.seq} is not the one the retention record {seq} binds as the chain's start"
    if not anchored or not base_seq:
        return None
    if not any(c.seq == base_seq and c.hash == base_hash for c in cps):
        return f"the chain starts after record {base_seq}, but no signed checkpoint covers that start"
    if w.binder is None:
        return (f"the chain starts after record {base_seq}, but no signed retention record binds that start"
                " (records deleted from its beginning?)")
    seq, base = w.binder
    if not isinstance(base.get("seq"), int) or base_seq > base["seq"]:
        return (f"the chain starts after record {base_seq}, but the latest retention record ({seq}) pruned only up to"
                f" record {base.get('seq')} (records deleted from its beginning?)")
    return None


def _tail(cps: list[Checkpoint], w: _Walk, base_seq: int, head_seq: int, bound: Bound) -> Tail:
    """The unsigned tail, measured from the last checkpoint's time (or the first record's) to the last record's."""
    if not cps:
        seconds = (w.last_ts - w.first_ts) if w.last_ts is not None and w.first_ts is not None else 0.0
        return Tail(base_seq, head_seq - base_seq, max(seconds, 0.0), bound)
    last = cps[-1]
    records = head_seq - last.seq
    seconds = max((w.last_ts or last.ts) - last.ts, 0.0) if records else 0.0
    signed = last.bound
    if signed is None:  # legacy: its time bound was kept only roughly (a housekeeping tick); count it by records
        return Tail(last.seq, records, seconds, Bound(bound.records, math.inf))
    return Tail(last.seq, records, seconds, signed)
