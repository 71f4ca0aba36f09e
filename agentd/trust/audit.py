"""The audit hash chain and its verification, as pure functions over rows.

Each record's hash is SHA-256 over the previous record's hash and the canonical JSON of
``{seq, ts, kind, ref, body}``. Signed checkpoints pin ``(seq, hash)`` with the node key,
so that rewriting the chain after a checkpoint is detected even by someone who
recomputes every hash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agentd.errors import TrustError
from agentd.trust.canonical import canonical, sha256_hex
from agentd.trust.keys import verify

GENESIS = "0" * 64


def record_hash(prev_hash: str, seq: int, ts: float, kind: str, ref: str | None, body: str) -> str:
    """The chain hash of one audit record: SHA-256 over the previous hash and the canonical JSON
    of ``{body, kind, ref, seq, ts}``, where ``body`` is the record's stored canonical JSON text
    (spliced in as is, so the hash covers exactly the bytes kept)."""
    material = (
        b'{"body":' + body.encode() + b',"kind":' + canonical(kind) + b',"ref":' + canonical(ref)
        + b',"seq":' + canonical(seq) + b',"ts":' + canonical(ts) + b"}"
    )
    return sha256_hex(prev_hash.encode("ascii") + material)


def checkpoint_payload(node: str, seq: int, hash_: str, ts: float) -> bytes:
    """The bytes a checkpoint signature covers."""
    return canonical({"node": node, "seq": seq, "hash": hash_, "ts": ts})


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
class Checkpoint:
    seq: int
    hash: str
    ts: float
    node: str
    public_key: str
    sig: str


@dataclass
class VerifyResult:
    ok: bool
    records: int
    checkpoints: int
    first_bad_seq: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
        }


def verify_chain(
    rows: Iterable[AuditRow],
    checkpoints: Iterable[Checkpoint],
    *,
    base_seq: int = 0,
    base_hash: str = GENESIS,
    trusted_key: str | None = None,
) -> VerifyResult:
    """Walk the chain from ``(base_seq, base_hash)``; name the first record that breaks it.

    Detects an edited record (its hash no longer matches its content), a deleted or
    inserted record (a gap in ``seq`` or a broken ``prev_hash`` link), a reordering, and
    any checkpoint whose signature or pinned hash does not match.
    """
    cps = {c.seq: c for c in checkpoints}
    expected_seq, prev = base_seq + 1, base_hash
    count = 0
    hashes: dict[int, str] = {}
    for row in rows:
        count += 1
        if row.seq != expected_seq:
            what = "missing (deleted?)" if row.seq > expected_seq else "out of order"
            return VerifyResult(False, count, len(cps), expected_seq, f"record {expected_seq} is {what}; found {row.seq} next")
        if row.prev_hash != prev:
            return VerifyResult(False, count, len(cps), row.seq, f"record {row.seq} does not link to record {row.seq - 1} (inserted, deleted or reordered)")
        try:
            json.loads(row.body)
            actual = record_hash(row.prev_hash, row.seq, row.ts, row.kind, row.ref, row.body)
        except (ValueError, TypeError, TrustError) as exc:
            return VerifyResult(False, count, len(cps), row.seq, f"record {row.seq} is unreadable: {exc}")
        if actual != row.hash:
            return VerifyResult(False, count, len(cps), row.seq, f"record {row.seq} was edited: its hash does not match its content")
        hashes[row.seq] = row.hash
        prev, expected_seq = row.hash, row.seq + 1
    for cp in sorted(cps.values(), key=lambda c: c.seq):
        if trusted_key is not None and cp.public_key != trusted_key:
            return VerifyResult(False, count, len(cps), cp.seq, f"checkpoint at record {cp.seq} is signed by an unknown key")
        if not verify(cp.public_key, checkpoint_payload(cp.node, cp.seq, cp.hash, cp.ts), cp.sig):
            return VerifyResult(False, count, len(cps), cp.seq, f"checkpoint at record {cp.seq} has a bad signature")
        if cp.seq in hashes and hashes[cp.seq] != cp.hash:
            return VerifyResult(False, count, len(cps), cp.seq, f"record {cp.seq} does not match its signed checkpoint (chain rewritten)")
        if cp.seq > base_seq and cp.seq not in hashes:
            return VerifyResult(False, count, len(cps), cp.seq, f"record {cp.seq} is covered by a checkpoint but missing (chain truncated)")
    return VerifyResult(True, count, len(cps))
