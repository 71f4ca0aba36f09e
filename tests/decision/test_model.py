"""The typed decision record writes exactly what earlier versions wrote (the audit chain hashes it)."""

from __future__ import annotations

import json
from pathlib import Path

from agentd.decision.engine import Engine
from agentd.decision.model import DecisionRecord, Mode, ModelRef, Source, Status
from agentd.trust.canonical import canonical
from agentd.trust.keys import NodeKey
from tests.conftest import SKILL, make_config

# Two records written by agentd before the typed record existed (commit e7afbb3, the
# engine's dict literal), with tests/conftest.py's base config.
GOLDEN = json.loads((Path(__file__).parent / "golden_records.json").read_text())


def test_golden_records_round_trip_byte_for_byte() -> None:
    for old in GOLDEN:
        typed = DecisionRecord.from_dict(old)
        assert canonical(typed.to_dict()) == canonical(old)
        assert isinstance(typed.source, Source) and isinstance(typed.status, Status) and isinstance(typed.mode, Mode)


async def test_the_engine_writes_records_of_the_same_shape(tmp_path: Path, node_key: NodeKey) -> None:
    loaded = make_config(tmp_path)
    async with Engine(loaded=loaded, key=node_key, run_handlers=False) as eng:
        new = [await eng.decide(SKILL, g["inputs"], event_id=g["event_id"]) for g in GOLDEN]
    added = {"rules_answer"}  # issue 13: the rules' answer beside an accepted model answer (DESIGN section 3)
    for old, rec in zip(GOLDEN, new, strict=True):
        assert set(rec) - added == set(old)
        assert {k: type(v) for k, v in rec.items() if k not in added} == {k: type(v) for k, v in old.items()}
        same = ("event_id", "node", "skill", "action", "status", "source", "model", "confidence", "fallback_reason",
                "rule", "guard", "late_answer", "mode", "origin", "inputs")
        assert {k: rec[k] for k in same} == {k: old[k] for k in same}
        assert [set(s) for s in rec["stages"]] == [set(s) for s in old["stages"]]


def test_optional_members_appear_only_when_set() -> None:
    base = DecisionRecord.from_dict(GOLDEN[0])
    assert not {"approval", "rule_errors", "rules_answer"} & set(base.to_dict())
    d = DecisionRecord(**{**base.__dict__, "approval": {"status": "pending"}, "rule_errors": ["x"] * 9,
                          "model": ModelRef("m", "1", None)}).to_dict()
    assert d["approval"] == {"status": "pending"} and d["rule_errors"] == ["x"] * 5 and d["model"]["sha256"] is None
