"""Signed checkpoints of the audit trail, chained like Certificate Transparency's signed tree heads.

A version 2 checkpoint signs ``{v, node, seq, hash, count, ts, prev, every, interval_s}``: the
head record it covers (``seq``, ``hash``), the record count (the tree size; seqs run from 1
without gaps, so it equals ``seq``), its time, ``prev``, the digest (SHA-256 of the signed
payload) of the checkpoint before it (the zero hash for the first), and the bound the node keeps
its unsigned tail within (at most ``every`` records and ``interval_s`` seconds after a
checkpoint). Deleting or replacing a checkpoint breaks the link of the one after it, and the
bound is signed, so editing the database cannot widen it.

Version 1 checkpoints (agentd before issue 15) signed ``{node, seq, hash, ts}`` only; they are
still verified, as the legacy part of a chain below its first version 2 checkpoint.

A node key changes by a ``key_rotation`` record: its body names the old and the new key and holds
both keys' signatures over the record's place in the chain (``seq``, ``prev_hash``) and the two
keys. Checkpoints from that record on are signed by the new key; a verifier pinned to any key of
the history accepts the whole history, since each rotation is vouched for by both its keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentd.errors import TrustError
from agentd.trust.canonical import canonical, sha256_hex
from agentd.trust.keys import verify

if TYPE_CHECKING:
    from agentd.trust.keys import NodeKey

GENESIS = "0" * 64
VERSION = 2


@dataclass(frozen=True)
class Bound:
    """How far the unsigned tail may reach after the last checkpoint: records and seconds."""

    records: int
    seconds: float


DEFAULT_BOUND = Bound(1000, 300.0)  # state.checkpoint_every, state.checkpoint_interval_s


def checkpoint_payload(node: str, seq: int, hash_: str, ts: float) -> bytes:
    """The bytes a version 1 (legacy) checkpoint signature covers."""
    return canonical({"node": node, "seq": seq, "hash": hash_, "ts": ts})


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    ts: float
    node: str
    public_key: str
    sig: str
    v: int = 1
    count: int | None = None
    prev: str | None = None
    every: int | None = None
    interval_s: float | None = None

    def signed(self) -> dict[str, Any]:
        """The members the signature covers."""
        if self.v < VERSION:
            return {"node": self.node, "seq": self.seq, "hash": self.hash, "ts": self.ts}
        return {"v": self.v, "node": self.node, "seq": self.seq, "hash": self.hash, "count": self.count, "ts": self.ts,
                "prev": self.prev, "every": self.every, "interval_s": self.interval_s}

    def payload(self) -> bytes:
        return canonical(self.signed())

    @property
    def digest(self) -> str:
        """What the next checkpoint's ``prev`` holds: SHA-256 of the signed payload."""
        return sha256_hex(self.payload())

    @property
    def bound(self) -> Bound | None:
        """The signed tail bound (None for a legacy checkpoint)."""
        if self.every is None or self.interval_s is None:
            return None
        return Bound(self.every, self.interval_s)

    def valid(self) -> bool:
        """True when the signature verifies with the key the checkpoint names."""
        return verify(self.public_key, self.payload(), self.sig)

    def as_dict(self) -> dict[str, Any]:
        """The checkpoint as published or exported: the signed members, the key and the signature."""
        return {**self.signed(), "v": self.v, "public_key": self.public_key, "sig": self.sig}

    @classmethod
    def from_dict(cls, d: Any) -> Checkpoint:
        """Parse ``as_dict``'s shape; TrustError on anything else."""
        try:
            v = int(d.get("v", 1))
            cp = cls(int(d["seq"]), str(d["hash"]), float(d["ts"]), str(d["node"]), str(d["public_key"]), str(d["sig"]), v)
            if v >= VERSION:
                cp = cls(cp.seq, cp.hash, cp.ts, cp.node, cp.public_key, cp.sig, v, int(d["count"]), str(d["prev"]),
                         int(d["every"]), float(d["interval_s"]))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise TrustError(f"not a checkpoint: {exc!r}") from exc
        return cp


def make_checkpoint(key: NodeKey, *, node: str, seq: int, hash_: str, ts: float, prev: str, bound: Bound) -> Checkpoint:
    """Sign a version 2 checkpoint over the head ``(seq, hash_)`` that follows the checkpoint ``prev``."""
    unsigned = Checkpoint(seq, hash_, ts, node, key.public_b64, "", VERSION, seq, prev, bound.records, bound.seconds)
    return Checkpoint(**{**unsigned.__dict__, "sig": key.sign(unsigned.payload())})


def rotation_payload(seq: int, prev_hash: str, old: str, new: str) -> bytes:
    """What both keys of a rotation sign: the rotation record's place in the chain and the two keys."""
    return canonical({"kind": "key_rotation", "seq": seq, "prev_hash": prev_hash, "old": old, "new": new})


