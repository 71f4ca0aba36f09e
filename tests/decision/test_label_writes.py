"""Labels replicated through the fleet state (issues 14 and 16), on the real engine and SQLite:
every label is a key of the node's own namespace written in the label's transaction; labels
hold at most half the map; a peer's replicated label teaches the text stages here, now and
after a restart."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentd.config.loader import LoadedConfig
from agentd.decision.engine import Engine
from agentd.decision.label_writes import LABEL_TTL_S, label_key, label_value
from agentd.ids import new_id
from agentd.state import fleet_state
from agentd.state.fleet_state import StateWrite
from agentd.state.labels import LabelWrite
from agentd.state.lww import Entry, expiry
from agentd.state.migrations import migrate
from agentd.trust.hlc import Clock
from agentd.trust.keys import NodeKey
from tests.decision.test_learning import READER, READER_SKILL

SKILL = "freezer"
COLD = {"temperature_c": -20.0}
HOT = {"temperature_c": 5.0}  # rules: shutdown, which waits for approval
Factory = Callable[..., LoadedConfig]


async def _labels_in_state(eng: Engine) -> dict[str, Entry]:
    entries = await eng.store.read(fleet_state.entries)
    return {e.key: e for e in entries if "/labels/" in e.key}


async def test_every_label_is_a_key_of_the_nodes_own_fleet_state(config_factory: Factory, node_key: NodeKey) -> None:
    async with Engine(loaded=config_factory(skill={"cascade": []}), key=node_key, run_handlers=False) as eng:
        rec = await eng.decide(SKILL, {**COLD, "note": "iced"}, event_id="e-1")
        await eng.label(rec["id"], "defrost", by="alice")
        approved = await eng.decide(SKILL, HOT, event_id="e-2")
        await eng.approve(approved["id"], by="bob")
        rejected = await eng.decide(SKILL, HOT, event_id="e-3")
        await eng.reject(rejected["id"], by="carol", action="alert")
        kept = await eng.decide(SKILL, HOT, event_id="e-4")
        await eng.reject(kept["id"], by="dave")  # a rejection naming no action is no label: nothing replicated
        state = await _labels_in_state(eng)
        view = eng.fleet.keys(f"nodes/{eng.node}/labels/")  # the read model rules see has them too
    node = eng.node
    assert set(state) == {label_key(node, rec["id"]), label_key(node, approved["id"]), label_key(node, rejected["id"])}
    first = state[label_key(node, rec["id"])]
    assert first.writer == node and not first.deleted and first.expires_at is not None
    assert first.value == {"skill": SKILL, "action": "defrost", "source": "operator", "by": "alice", "event_id": "e-1",
                           "inputs": rec["inputs"]}
    assert state[label_key(node, approved["id"])].value["source"] == "approval"
    assert {k: state[label_key(node, rejected["id"])].value[k] for k in ("source", "action", "by")} == {
        "source": "rejection", "action": "alert", "by": "carol"}
    assert set(view) == set(state)


def test_inputs_too_big_for_a_value_are_left_out_and_the_label_still_replicates() -> None:
    w = LabelWrite("d" * 32, "ev", SKILL, "alert", "operator", "alice")
    assert "inputs" in label_value(w, {"note": "short"})
    assert label_value(w, {"note": "x" * 2000}) == {"skill": SKILL, "action": "alert", "source": "operator", "by": "alice",
                                                    "event_id": "ev"}


def _entry(key: str, value: Any, writer: str = "peer") -> Entry:
    hlc = Clock().now()
    return Entry(key=key, hlc=hlc, writer=writer, wid=new_id(), value=value, deleted=False, expires_at=expiry(hlc, LABEL_TTL_S))


def test_labels_hold_at_most_half_of_the_map(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    migrate(conn)
    labels = [StateWrite(_entry(label_key("peer", new_id()), {"skill": SKILL, "action": "none"}), b"") for _ in range(3)]
    assert fleet_state.apply(conn, labels, max_keys=4) == ["applied", "applied", "full"]
    site = [StateWrite(_entry(k, True, writer="operator:alice"), b"") for k in ("site/a", "site/b")]
    assert fleet_state.apply(conn, site, max_keys=4) == ["applied", "applied"]  # site keys still find room
    # a label key already held is updated, not refused
    again = StateWrite(_entry(labels[0].entry.key, {"skill": SKILL, "action": "alert"}), b"")
    assert fleet_state.apply(conn, [again], max_keys=4) == ["applied"]


async def test_a_peers_replicated_label_teaches_the_text_stage_now_and_after_a_restart(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(models=[READER], skill=READER_SKILL)
    note = {**COLD, "note": "the cat is in the cold room"}
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        first = await eng.decide(SKILL, note, event_id="n-1")
        taught = "alert" if first["action"] != "alert" else "none"
        label = {"skill": SKILL, "action": taught, "source": "operator", "by": "alice", "event_id": "x", "inputs": note}
        peer = _entry(label_key("node-b", new_id()), label, writer="node-b")
        own = _entry(label_key(eng.node, new_id()), {**label, "action": "shutdown"}, writer=eng.node)  # its own: known already
        bare = _entry(label_key("node-c", new_id()), {k: v for k, v in label.items() if k != "inputs"}, writer="node-c")
        other = _entry(label_key("node-d", new_id()), {**label, "skill": "no-such-skill"}, writer="node-d")
        assert await eng.learn_replicated([peer, own, bare, other]) == 1
        second = await eng.decide(SKILL, note, event_id="n-2")
        await eng.store.write(lambda c: fleet_state.apply(c, [StateWrite(peer, b"")]))
    assert second["action"] == taught and second["stages"][0]["similarity"] >= 0.999
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as again:  # learnt again at start from the map
        third = await again.decide(SKILL, note, event_id="n-3")
    assert third["action"] == taught


async def test_labels_arriving_together_are_learnt_in_one_batch(config_factory: Factory, node_key: NodeKey, wait_until: Any) -> None:
    cfg = config_factory(models=[READER], skill=READER_SKILL)
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        stage = eng.stages["reader"]
        calls: list[int] = []
        real = stage.learn_many
        stage.learn_many = lambda items: (calls.append(len(items)), real(items))[1]  # type: ignore[method-assign]
        for i in range(40):  # a healed partition delivers a peer's labels in one go
            label = {"skill": SKILL, "action": "alert", "source": "operator", "by": "alice", "event_id": f"e{i}",
                     "inputs": {**COLD, "note": f"door {i} was left open"}}
            eng.replicated_label_arrived(_entry(label_key("node-b", new_id()), label, writer="node-b"))
        await wait_until(lambda: _async(stage.example_count == 43))
    assert sum(calls) == 40 and len(calls) <= 2  # one refit for the lot (two if the first started alone)


async def _async(value: Any) -> Any:
    return value
