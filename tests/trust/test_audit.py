"""agentd.audit: the hash chain and checkpoint verification, as pure functions over rows."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agentd.trust.audit import (
    DEFAULT_BOUND,
    GENESIS,
    AuditRow,
    Bound,
    Checkpoint,
    checkpoint_payload,
    record_hash,
    verify_chain,
)
from agentd.trust.canonical import canonical
from agentd.trust.checkpoints import make_checkpoint
from agentd.trust.keys import NodeKey, create_key


def chain(n: int, *, start_seq: int = 0, start_hash: str = GENESIS, kinds: dict[int, tuple[str, dict]] | None = None) -> list[AuditRow]:
    """``n`` decision records one second apart; ``kinds`` puts another kind and body at a seq."""
    rows, prev = [], start_hash
    for seq in range(start_seq + 1, start_seq + n + 1):
        kind, obj = (kinds or {}).get(seq, ("decision", {"decision_id": f"d{seq}", "action": "none"}))
        body = canonical(obj).decode()
        ts = 1_700_000_000.0 + seq
        h = record_hash(prev, seq, ts, kind, f"d{seq}", body)
        rows.append(AuditRow(seq, ts, kind, f"d{seq}", body, prev, h))
        prev = h
    return rows


def rehash(rows: list[AuditRow], start: int) -> list[AuditRow]:
    """Recompute every hash from index ``start`` on, as a forger with no key would."""
    out = rows[:start]
    prev = out[-1].hash if out else GENESIS
    for r in rows[start:]:
        h = record_hash(prev, r.seq, r.ts, r.kind, r.ref, r.body)
        out.append(dataclasses.replace(r, prev_hash=prev, hash=h))
        prev = h
    return out


def sign_checkpoint(key: NodeKey, row: AuditRow, node: str = "n1", *, prev: Checkpoint | None = None,
                    bound: Bound = DEFAULT_BOUND) -> Checkpoint:
    """A chained (version 2) checkpoint over ``row``, after ``prev``."""
    return make_checkpoint(key, node=node, seq=row.seq, hash_=row.hash, ts=row.ts + 0.5,
                           prev=prev.digest if prev else GENESIS, bound=bound)


def sign_chain(key: NodeKey, rows: list[AuditRow], at: list[int]) -> list[Checkpoint]:
    """Chained checkpoints at the seqs ``at``."""
    out: list[Checkpoint] = []
    for seq in at:
        out.append(sign_checkpoint(key, next(r for r in rows if r.seq == seq), prev=out[-1] if out else None))
    return out


def legacy_checkpoint(key: NodeKey, row: AuditRow, node: str = "n1") -> Checkpoint:
    """A version 1 checkpoint, as agentd wrote them before issue 15."""
    ts = row.ts + 0.5
    return Checkpoint(row.seq, row.hash, ts, node, key.public_b64, key.sign(checkpoint_payload(node, row.seq, row.hash, ts)))


def test_good_chain_verifies() -> None:
    result = verify_chain(chain(10), [])
    assert result.ok and result.records == 10 and result.first_bad_seq is None and result.problem is None
    assert result.as_dict() == {
        "ok": True, "records": 10, "checkpoints": 0, "first_bad_seq": None, "problem": None, "key": None,
        "tail": {"after_seq": 0, "records": 10, "seconds": 9.0, "bound_records": 1000, "bound_s": 300.0},
        "head": {"seq": 10, "hash": result.head[1] if result.head else None},
    }


def test_empty_chain_verifies() -> None:
    assert verify_chain([], []).ok


def test_chain_with_valid_checkpoints_verifies(node_key: NodeKey) -> None:
    rows = chain(10)
    result = verify_chain(rows, sign_chain(node_key, rows, [5, 10]), trusted_key=node_key.public_b64)
    assert result.ok and result.checkpoints == 2 and result.key == node_key.public_b64
    assert result.tail is not None and result.tail.records == 0


def test_edit_detected_at_the_edited_record() -> None:
    rows = chain(10)
    body = json.loads(rows[5].body)
    body["action"] = "shutdown"
    rows[5] = dataclasses.replace(rows[5], body=canonical(body).decode())
    result = verify_chain(rows, [])
    assert not result.ok and result.first_bad_seq == 6
    assert "record 6 was edited" in (result.problem or "")


@pytest.mark.parametrize("field", ["ts", "kind", "ref"])
def test_edit_of_any_field_detected(field: str) -> None:
    rows = chain(5)
    value = {"ts": rows[2].ts + 1, "kind": "approval", "ref": "other"}[field]
    rows[2] = dataclasses.replace(rows[2], **{field: value})
    result = verify_chain(rows, [])
    assert not result.ok and result.first_bad_seq == 3


def test_edit_with_rehash_detected_at_the_next_link() -> None:
    rows = chain(10)
    body = canonical({"decision_id": "d4", "action": "shutdown"}).decode()
    rows[3] = dataclasses.replace(
        rows[3], body=body, hash=record_hash(rows[3].prev_hash, 4, rows[3].ts, "decision", "d4", body)
    )
    result = verify_chain(rows, [])
    assert not result.ok and result.first_bad_seq == 5
    assert "does not link" in (result.problem or "")


def test_deletion_detected_and_the_missing_seq_named() -> None:
    rows = chain(10)
    del rows[3]
    result = verify_chain(rows, [])
    assert not result.ok and result.first_bad_seq == 4
    assert "record 4 is missing" in (result.problem or "")


def test_deletion_with_renumbering_and_rehash_detected_at_the_link() -> None:
    rows = chain(10)
    del rows[3]
    rows = [dataclasses.replace(r, seq=i) if i >= 4 else r for i, r in enumerate(rows, 1)]
    result = verify_chain(rows, [])
    assert not result.ok and result.first_bad_seq == 4


def test_insertion_detected() -> None:
    rows = chain(10)
    intruder = dataclasses.replace(rows[4], ref="d-forged")  # a second "record 5" after record 5
    rows.insert(5, intruder)
    result = verify_chain(rows, [])
    assert not result.ok and result.first_bad_seq == 6
    rows = chain(10)
    renumbered = [
        *rows[:5],
        dataclasses.replace(rows[4], seq=6, ref="d-forged"),
        *[dataclasses.replace(r, seq=r.seq + 1) for r in rows[5:]],
    ]
    result = verify_chain(renumbered, [])
    assert not result.ok and result.first_bad_seq == 6


def test_reorder_detected() -> None:
    rows = chain(10)
    rows[3], rows[4] = rows[4], rows[3]
    result = verify_chain(rows, [])
    assert not result.ok and result.first_bad_seq == 4
    # the same with the seq numbers swapped back so they run in order
    rows = chain(10)
    a, b = rows[3], rows[4]
    rows[3], rows[4] = dataclasses.replace(b, seq=4), dataclasses.replace(a, seq=5)
    result = verify_chain(rows, [])
    assert not result.ok and result.first_bad_seq == 4


def test_truncation_detected_by_a_checkpoint(node_key: NodeKey) -> None:
    rows = chain(10)
    cp = sign_checkpoint(node_key, rows[9])
    result = verify_chain(rows[:7], [cp])
    assert not result.ok and result.first_bad_seq == 10
    assert "chain truncated" in (result.problem or "")


def test_checkpoint_with_bad_signature_detected(node_key: NodeKey) -> None:
    rows = chain(10)
    cp = sign_checkpoint(node_key, rows[4])
    forged = dataclasses.replace(cp, ts=cp.ts + 1)  # signed payload no longer matches
    result = verify_chain(rows, [forged])
    assert not result.ok and result.first_bad_seq == 5
    assert "bad signature" in (result.problem or "")
    garbage = dataclasses.replace(cp, sig="not base64!")
    assert not verify_chain(rows, [garbage]).ok


def test_checkpoint_signed_by_another_key_detected(node_key: NodeKey, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = create_key(tmp_path / "other")[0]
    rows = chain(10)
    cp = sign_checkpoint(other, rows[4])
    assert verify_chain(rows, [cp]).ok  # valid signature, no trust anchor given
    result = verify_chain(rows, [cp], trusted_key=node_key.public_b64)
    assert not result.ok and result.first_bad_seq == 5 and "unknown key" in (result.problem or "")
    assert "pinned key" in (result.problem or "")


def test_rewritten_chain_after_a_checkpoint_detected(node_key: NodeKey) -> None:
    rows = chain(10)
    cp = sign_checkpoint(node_key, rows[6])
    # The forger edits record 3 and recomputes every hash: the links are all fine again...
    body = canonical({"decision_id": "d3", "action": "shutdown"}).decode()
    rows[2] = dataclasses.replace(rows[2], body=body)
    forged = rehash(rows, 2)
    assert verify_chain(forged, []).ok
    # ...but record 7 no longer matches what the node signed.
    result = verify_chain(forged, [cp])
    assert not result.ok and result.first_bad_seq == 7
    assert "chain rewritten" in (result.problem or "")


def test_verification_from_an_unanchored_start() -> None:
    """A stretch of chain (an export from mid-chain) verifies from its first record's link."""
    full = chain(10)
    tail = full[5:]
    assert verify_chain(tail, [], base_seq=5, base_hash=full[4].hash, anchored=False).ok
    bad = verify_chain(tail, [], base_seq=5, base_hash=GENESIS, anchored=False)
    assert not bad.ok and bad.first_bad_seq == 6


