"""agentd.control.state_writes: a fleet-state write counts only if its own signature and the
writer's right to the key check out on this node, whoever relayed it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agentd.config.loader import LoadedConfig
from agentd.control.commands import new_command
from agentd.control.state_writes import check_origin
from agentd.errors import Rejected
from agentd.mesh.wire import DecisionWire
from agentd.state.lww import Entry
from agentd.trust.envelope import envelope
from agentd.trust.hlc import Clock
from agentd.trust.keys import NodeKey, create_key_file
from tests.conftest import make_config


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, NodeKey]:
    return {n: create_key_file(tmp_path / "keys" / f"{n}.key")[0] for n in ("alice", "victor", "mallory", "node-a", "node-b")}


@pytest.fixture
def loaded(tmp_path: Path, keys: dict[str, NodeKey]) -> LoadedConfig:
    return make_config(tmp_path, trust={"operators": [
        {"name": "alice", "key": keys["alice"].public_b64, "role": "operator"},
        {"name": "victor", "key": keys["victor"].public_b64, "role": "viewer"},
    ]})


def _check(loaded: LoadedConfig, keys: dict[str, NodeKey], origin: Any) -> Entry:
    nodes = {"node-a": keys["node-a"].public_b64, "node-b": keys["node-b"].public_b64}
    return check_origin(origin, cfg=loaded.config, node_key=nodes.get)


def _command(key: NodeKey, name: str, cmd: str, args: dict[str, Any], fleet: str = "test-fleet") -> dict[str, Any]:
    body = new_command(cmd, target="all", args=args, ttl_s=60)
    return json.loads(envelope("command", fleet=fleet, node=name, hlc=Clock().now(), body=body, key=key))  # type: ignore[no-any-return]


def _node_write(key: NodeKey, node: str, body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(envelope("state_write", fleet="test-fleet", node=node, hlc=Clock().now(), body=body, key=key))  # type: ignore[no-any-return]


def _refused(loaded: LoadedConfig, keys: dict[str, NodeKey], origin: Any) -> str:
    with pytest.raises(Rejected) as exc:
        _check(loaded, keys, origin)
    return exc.value.reason


def test_an_operator_sets_and_unsets_site_keys(loaded: LoadedConfig, keys: dict[str, NodeKey]) -> None:
    cmd = _command(keys["alice"], "alice", "fleet_set", {"key": "site/maintenance", "value": {"by": "alice"}, "expires_in_s": 60})
    e = _check(loaded, keys, cmd)
    assert (e.key, e.value, e.writer, e.wid, e.hlc, e.deleted) == ("site/maintenance", {"by": "alice"}, "operator:alice", cmd["id"], cmd["hlc"], False)
    assert e.expires_at == pytest.approx(int(cmd["hlc"][:13]) / 1000 + 60)
    gone = _check(loaded, keys, _command(keys["alice"], "alice", "fleet_unset", {"key": "site/maintenance"}))
    assert gone.deleted and gone.value is None and gone.expires_at is None


def test_a_command_long_expired_still_replicates_its_write(loaded: LoadedConfig, keys: dict[str, NodeKey]) -> None:
    """expires_at bounds the first application (the command path); a relay days later stands on the signature."""
    body = {**new_command("fleet_set", target="all", args={"key": "site/x", "value": 1}), "expires_at": time.time() - 3 * 86400}
    cmd = json.loads(envelope("command", fleet="test-fleet", node="alice", hlc=f"{int((time.time() - 4 * 86400) * 1000):013d}-0000",
                              body=body, key=keys["alice"]))
    assert _check(loaded, keys, cmd).value == 1


def test_foreign_and_forged_writes_are_refused(loaded: LoadedConfig, keys: dict[str, NodeKey]) -> None:
    # a node writing another node's namespace, or a site key
    assert _refused(loaded, keys, _node_write(keys["node-a"], "node-a", {"key": "nodes/node-b/down", "value": True})) == "not_owner"
    assert _refused(loaded, keys, _node_write(keys["node-a"], "node-a", {"key": "site/maintenance", "value": True})) == "not_owner"
    # an operator writing a node's namespace; a viewer; an unknown operator; a forged signature; another fleet
    assert _refused(loaded, keys, _command(keys["alice"], "alice", "fleet_set", {"key": "nodes/node-a/down", "value": True})) == "not_owner"
    assert _refused(loaded, keys, _command(keys["victor"], "victor", "fleet_set", {"key": "site/m", "value": True})) == "forbidden"
    assert _refused(loaded, keys, _command(keys["mallory"], "mallory", "fleet_set", {"key": "site/m", "value": True})) == "unknown_signer"
    assert _refused(loaded, keys, _command(keys["mallory"], "alice", "fleet_set", {"key": "site/m", "value": True})) == "bad_signature"
    assert _refused(loaded, keys, _command(keys["alice"], "alice", "fleet_set", {"key": "site/m", "value": 1}, fleet="other")) == "wrong_fleet"
    tampered = _command(keys["alice"], "alice", "fleet_set", {"key": "site/m", "value": 1})
    tampered["body"]["args"]["value"] = 2
    assert _refused(loaded, keys, tampered) == "bad_signature"
    # a node's write signed by another node's key
    assert _refused(loaded, keys, _node_write(keys["node-b"], "node-a", {"key": "nodes/node-a/down", "value": True})) == "bad_signature"
    # other commands, bad keys and values
    assert _refused(loaded, keys, _command(keys["alice"], "alice", "set_mode", {"mode": "auto"})) == "malformed"
    assert _refused(loaded, keys, _command(keys["alice"], "alice", "fleet_set", {"key": "Site/M", "value": 1})) == "malformed"
    assert _refused(loaded, keys, _command(keys["alice"], "alice", "fleet_set", {"key": "site/m", "value": "x" * 2000})) == "malformed"
    assert _refused(loaded, keys, _command(keys["alice"], "alice", "fleet_set", {"key": "site/m"})) == "malformed"  # no value
    assert _refused(loaded, keys, _command(keys["alice"], "alice", "fleet_set", {"key": "site/m", "value": 1, "expires_in_s": -1})) == "malformed"
    assert _refused(loaded, keys, "junk") == "malformed"


def test_a_nodes_own_write_from_the_wire_checks_out(loaded: LoadedConfig, keys: dict[str, NodeKey]) -> None:
    wire = DecisionWire(fleet="test-fleet", node="node-a", key=keys["node-a"])
    hlc = Clock().now()
    mine = Entry("nodes/node-a/defrosting", hlc, "node-a", "w1", True, expires_at=round(int(hlc[:13]) / 1000 + 1800, 3))
    [(origin, row)] = wire.state_messages([(mine, 1800)])
    assert row[0] == "agentd/v1/test-fleet/gossip/node-a" and json.loads(row[1])["body"] == {"origin": json.loads(origin)}
    assert _check(loaded, keys, json.loads(origin)) == mine
