"""Witnessing a peer's signed audit head (issue 15, item 3): plain functions over checkpoints.

Every node publishes its newest signed checkpoint with the few before it; every peer keeps
the newest head it saw of each node and judges each new one against it with ``judge``:

- ``first``: nothing witnessed yet; the head is taken as it is.
- ``consistent``: the same head again, or a later one whose checkpoint chain (the ones sent
  with it) links back to the witnessed head.
- ``gap``: a later head whose chain does not reach back to the witnessed one (the peer
  missed more checkpoints than were sent): taken, but its extension is unchecked.
- ``rolled_back``: a head below the witnessed one (a truncation, a restore of an older copy).
- ``forked``: the same seq with another checkpoint, or a later head whose chain does not
  link to the witnessed head (a rewrite).

Only ``first``, ``consistent`` and ``gap`` move the witnessed head; the two flags leave it as
the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentd.trust.checkpoints import VERSION, check_checkpoints

if TYPE_CHECKING:
    from agentd.trust.checkpoints import Checkpoint

FLAGS = ("rolled_back", "forked")
MAX_CHAIN = 16  # checkpoints sent before the head, so that a peer that missed a few can still link it


@dataclass(frozen=True)
class Verdict:
    """How a new head relates to the one witnessed: one of the module's five outcomes, and why."""

    outcome: str
    detail: str = ""

    @property
    def flagged(self) -> bool:
        return self.outcome in FLAGS

    @property
    def advances(self) -> bool:
        """True when the new head becomes the witnessed one."""
        return not self.flagged


def head_problem(cp: Checkpoint, *, node: str, key: str) -> str | None:
    """What makes ``cp`` unusable as ``node``'s head, signed by its configured ``key``; None when it is."""
    if cp.node != node:
        return f"checkpoint of node {cp.node[:64]!r}, not of {node!r}"
    if cp.public_key != key:
        return f"checkpoint signed by {cp.public_key[:12]}..., not by the key configured for {node!r}"
    if cp.v < VERSION:
        return "legacy (unchained) checkpoint: cannot be witnessed"
    if not cp.valid():
        return "checkpoint with a bad signature"
    return None


def judge(old: Checkpoint | None, new: Checkpoint, chain: list[Checkpoint], *, key: str) -> Verdict:
    """Judge ``new`` (checked by ``head_problem``) against the witnessed ``old``; ``chain`` holds the
    checkpoints the node sent before ``new`` (any order; their signatures are checked here)."""
    if old is None:
        return Verdict("first")
    if new.seq < old.seq:
        return Verdict("rolled_back", f"head at record {new.seq}, below the witnessed head at record {old.seq}")
    if new.seq == old.seq:
        if new.hash == old.hash and new.digest == old.digest:
            return Verdict("consistent")
        return Verdict("forked", f"another checkpoint at record {new.seq} than the one witnessed")
    between = sorted((c for c in chain if old.seq <= c.seq < new.seq), key=lambda c: c.seq)
    if not between or between[0].seq != old.seq:
        if new.prev == old.digest:
            return Verdict("consistent")
        return Verdict("gap", f"head at record {new.seq} does not link to the witnessed head at record {old.seq}"
                              " through the checkpoints sent with it; its extension is unchecked")
    if between[0].digest != old.digest:
        return Verdict("forked", f"its checkpoint at record {old.seq} differs from the one witnessed")
    bad_seq, problem, _ = check_checkpoints([*between, new], [], start_seq=old.seq, anchored=False, trusted_key=key)
    if problem is not None:
        return Verdict("forked", f"the chain from the witnessed head at record {old.seq} breaks at record {bad_seq}: {problem}")
    return Verdict("consistent")
