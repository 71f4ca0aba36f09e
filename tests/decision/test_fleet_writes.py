"""A skill's fleet_state: its decisions set the node's own keys (committed with the decision, gossiped
from its outbox), and rules and guards read the map through fleet_value() and fleet_keys()."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentd.config.loader import LoadedConfig
from agentd.decision.engine import Engine
from agentd.decision.fleet import FleetView
from agentd.errors import ConfigError
from agentd.mesh.wire import decision_wire
from agentd.state import fleet_state
from agentd.state.lww import Entry
from agentd.trust.keys import NodeKey
from tests.conftest import make_config

SKILL = "freezer"
HOT, COLD = {"temperature_c": 5.0}, {"temperature_c": -20.0}
WRITES = {
    "cascade": [], "approval": {"actions": []},
    "fleet_state": [
        {"action": "shutdown", "key": "unit_down", "value": {"why": "hot"}, "ttl_s": 3600},
        {"action": "none", "key": "unit_down", "unset": True},
    ],
}
Factory = Callable[..., LoadedConfig]


async def test_a_decision_sets_and_clears_the_nodes_own_key_in_its_transaction(config_factory: Factory, node_key: NodeKey) -> None:
    guard = {"name": "one_down_is_enough", "when": 'action == "shutdown" && size(fleet_keys("nodes/")) > 0', "action": "alert"}
    loaded = config_factory(mqtt={"enabled": True}, skill={**WRITES, "guards": [guard]})
    async with Engine(loaded=loaded, key=node_key, outbound=decision_wire(loaded.config, node_key)) as eng:
        first = await eng.decide(SKILL, HOT)
        assert first["action"] == "shutdown"
        [e] = await eng.store.read(fleet_state.entries)
        assert (e.key, e.value, e.writer, e.hlc) == ("nodes/test-node/unit_down", {"why": "hot"}, "test-node", first["hlc"])
        assert e.expires_at == pytest.approx(int(first["hlc"][:13]) / 1000 + 3600)
        assert eng.fleet.value("nodes/test-node/unit_down") == {"why": "hot"}
        second = await eng.decide(SKILL, HOT)  # the guard reads the key the first decision set
        assert (second["action"], second["guard"]) == ("alert", "one_down_is_enough")
        gossip = await eng.store.read(lambda c: c.execute("SELECT payload FROM outbox WHERE topic LIKE '%/gossip/test-node'").fetchall())
        [sent] = [json.loads(p) for (p,) in gossip]
        origin = sent["body"]["origin"]
        assert sent["kind"] == "state" and origin["kind"] == "state_write" and origin["node"] == "test-node"
        assert origin["body"] == {"key": "nodes/test-node/unit_down", "value": {"why": "hot"}, "expires_in_s": 3600.0}
        await eng.decide(SKILL, COLD)
        [gone] = await eng.store.read(fleet_state.entries)
        assert gone.deleted and eng.fleet.value("nodes/test-node/unit_down") is None
        assert eng.fleet.keys("nodes/") == []
    async with Engine(loaded=loaded, key=node_key) as eng:  # a restart reads the map back
        assert eng.fleet.keys("nodes/") == [] and (await eng.store.read(fleet_state.entries)) == [gone]


async def test_without_mqtt_the_write_is_local(config_factory: Factory, node_key: NodeKey) -> None:
    async with Engine(loaded=config_factory(skill=WRITES), key=node_key) as eng:
        await eng.decide(SKILL, HOT)
        assert eng.fleet.keys("nodes/test-node/") == ["nodes/test-node/unit_down"]
        assert await eng.store.read(lambda c: c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]) == 0


def test_fleet_keys_and_values_read_live_entries_only() -> None:
    fleet, now = FleetView(), time.time()
    fleet.apply(Entry("nodes/a/defrosting", "1700000000000-0000", "a", "w1", True, expires_at=now + 60))
    fleet.apply(Entry("nodes/b/defrosting", "1700000000000-0000", "b", "w2", True, expires_at=now - 1))  # expired
    fleet.apply(Entry("nodes/c/defrosting", "1700000000000-0000", "c", "w3", deleted=True))
    fleet.apply(Entry("site/generator_power", "1700000000000-0000", "operator:alice", "c1", True))
    fleet.apply(Entry("site/generator_power", "1699999999999-0000", "operator:bob", "c0", False))  # older: loses
    assert fleet.keys("nodes/") == ["nodes/a/defrosting"]
    assert fleet.value("nodes/b/defrosting") is None and fleet.value("site/generator_power") is True
    fn = fleet.functions()
    assert fn["fleet_keys"]("site/") == ["site/generator_power"] and fn["fleet_value"]("nope") is None


def test_fleet_state_config_is_checked(tmp_path: Path) -> None:
    for bad, words in (
        ({"action": "explode", "key": "x"}, "unknown action 'explode'"),
        ({"action": "none", "key": "Bad Key"}, "under nodes/<node id>/"),
        ({"action": "none", "key": "x", "value": None}, "null is not a value"),
        ({"action": "none", "key": "x", "value": "v" * 2000}, "over the limit of 1024"),
        ({"action": "none", "key": "x", "unset": True, "ttl_s": 5}, "takes no value and no ttl_s"),
    ):
        with pytest.raises(ConfigError, match=words):
            make_config(tmp_path, skill={"fleet_state": [bad]})