def test_unreadable_body_is_reported_not_raised() -> None:
    rows = chain(3)
    rows[1] = dataclasses.replace(rows[1], body="{not json")
    result = verify_chain(rows, [])
    assert not result.ok and result.first_bad_seq == 2 and "unreadable" in (result.problem or "")


def test_record_hash_depends_on_every_input() -> None:
    base = ("a" * 64, 1, 1.5, "decision", "d1", '{"x":1}')
    h = record_hash(*base)
    for i, changed in enumerate([("b" * 64), 2, 1.6, "approval", "d2", '{"x":2}']):
        args = list(base)
        args[i] = changed
        assert record_hash(*args) != h
    assert record_hash(*base[:4], None, base[5]) != h


# -- chained checkpoints, the unsigned tail, sealed records, the base (issue 15) ---------------


def test_a_deleted_checkpoint_breaks_the_chain_of_checkpoints(node_key: NodeKey) -> None:
    rows = chain(12)
    cps = sign_chain(node_key, rows, [3, 6, 9, 12])
    assert verify_chain(rows, cps, trusted_key=node_key.public_b64).ok
    result = verify_chain(rows, [cps[0], cps[2], cps[3]], trusted_key=node_key.public_b64)
    assert not result.ok and result.first_bad_seq == 9 and "does not follow the checkpoint at record 3" in str(result.problem)
    result = verify_chain(rows, cps[1:], trusted_key=node_key.public_b64)  # the first ones deleted
    assert not result.ok and result.first_bad_seq == 6 and "checkpoints deleted" in str(result.problem)


