"""agentd.state.audit_export: exports hold the stored text and the checkpoints over it, and verify
alone, consecutively, and with the database as one chain."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agentd.errors import InputError
from agentd.state import queries
from agentd.state.audit_export import export_lines, parse_export, verify_export
from agentd.state.store import Store
from agentd.trust.keys import NodeKey
from tests.state.test_store import NODE, record, write_for


@pytest.fixture
async def node(data_dir: Path, node_key: NodeKey) -> sqlite3.Connection:
    async with Store(data_dir=data_dir, key=node_key, node=NODE, checkpoint_every=4) as store:
        for i in range(10):
            await store.record_decision(write_for(record(f"d{i}", f"e{i}", note="grüße \u2028 1e21")))
    return queries.open_readonly(data_dir)


def lines(conn: sqlite3.Connection, after: int = 0) -> list[str]:
    return [line for _, line in export_lines(conn, after)]


def test_an_export_holds_the_stored_text_and_the_checkpoints_after_their_records(node: sqlite3.Connection, node_key: NodeKey) -> None:
    out = lines(node)
    stored = dict(node.execute("SELECT seq, body FROM audit"))
    records = [json.loads(x) for x in out if '"type":"record"' in x]
    assert [r["seq"] for r in records] == sorted(stored)
    for line, r in zip((x for x in out if '"type":"record"' in x), records, strict=True):
        assert f',"body":{stored[r["seq"]]},' in line  # byte for byte
    kinds = [json.loads(x)["type"] + str(json.loads(x)["seq"]) for x in out]
    assert kinds.index("checkpoint4") == kinds.index("record4") + 1 and kinds[-1] == "checkpoint10"
    result = verify_export([("all.jsonl", out)], trusted_key=node_key.public_b64)
    assert result.ok and result.records == 10 and result.checkpoints == 3


def test_consecutive_exports_and_the_database_verify_as_one_chain(node: sqlite3.Connection, node_key: NodeKey) -> None:
    first, second = lines(node)[:6], lines(node, 4)  # records 1..4 with the checkpoint at 4; then after 4
    assert json.loads(second[0])["type"] == "checkpoint"  # the one at --after: it links the two
    key = node_key.public_b64
    assert verify_export([("b.jsonl", second)], trusted_key=key).ok  # alone, from mid-chain
    assert verify_export([("a.jsonl", first), ("b.jsonl", second)], trusted_key=key).ok
    assert verify_export([("a.jsonl", first)], trusted_key=key, conn=node).ok
    edited = [x.replace('"action":"alert"', '"action":"none"') if '"seq":3,' in x else x for x in first]
    result = verify_export([("a.jsonl", edited)], trusted_key=key, conn=node)
    assert not result.ok and result.first_bad_seq == 3 and "differs between a.jsonl and the database" in str(result.problem)
    result = verify_export([("a.jsonl", edited)], trusted_key=key)
    assert not result.ok and "record 3 was edited" in str(result.problem)


def test_an_export_without_its_checkpoints_proves_nothing_alone(node: sqlite3.Connection, node_key: NodeKey) -> None:
    bare = [x for x in lines(node) if '"type":"record"' in x]
    result = verify_export([("bare.jsonl", bare)], trusted_key=node_key.public_b64)
    assert not result.ok and "no signed checkpoint in it" in str(result.problem)  # anyone can compute its hashes
    assert verify_export([("bare.jsonl", bare)], trusted_key=node_key.public_b64, conn=node).ok  # the database's sign it
    some = [x for x in lines(node) if '"seq":10,' not in x or '"type":"record"' in x]  # all but the last checkpoint
    result = verify_export([("some.jsonl", some)], trusted_key=node_key.public_b64)
    assert result.ok and result.tail is not None and result.tail.records == 2  # after the checkpoint at 8, within its bound


def test_a_line_must_be_what_export_wrote_byte_for_byte(node: sqlite3.Connection, node_key: NodeKey) -> None:
    out = lines(node)
    at = next(i for i, x in enumerate(out) if '"action":"alert"' in x)
    for before, after in (('"action":"alert"', '"action":"none","action":"alert"'), ('"action":"alert"', '"action": "alert"'),
                          ('"type":"record",', '"type":"record","type":"record",')):
        edited = [*out[:at], out[at].replace(before, after, 1), *out[at + 1:]]
        result = verify_export([("x.jsonl", edited)], trusted_key=node_key.public_b64)
        assert not result.ok and str(result.problem).startswith(f"x.jsonl:{at + 1}: altered: "), (after, result)
    cp = next(i for i, x in enumerate(out) if '"type":"checkpoint"' in x)
    edited = [*out[:cp], out[cp].replace('"v":2', '"v":2.0', 1), *out[cp + 1:]]
    assert not verify_export([("x.jsonl", edited)], trusted_key=node_key.public_b64).ok


def test_bad_lines_are_named() -> None:
    with pytest.raises(InputError, match=r"x.jsonl:2: not a line of `agentd audit export`"):
        parse_export("x.jsonl", ["", "{"])
    with pytest.raises(InputError, match=r"x.jsonl:1: .*not a checkpoint: KeyError\('hash'\)"):
        parse_export("x.jsonl", ['{"type":"checkpoint","seq":1}'])
    with pytest.raises(InputError, match=r"x.jsonl:1: unknown line type 'other'"):
        parse_export("x.jsonl", ['{"type":"other"}'])
