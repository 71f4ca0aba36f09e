"""agentd.audit: the hash chain and checkpoint verification, as pure functions over rows."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agentd.trust.audit import GENESIS, AuditRow, Checkpoint, checkpoint_payload, record_hash, verify_chain
from agentd.trust.canonical import canonical
from agentd.trust.keys import NodeKey, create_key


def chain(n: int, *, start_seq: int = 0, start_hash: str = GENESIS) -> list[AuditRow]:
    rows, prev = [], start_hash
    for seq in range(start_seq + 1, start_seq + n + 1):
        body = canonical({"decision_id": f"d{seq}", "action": "none"}).decode()
        ts = 1_700_000_000.0 + seq
        h = record_hash(prev, seq, ts, "decision", f"d{seq}", body)
        rows.append(AuditRow(seq, ts, "decision", f"d{seq}", body, prev, h))
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


def sign_checkpoint(key: NodeKey, row: AuditRow, node: str = "n1") -> Checkpoint:
    ts = row.ts + 0.5
    sig = key.sign(checkpoint_payload(node, row.seq, row.hash, ts))
    return Checkpoint(row.seq, row.hash, ts, node, key.public_b64, sig)


def test_good_chain_verifies() -> None:
    result = verify_chain(chain(10), [])
    assert result.ok and result.records == 10 and result.first_bad_seq is None and result.problem is None
    assert result.as_dict() == {"ok": True, "records": 10, "checkpoints": 0, "first_bad_seq": None, "problem": None}


def test_empty_chain_verifies() -> None:
    assert verify_chain([], []).ok


def test_chain_with_valid_checkpoints_verifies(node_key: NodeKey) -> None:
    rows = chain(10)
    result = verify_chain(
        rows, [sign_checkpoint(node_key, rows[4]), sign_checkpoint(node_key, rows[9])], trusted_key=node_key.public_b64
    )
    assert result.ok and result.checkpoints == 2


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


def test_verification_from_a_pruned_base() -> None:
    full = chain(10)
    tail = full[5:]
    assert verify_chain(tail, [], base_seq=5, base_hash=full[4].hash).ok
    bad = verify_chain(tail, [], base_seq=5, base_hash=GENESIS)
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