def rotation_body(old: NodeKey, new: NodeKey, *, seq: int, prev_hash: str) -> dict[str, Any]:
    """The body of the ``key_rotation`` record at ``seq`` (after the record whose hash is ``prev_hash``)."""
    data = rotation_payload(seq, prev_hash, old.public_b64, new.public_b64)
    return {"old": old.public_b64, "new": new.public_b64, "sig_old": old.sign(data), "sig_new": new.sign(data)}


def check_rotation(seq: int, prev_hash: str, body: dict[str, Any]) -> tuple[str, str] | str:
    """``(old, new)`` when both signatures of a rotation record verify; else what is wrong."""
    old, new = body.get("old"), body.get("new")
    if not isinstance(old, str) or not isinstance(new, str):
        return f"key rotation at record {seq} does not name an old and a new key"
    data = rotation_payload(seq, prev_hash, old, new)
    for who, key, sig in (("old", old, body.get("sig_old")), ("new", new, body.get("sig_new"))):
        if not isinstance(sig, str) or not verify(key, data, sig):
            return f"key rotation at record {seq} is not signed by its {who} key {key[:12]}..."
    return old, new


@dataclass(frozen=True)
class Rotation:
    seq: int
    prev_hash: str
    body: dict[str, Any]


def check_checkpoints(
    cps: list[Checkpoint], rotations: list[Rotation], *, start_seq: int, anchored: bool, trusted_key: str | None
) -> tuple[int | None, str | None, str | None]:
    """Signatures, the key in force at each checkpoint, the version 2 links and the pinned key.

    ``cps`` (in seq order, at or above ``start_seq``, the chain's base) and ``rotations``
    (in seq order) come from the same stretch of chain. The key in force before the first
    rotation is that rotation's old key, else the pinned key, else the first checkpoint's.
    Returns ``(first bad seq, problem, key in force at the head)``; problem None when all hold.
    """
    initial = rotations[0].body.get("old") if rotations else trusted_key or (cps[0].public_key if cps else None)
    current = initial if isinstance(initial, str) else None
    history = [current] if current else []
    history += [str(r.body.get("new")) for r in rotations]
    if trusted_key is not None and history and trusted_key not in history:
        first = min([c.seq for c in cps] + [r.seq for r in rotations])
        keys = ", ".join(f"{k[:12]}..." for k in history)
        return first, (f"checkpoint at record {first} is signed by an unknown key: the chain is signed by {keys},"
                       f" not by the pinned key {trusted_key[:12]}..."), current
    events: list[tuple[int, int, Checkpoint | Rotation]] = [(c.seq, 1, c) for c in cps]
    events += [(r.seq, 0, r) for r in rotations]  # a rotation comes before the checkpoint at its seq
    prev_v2: Checkpoint | None = None
    for seq, _, item in sorted(events, key=lambda e: (e[0], e[1])):
        if isinstance(item, Rotation):
            checked = check_rotation(item.seq, item.prev_hash, item.body)
            if isinstance(checked, str):
                return seq, checked, current
            if checked[0] != current:
                return seq, f"key rotation at record {seq} is from key {checked[0][:12]}..., not from the key in force", current
            current = checked[1]
            continue
        cp = item
        if cp.public_key != current:
            pinned = ", the pinned key" if current == trusted_key else ""
            return seq, (f"checkpoint at record {seq} is signed by an unknown key {cp.public_key[:12]}..."
                         f" (the key in force is {str(current)[:12]}...{pinned})"), current
        if not cp.valid():
            return seq, f"checkpoint at record {seq} has a bad signature", current
        if cp.v < VERSION:
            if prev_v2 is not None:
                return seq, f"checkpoint at record {seq} is of the unchained legacy format, after chained ones", current
            continue
        problem = _link_problem(cp, prev_v2, start_seq=start_seq, anchored=anchored)
        if problem is not None:
            return seq, problem, current
        prev_v2 = cp
    return None, None, current


def _link_problem(cp: Checkpoint, prev_v2: Checkpoint | None, *, start_seq: int, anchored: bool) -> str | None:
    """What is wrong with a version 2 checkpoint's count, bound or link to the one before it."""
    seq = cp.seq
    if cp.count != seq:
        return f"checkpoint at record {seq} counts {cp.count} records; the chain has {seq} up to it"
    if not (math.isfinite(cp.interval_s or 0.0) and (cp.interval_s or 0.0) > 0 and (cp.every or 0) > 0):
        return f"checkpoint at record {seq} has no usable tail bound"
    if prev_v2 is not None and cp.prev != prev_v2.digest:
        return (f"checkpoint at record {seq} does not follow the checkpoint at record {prev_v2.seq}"
                " (a checkpoint between them was deleted or replaced)")
    if prev_v2 is None and anchored and seq != start_seq and cp.prev != GENESIS:
        return f"checkpoint at record {seq} follows a checkpoint that is gone (checkpoints deleted)"
    return None
