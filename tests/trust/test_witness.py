"""The judge of a peer's audit head (agentd.trust.witness): pure, over real signed checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.errors import Rejected
from agentd.mesh.peerwire import check_peer_body
from agentd.trust.checkpoints import GENESIS, Bound, Checkpoint, make_checkpoint
from agentd.trust.keys import NodeKey, create_key
from agentd.trust.witness import MAX_CHAIN, head_problem, judge, judge_fetched

BOUND = Bound(1000, 300.0)


def chain(key: NodeKey, seqs: list[int], *, tag: str = "a", node: str = "n1") -> list[Checkpoint]:
    """Checkpoints at ``seqs``, each linked to the one before (``tag`` makes another history)."""
    out: list[Checkpoint] = []
    prev = GENESIS
    for i, seq in enumerate(seqs):
        cp = make_checkpoint(key, node=node, seq=seq, hash_=f"{tag}{seq:063d}"[:64], ts=float(i), prev=prev, bound=BOUND)
        out.append(cp)
        prev = cp.digest
    return out


def test_the_first_head_is_taken_and_the_same_head_again_is_consistent(node_key: NodeKey) -> None:
    cps = chain(node_key, [5, 10])
    key = node_key.public_b64
    assert judge(None, cps[1], [], key=key).outcome == "first"
    again = judge(cps[1], cps[1], [], key=key)
    assert again.outcome == "consistent" and again.advances


def test_a_later_head_that_links_to_the_witnessed_one_is_consistent(node_key: NodeKey) -> None:
    cps = chain(node_key, [5, 10, 20, 30])
    key = node_key.public_b64
    assert judge(cps[0], cps[1], [], key=key).outcome == "consistent"  # its prev is the witnessed head's digest
    assert judge(cps[0], cps[3], cps[:3], key=key).outcome == "consistent"  # linked through the chain sent
    assert judge(cps[1], cps[3], list(reversed(cps[:3])), key=key).outcome == "consistent"  # any order


def test_a_lower_head_is_a_rollback(node_key: NodeKey) -> None:
    cps = chain(node_key, [5, 10, 20])
    verdict = judge(cps[2], cps[1], cps[:1], key=node_key.public_b64)
    assert verdict.outcome == "rolled_back" and verdict.flagged and not verdict.advances
    assert "record 10" in verdict.detail and "record 20" in verdict.detail


def test_another_checkpoint_at_the_witnessed_seq_is_a_fork(node_key: NodeKey) -> None:
    ours, theirs = chain(node_key, [5, 10]), chain(node_key, [5, 10], tag="b")
    assert judge(ours[1], theirs[1], theirs[:1], key=node_key.public_b64).outcome == "forked"


def test_a_later_head_on_another_history_is_a_fork(node_key: NodeKey) -> None:
    ours, theirs = chain(node_key, [5, 10]), chain(node_key, [5, 10, 20], tag="b")
    verdict = judge(ours[1], theirs[2], theirs[:2], key=node_key.public_b64)
    assert verdict.outcome == "forked" and "record 10" in verdict.detail


def test_a_chain_with_a_checkpoint_missing_between_is_a_fork(node_key: NodeKey) -> None:
    cps = chain(node_key, [5, 10, 20, 30])
    assert judge(cps[0], cps[3], [cps[0], cps[2]], key=node_key.public_b64).outcome == "forked"


def test_a_chain_signed_by_another_key_is_a_fork(node_key: NodeKey, tmp_path: Path) -> None:
    other = create_key(tmp_path / "other")[0]
    cps = chain(node_key, [5])
    forged = chain(other, [5, 10])
    forged_link = make_checkpoint(node_key, node="n1", seq=20, hash_="c" * 64, ts=3.0, prev=forged[1].digest, bound=BOUND)
    assert judge(cps[0], forged_link, [cps[0], forged[1]], key=node_key.public_b64).outcome == "forked"


def test_a_later_head_whose_link_was_not_sent_is_an_unchecked_gap(node_key: NodeKey) -> None:
    cps = chain(node_key, [5, 10, 20, 30])
    verdict = judge(cps[0], cps[3], cps[2:3], key=node_key.public_b64)
    assert verdict.outcome == "gap" and verdict.advances and not verdict.flagged


def test_a_head_must_be_the_nodes_own_signed_by_its_configured_key(node_key: NodeKey, tmp_path: Path) -> None:
    other = create_key(tmp_path / "other")[0]
    key = node_key.public_b64
    good = chain(node_key, [5])[0]
    assert head_problem(good, node="n1", key=key) is None
    assert "not of" in str(head_problem(good, node="n2", key=key))
    assert "not by the key configured" in str(head_problem(chain(other, [5])[0], node="n1", key=key))
    tampered = Checkpoint(**{**good.__dict__, "seq": 6, "count": 6})
    assert "bad signature" in str(head_problem(tampered, node="n1", key=key))


def test_peerwire_bounds_a_head_body(node_key: NodeKey) -> None:
    cps = [c.as_dict() for c in chain(node_key, list(range(1, MAX_CHAIN + 3)))]

    def check(body: object) -> None:
        env = {"kind": "head", "body": body}
        check_peer_body("gossip", env, now_s=0.0, max_skew_s=30.0)

    check({"head": cps[-1], "chain": cps[-1 - MAX_CHAIN:-1]})
    for bad in ({"head": cps[-1], "chain": cps[:-1]},  # too long a chain
                {"head": cps[-1]}, {"head": cps[-1], "chain": [], "x": 1},
                {"head": {**cps[-1], "extra": 1}, "chain": []}, {"head": {**cps[-1], "seq": "7"}, "chain": []},
                {"head": {**cps[-1], "sig": "s" * 200}, "chain": []}, {"head": [], "chain": []}):
        with pytest.raises(Rejected):
            check(bad)
    with pytest.raises(Rejected):
        check_peer_body("decisions", {"kind": "head", "body": {"head": cps[-1], "chain": []}}, now_s=0.0, max_skew_s=30.0)


def test_a_later_head_whose_checkpoints_start_again_from_nothing_is_a_fork(node_key: NodeKey) -> None:
    """Issue 15 (review): someone with the database alone rewrites the chain and deletes every checkpoint; the node,
    restarted, signs the rewrite with a first checkpoint that chains to nothing. Not a gap: the history was replaced."""
    ours = chain(node_key, [5, 10])
    restarted = chain(node_key, [40, 50], tag="b")  # the first links to the genesis, as after every checkpoint was deleted
    key = node_key.public_b64
    verdict = judge(ours[1], restarted[0], [], key=key)
    assert verdict.outcome == "forked" and "start again" in verdict.detail
    # A peer that missed the restart fetches: the node's answer says it holds checkpoints from record 40 only.
    verdict = judge_fetched(ours[1], restarted[1], restarted[:1], [], key=key, lowest=40)
    assert verdict.outcome == "forked" and "start again" in verdict.detail
    # A node that pruned (retention) keeps its base checkpoint, which still links to the ones before it: a gap.
    pruned = chain(node_key, [5, 10, 20, 30, 40])
    assert judge_fetched(pruned[1], pruned[4], pruned[3:4], [], key=key, lowest=30).outcome == "gap"
