"""A skill's fleet_state writes for an action that needed approval happen when it is approved (or a
rejection or expiry applies another action), not when it was merely proposed (issue 16)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from agentd.config.loader import LoadedConfig
from agentd.decision.engine import Engine
from agentd.mesh.wire import decision_wire
from agentd.state import fleet_state, queries
from agentd.trust.hlc import decode
from agentd.trust.keys import NodeKey

SKILL = "freezer"
HOT = {"temperature_c": 5.0}  # the rules ask for shutdown, which needs approval; alert applies meanwhile
WRITES = [
    {"action": "shutdown", "key": "unit_down", "value": {"why": "hot"}, "ttl_s": 3600},
    {"action": "alert", "key": "alerting", "value": True, "ttl_s": 600},
    {"action": "none", "key": "alerting", "unset": True},
    {"action": "defrost", "key": "defrosting", "value": True, "ttl_s": 1800},
]
Factory = Callable[..., LoadedConfig]


def _engine(loaded: LoadedConfig, key: NodeKey) -> Engine:
    return Engine(loaded=loaded, key=key, outbound=decision_wire(loaded.config, key))


async def _keys(eng: Engine) -> dict[str, Any]:
    """The node's fleet-state keys but its replicated labels (tests/decision/test_label_writes.py)."""
    return {e.key: e for e in await eng.store.read(fleet_state.entries) if "/labels/" not in e.key}


async def _gossiped(eng: Engine) -> list[str]:
    rows = await eng.store.read(lambda c: c.execute("SELECT payload FROM outbox WHERE topic LIKE '%/gossip/test-node'").fetchall())
    return [json.loads(p)["body"]["origin"]["body"]["key"] for (p,) in rows]


async def test_an_approved_actions_write_happens_at_the_approval(config_factory: Factory, node_key: NodeKey) -> None:
    loaded = config_factory(mqtt={"enabled": True}, skill={"cascade": [], "fleet_state": WRITES})
    async with _engine(loaded, node_key) as eng:
        rec = await eng.decide(SKILL, HOT)
        assert (rec["status"], rec["action"]) == ("pending_approval", "alert")
        proposed = await _keys(eng)
        assert set(proposed) == {"nodes/test-node/alerting"}  # the interim action's write only: nothing was shut down
        assert eng.fleet.value("nodes/test-node/unit_down") is None
        await eng.approve(rec["id"], by="alice")
        after = await _keys(eng)
        down = after["nodes/test-node/unit_down"]
        assert down.value == {"why": "hot"} and down.writer == "test-node"
        assert down.hlc > rec["hlc"]  # written at the approval, its lifetime counted from then
        assert down.expires_at == pytest.approx(decode(down.hlc)[0] / 1000 + 3600)
        assert eng.fleet.value("nodes/test-node/unit_down") == {"why": "hot"}  # rules read it at once
        # and it is gossiped, signed, with the approval's label
        assert await _gossiped(eng) == ["nodes/test-node/alerting", "nodes/test-node/unit_down", f"nodes/test-node/labels/{rec['id']}"]
        assert after["nodes/test-node/alerting"] == proposed["nodes/test-node/alerting"]
        assert (await eng.store.read(queries.verify_audit)).ok
    async with Engine(loaded=loaded, key=node_key) as eng:  # committed with the approval: a restart reads it back
        assert eng.fleet.value("nodes/test-node/unit_down") == {"why": "hot"}


async def test_a_rejection_writes_the_action_it_applies_and_nothing_when_it_keeps_the_interim(
    config_factory: Factory, node_key: NodeKey
) -> None:
    loaded = config_factory(skill={"cascade": [], "fleet_state": WRITES, "approval": {"on_reject": "none"}})
    async with Engine(loaded=loaded, key=node_key) as eng:
        rec = await eng.decide(SKILL, HOT)
        await eng.reject(rec["id"], by="bob")
        keys = await _keys(eng)
        assert "nodes/test-node/unit_down" not in keys
        assert keys["nodes/test-node/alerting"].deleted  # on_reject "none" applies, and clears the key
    keep = config_factory(skill={"cascade": [], "fleet_state": WRITES})  # no on_reject: the interim action stays
    async with Engine(loaded=keep, key=node_key) as eng:
        rec = await eng.decide(SKILL, HOT, event_id="second")
        before = await _keys(eng)
        await eng.reject(rec["id"], by="bob")
        assert await _keys(eng) == before


async def test_an_expiry_writes_its_on_timeout_action(config_factory: Factory, node_key: NodeKey, wait_until: Any) -> None:
    loaded = config_factory(skill={"cascade": [], "fleet_state": WRITES, "approval": {"timeout_s": 0.2, "on_timeout": "defrost"}})
    async with Engine(loaded=loaded, key=node_key) as eng:
        await eng.decide(SKILL, HOT)

        async def written() -> Any:
            return (await _keys(eng)).get("nodes/test-node/defrosting")

        entry = await wait_until(written)
        assert entry.value is True and "nodes/test-node/unit_down" not in await _keys(eng)
        assert eng.fleet.value("nodes/test-node/defrosting") is True