def test_the_unsigned_tail_is_reported_and_bounded_by_the_signed_bound(node_key: NodeKey) -> None:
    rows = chain(10)
    tight = sign_checkpoint(node_key, rows[3], bound=Bound(6, 300.0))
    result = verify_chain(rows, [tight], trusted_key=node_key.public_b64)
    assert result.ok and result.tail is not None
    assert (result.tail.after_seq, result.tail.records, result.tail.seconds) == (4, 6, 5.5)  # 4.5 s after it to record 10
    tighter = sign_checkpoint(node_key, rows[3], bound=Bound(5, 300.0))
    result = verify_chain(rows, [tighter], trusted_key=node_key.public_b64)
    assert not result.ok and result.first_bad_seq == 5
    assert "6 record(s) over 5.5 s after the checkpoint at record 4" in str(result.problem)
    assert "bound of 5 records / 300 s" in str(result.problem)
    brief = sign_checkpoint(node_key, rows[3], bound=Bound(1000, 5.0))
    result = verify_chain(rows, [brief], trusted_key=node_key.public_b64)
    assert not result.ok and "bound of 1000 records / 5 s" in str(result.problem)


def test_a_chain_without_checkpoints_is_bounded_by_the_bound_given() -> None:
    rows = chain(10)
    assert verify_chain(rows, [], bound=Bound(10, 9.0)).ok
    result = verify_chain(rows, [], bound=Bound(9, 300.0))
    assert not result.ok and result.first_bad_seq == 1 and "after the chain's start (record 0)" in str(result.problem)
    assert not verify_chain(rows, [], bound=Bound(1000, 8.0)).ok  # 9 s from the first record to the last


