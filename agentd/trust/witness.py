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
  link to the witnessed head (a rewrite), or whose checkpoints start again from the genesis
  above it (every checkpoint deleted, and the node restarted on the rewritten chain).

Only ``first``, ``consistent`` and ``gap`` move the witnessed head; the two flags leave it as
the evidence. A peer that would judge ``gap`` first fetches the node's own checkpoints from
the witnessed head on (``agentd.mesh.checkpoint_fetch``) and judges with ``judge_fetched``:
over the node's complete answer a gap is no longer possible, only a consistent chain, a fork
(the witnessed checkpoint is not in it, or a link breaks), or, where the node pruned its
checkpoints below the witnessed head, an unchecked gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentd.trust.checkpoints import GENESIS, VERSION, check_checkpoints

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


def head_problem(cp: Checkpoint, *, node: str, key: str, signature: bool = True) -> str | None:
    """What makes ``cp`` unusable as ``node``'s head, signed by its configured ``key``; None when it is.
    ``signature=False`` leaves the signature to ``judge`` (fetched checkpoints: it checks each one it links)."""
    if cp.node != node:
        return f"checkpoint of node {cp.node[:64]!r}, not of {node!r}"
    if cp.public_key != key:
        return f"checkpoint signed by {cp.public_key[:12]}..., not by the key configured for {node!r}"
    if cp.v < VERSION:
        return "legacy (unchained) checkpoint: cannot be witnessed"
    if signature and not cp.valid():
        return "checkpoint with a bad signature"
    return None


def judge(old: Checkpoint | None, new: Checkpoint, chain: list[Checkpoint], *, key: str) -> Verdict:
    """Judge ``new`` (checked by ``head_problem``) against the witnessed ``old``; ``chain`` holds the
    checkpoints the node sent before ``new`` (any order; their signatures are checked here)."""
    if old is None:
        return Verdict("first")
    if old.public_key != key:  # the peer's operator changed the key trusted for the node (a rotation)
        return Verdict("first", f"the key trusted for {new.node[:64]!r} changed; witnessing starts again at record {new.seq}")
    if new.seq < old.seq:
        return Verdict("rolled_back", f"head at record {new.seq}, below the witnessed head at record {old.seq}")
    if new.seq == old.seq:
        if new.hash == old.hash and new.digest == old.digest:
            return Verdict("consistent")
        return Verdict("forked", f"another checkpoint at record {new.seq} than the one witnessed")
    if new.prev == GENESIS:  # the witnessed head is chained: a later first checkpoint means they were all deleted
        return Verdict("forked", f"its checkpoints start again from nothing at record {new.seq}, above the witnessed"
                                 f" head at record {old.seq}: its checkpoints were deleted and its chain replaced")
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


def judge_fetched(
    old: Checkpoint | None, new: Checkpoint, fetched: list[Checkpoint], chain: list[Checkpoint], *, key: str, lowest: int | None
) -> Verdict:
    """Judge ``new`` with ``fetched``: the checkpoints the node itself sent, on request, from the
    witnessed head's seq on up to ``new`` (each checked by ``head_problem``), besides the ``chain``
    sent with the head. ``lowest`` is the oldest checkpoint the node still holds (retention)."""
    by_seq: dict[int, Checkpoint] = {}
    for cp in [*chain, *fetched]:
        if cp.seq in by_seq and by_seq[cp.seq].digest != cp.digest:
            return Verdict("forked", f"two different checkpoints at record {cp.seq}")
        by_seq[cp.seq] = cp
    verdict = judge(old, new, list(by_seq.values()), key=key)
    if verdict.outcome != "gap" or old is None:
        return verdict
    restart = next((c for c in sorted(by_seq.values(), key=lambda c: c.seq) if old.seq < c.seq and c.prev == GENESIS), None)
    if restart is not None:  # a retention keeps its base checkpoint, linked to the ones before it
        return Verdict("forked", f"its checkpoints start again from nothing at record {restart.seq}, above the witnessed"
                                 f" head at record {old.seq}: its checkpoints were deleted and its chain replaced")
    if lowest is not None and old.seq < lowest:
        return Verdict("gap", f"the node pruned its checkpoints below record {lowest}, past the witnessed head at record"
                              f" {old.seq}; the extension to record {new.seq} is unchecked")
    return Verdict("forked", f"the node's own checkpoints from record {old.seq} on (fetched) do not hold the witnessed"
                             f" head at record {old.seq}: its chain was rewritten")
