"""Judging a peer's head over the checkpoints fetched from it (agentd.trust.witness.judge_fetched), and
the bounds peerwire puts on the fetch and the fleet's witness request: pure, over real signed checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.errors import Rejected
from agentd.mesh.peerwire import MAX_FETCH, check_peer_body
from agentd.trust.keys import NodeKey, create_key
from agentd.trust.witness import judge, judge_fetched
from tests.trust.test_witness import chain


def test_a_gap_closed_by_the_fetched_checkpoints_is_consistent(node_key: NodeKey) -> None:
    cps = chain(node_key, [5, 10, 20, 30, 40])
    key = node_key.public_b64
    assert judge(cps[0], cps[4], cps[3:4], key=key).outcome == "gap"  # what the head alone says
    verdict = judge_fetched(cps[0], cps[4], cps[0:3], cps[3:4], key=key, lowest=5)
    assert verdict.outcome == "consistent"


def test_a_fetched_chain_without_the_witnessed_checkpoint_is_a_fork(node_key: NodeKey) -> None:
    ours, theirs = chain(node_key, [5, 10]), chain(node_key, [7, 12, 20, 30], tag="b")
    key = node_key.public_b64
    assert judge(ours[1], theirs[3], theirs[2:3], key=key).outcome == "gap"
    verdict = judge_fetched(ours[1], theirs[3], theirs[1:2], theirs[2:3], key=key, lowest=7)
    assert verdict.outcome == "forked" and "rewritten" in verdict.detail


def test_a_fetched_chain_with_another_checkpoint_at_the_witnessed_seq_is_a_fork(node_key: NodeKey) -> None:
    ours, theirs = chain(node_key, [5, 10]), chain(node_key, [5, 10, 20, 30], tag="b")
    verdict = judge_fetched(ours[1], theirs[3], theirs[1:3], [], key=node_key.public_b64, lowest=5)
    assert verdict.outcome == "forked" and "record 10" in verdict.detail


def test_a_fetched_chain_missing_a_checkpoint_between_is_a_fork(node_key: NodeKey) -> None:
    cps = chain(node_key, [5, 10, 20, 30, 40])
    verdict = judge_fetched(cps[0], cps[4], [cps[0], cps[1], cps[3]], [], key=node_key.public_b64, lowest=5)
    assert verdict.outcome == "forked"


def test_two_checkpoints_at_one_seq_are_a_fork(node_key: NodeKey) -> None:
    ours, theirs = chain(node_key, [5, 10, 20]), chain(node_key, [5, 10, 20], tag="b")
    verdict = judge_fetched(ours[0], ours[2], [ours[0], ours[1]], [theirs[1]], key=node_key.public_b64, lowest=5)
    assert verdict.outcome == "forked" and "two different" in verdict.detail


def test_a_witnessed_head_the_node_has_pruned_stays_an_unchecked_gap(node_key: NodeKey) -> None:
    cps = chain(node_key, [5, 10, 20, 30, 40])
    verdict = judge_fetched(cps[0], cps[4], [], cps[3:4], key=node_key.public_b64, lowest=20)
    assert verdict.outcome == "gap" and "pruned" in verdict.detail


def test_a_key_changed_in_the_peers_config_starts_witnessing_again(node_key: NodeKey, tmp_path: Path) -> None:
    new = create_key(tmp_path / "new")[0]
    old_head, new_head = chain(node_key, [5])[0], chain(new, [5, 10])[1]
    verdict = judge(old_head, new_head, [], key=new.public_b64)
    assert verdict.outcome == "first" and "changed" in verdict.detail


def _check(kind: str, body: object) -> None:
    check_peer_body("gossip", {"kind": kind, "body": body}, now_s=0.0, max_skew_s=30.0)


def test_peerwire_bounds_the_fetch_and_the_witness_request(node_key: NodeKey) -> None:
    cps = [c.as_dict() for c in chain(node_key, list(range(1, MAX_FETCH + 3)))]
    _check("checkpoints_request", {"node": "n1", "after": 5, "upto": 9})
    _check("checkpoints", {"to": "n2", "request": "r1", "checkpoints": cps[:MAX_FETCH], "more": True, "lowest": 1})
    _check("checkpoints", {"to": "n2", "request": "r1", "checkpoints": [], "more": False, "lowest": None})
    _check("witness_request", {"node": "n1"})
    for kind, bad in (
        ("checkpoints_request", {"node": "n1", "after": 9, "upto": 9}),
        ("checkpoints_request", {"node": "n1", "after": -1, "upto": 9}),
        ("checkpoints_request", {"node": "n1", "after": True, "upto": 9}),
        ("checkpoints_request", {"node": "n1", "after": 1, "upto": 9, "x": 1}),
        ("checkpoints", {"to": "n2", "request": "r1", "checkpoints": cps, "more": True, "lowest": 1}),
        ("checkpoints", {"to": "n2", "request": "r1", "checkpoints": [{"x": 1}], "more": True, "lowest": 1}),
        ("checkpoints", {"to": "n2", "request": "r1", "checkpoints": [], "more": "yes", "lowest": 1}),
        ("checkpoints", {"to": "", "request": "r1", "checkpoints": [], "more": False, "lowest": None}),
        ("witness_request", {"node": "n1", "extra": 1}),
        ("witness_request", {"node": "x" * 65}),
    ):
        with pytest.raises(Rejected):
            _check(kind, bad)
