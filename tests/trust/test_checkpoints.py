"""agentd.trust.checkpoints: the signed payloads, their chain, and key rotation records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agentd.trust.canonical import canonical
from agentd.trust.checkpoints import (
    GENESIS,
    Bound,
    Checkpoint,
    Rotation,
    check_checkpoints,
    make_checkpoint,
    rotation_body,
)
from agentd.trust.keys import NodeKey, create_key
from tests.trust.test_audit import chain, sign_chain


def test_a_checkpoint_signs_its_place_count_time_predecessor_and_bound(node_key: NodeKey) -> None:
    cp = make_checkpoint(node_key, node="n1", seq=7, hash_="a" * 64, ts=1.5, prev="b" * 64, bound=Bound(10, 60.0))
    assert cp.valid() and cp.count == 7 and cp.v == 2 and cp.bound == Bound(10, 60.0)
    assert cp.payload() == canonical({"v": 2, "node": "n1", "seq": 7, "hash": "a" * 64, "count": 7, "ts": 1.5,
                                      "prev": "b" * 64, "every": 10, "interval_s": 60.0})
    for change in ({"ts": 2.5}, {"prev": GENESIS}, {"every": 1000}, {"count": 8}, {"node": "n2"}):
        assert not dataclasses.replace(cp, **change).valid(), change
    assert Checkpoint.from_dict(cp.as_dict()) == cp
    assert cp.digest != dataclasses.replace(cp, ts=2.5).digest


def rotated(old: NodeKey, new: NodeKey) -> tuple[list[Checkpoint], list[Rotation]]:
    """Records 1..8 signed by ``old`` at 4, a rotation at 6, signed by ``new`` at 6 and 8."""
    rows = chain(8)
    body = rotation_body(old, new, seq=6, prev_hash=rows[4].hash)
    first = sign_chain(old, rows, [4])[0]
    at6 = make_checkpoint(new, node="n1", seq=6, hash_=rows[5].hash, ts=10.0, prev=first.digest, bound=Bound(1000, 300.0))
    at8 = make_checkpoint(new, node="n1", seq=8, hash_=rows[7].hash, ts=11.0, prev=at6.digest, bound=Bound(1000, 300.0))
    return [first, at6, at8], [Rotation(6, rows[4].hash, body)]


def test_a_rotation_signed_by_both_keys_hands_the_chain_over(node_key: NodeKey, tmp_path: Path) -> None:
    new = create_key(tmp_path / "new")[0]
    cps, rotations = rotated(node_key, new)
    for pinned in (node_key.public_b64, new.public_b64, None):
        assert check_checkpoints(cps, rotations, start_seq=0, anchored=True, trusted_key=pinned) == (None, None, new.public_b64)
    other = create_key(tmp_path / "other")[0]
    seq, problem, _ = check_checkpoints(cps, rotations, start_seq=0, anchored=True, trusted_key=other.public_b64)
    assert seq == 4 and "not by the pinned key" in str(problem)


def test_a_rotation_without_the_old_keys_signature_is_refused(node_key: NodeKey, tmp_path: Path) -> None:
    intruder = create_key(tmp_path / "intruder")[0]
    cps, rotations = rotated(node_key, intruder)
    forged = {**rotations[0].body, "sig_old": intruder.sign(b"anything")}
    seq, problem, _ = check_checkpoints(cps, [Rotation(6, rotations[0].prev_hash, forged)], start_seq=0, anchored=True,
                                        trusted_key=node_key.public_b64)
    assert seq == 6 and "not signed by its old key" in str(problem)
    moved = Rotation(7, rotations[0].prev_hash, rotations[0].body)  # the signatures bind the record's place
    seq, problem, _ = check_checkpoints(cps, [moved], start_seq=0, anchored=True, trusted_key=node_key.public_b64)
    assert seq == 6 and "unknown key" in str(problem)


def test_a_checkpoint_by_the_old_key_after_a_rotation_is_refused(node_key: NodeKey, tmp_path: Path) -> None:
    new = create_key(tmp_path / "new")[0]
    cps, rotations = rotated(node_key, new)
    late = make_checkpoint(node_key, node="n1", seq=8, hash_=cps[2].hash, ts=11.0, prev=cps[1].digest, bound=Bound(1000, 300.0))
    seq, problem, _ = check_checkpoints([*cps[:2], late], rotations, start_seq=0, anchored=True, trusted_key=node_key.public_b64)
    assert seq == 8 and "signed by an unknown key" in str(problem)