@pytest.mark.parametrize("kind", ["stop", "retention", "key_rotation", "audit_upgrade"])
def test_a_sealed_record_needs_a_checkpoint_at_it(node_key: NodeKey, kind: str) -> None:
    body = {"reason": "signal"} if kind != "key_rotation" else {}
    rows = chain(6, kinds={4: (kind, body)})
    if kind == "key_rotation":
        return  # its own checks come first: tests/trust/test_checkpoints.py
    assert verify_chain(rows, sign_chain(node_key, rows, [4, 6]), trusted_key=node_key.public_b64).ok
    result = verify_chain(rows, sign_chain(node_key, rows, [6]), trusted_key=node_key.public_b64)
    assert not result.ok and result.first_bad_seq == 4 and f"record 4 ({kind}) has no signed checkpoint at it" in str(result.problem)


def test_an_audit_gap_record_fails_verification(node_key: NodeKey) -> None:
    rows = chain(5, kinds={5: ("audit_gap", {"after_seq": 0, "records": 4000})})
    result = verify_chain(rows, sign_chain(node_key, rows, [5]), trusted_key=node_key.public_b64)
    assert not result.ok and result.first_bad_seq == 5 and "found its checkpoints missing" in str(result.problem)


def pruned(node_key: NodeKey, *, binds: int | None) -> tuple[list[AuditRow], list[Checkpoint]]:
    """Records 6..12 of a chain pruned at the checkpoint at 5, with a retention record at 10 binding ``binds``."""
    head = chain(5)
    base_cp = sign_checkpoint(node_key, head[4])
    base = {"seq": binds, "hash": head[4].hash, "checkpoint": base_cp.digest} if binds is not None else None
    rows = chain(7, start_seq=5, start_hash=head[4].hash, kinds={10: ("retention", {"audit_pruned": 5, "base": base})})
    cp10 = sign_checkpoint(node_key, rows[4], prev=base_cp)
    return rows, [base_cp, cp10, sign_checkpoint(node_key, rows[6], prev=cp10)]


def test_a_pruned_chain_starts_at_a_checkpoint_that_a_signed_retention_record_binds(node_key: NodeKey) -> None:
    rows, cps = pruned(node_key, binds=5)
    key = node_key.public_b64
    assert verify_chain(rows, cps, base_seq=5, base_hash=rows[0].prev_hash, trusted_key=key).ok
    result = verify_chain(rows, cps[1:], base_seq=5, base_hash=rows[0].prev_hash, trusted_key=key)  # the base's checkpoint deleted
    assert not result.ok and "follows a checkpoint that is gone" in str(result.problem)
    rows, cps = pruned(node_key, binds=None)  # a retention record that moved no base
    result = verify_chain(rows, cps, base_seq=5, base_hash=rows[0].prev_hash, trusted_key=key)
    assert not result.ok and "no signed retention record binds that start" in str(result.problem)
    rows, cps = pruned(node_key, binds=3)  # retention pruned to 3; someone deleted on to 5
    result = verify_chain(rows, cps, base_seq=5, base_hash=rows[0].prev_hash, trusted_key=key)
    assert not result.ok and "pruned only up to record 3" in str(result.problem)


def test_legacy_checkpoints_verify_below_the_chained_ones(node_key: NodeKey) -> None:
    rows = chain(10, kinds={3: ("stop", {})})
    first_v2 = sign_checkpoint(node_key, rows[7])
    cps = [legacy_checkpoint(node_key, rows[1]), first_v2, sign_checkpoint(node_key, rows[9], prev=first_v2)]
    result = verify_chain(rows, cps, trusted_key=node_key.public_b64)
    assert result.ok  # the legacy stop at 3 had its checkpoint in a transaction of its own
    late = [first_v2, legacy_checkpoint(node_key, rows[9])]
    result = verify_chain(rows, late, trusted_key=node_key.public_b64)
    assert not result.ok and result.first_bad_seq == 10 and "legacy format, after chained ones" in str(result.problem)
