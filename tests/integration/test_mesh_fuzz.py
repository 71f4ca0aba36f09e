"""Property-based payloads on every topic a node subscribes to: it refuses them and lives, in the same session.

"Lives" is measured, not assumed: a bug that ends the MQTT session shows up as ``reconnects``
or ``failures`` moving (``connected`` alone is True again once the node has reconnected), and
one caught at a handler's boundary as ``handler_errors`` or an ``internal_error`` refusal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agentd.config.loader import load_config
from agentd.mesh.inbound import subscriptions
from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc, freezer_config
from tests.integration.test_hostile_input import FLEET, NODE, SKILLS, concrete_topics, settle
from tests.integration.test_mesh_link import wait_connected

# lone surrogates: json.dumps (ensure_ascii) writes them as \udXXX escapes, valid JSON syntax that is not text
surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=4)
# past Python's 4,300-digit int limit (json.dumps of them needs sys.set_int_max_str_digits(0), see the fixture)
huge_ints = st.integers(min_value=10**4500, max_value=10**4600) | st.integers(min_value=-(10**4600), max_value=-(10**4500))
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | surrogates | huge_ints
           | st.sampled_from([2**53, 2**53 + 1, 1e17, -1e17]))
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10) | surrogates, c, max_size=4),
    max_leaves=15,
)


def _wrap(args: tuple[int, str, Any]) -> str:
    """A value wrapped in ``depth`` lists or objects, as JSON text (json.dumps itself would recurse that deep)."""
    depth, kind, inner = args
    text = json.dumps(inner)
    if kind == "list":
        return "[" * depth + text + "]" * depth
    return '{"k":' * depth + text + "}" * depth


deep = st.tuples(st.integers(min_value=1, max_value=3000), st.sampled_from(["list", "dict"]), json_values).map(_wrap)
envelope_like = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 2, "2", 2**53, True]), "fleet": st.sampled_from([FLEET, "other", ""]) | json_values,
     "kind": st.sampled_from(["decision", "status", "digest", "command", "x"]),
     "id": st.text(max_size=10) | surrogates, "node": st.sampled_from(["peer-x", NODE, "alice", ""]),
     "hlc": st.sampled_from(["0000000000001-0000", "9999999999999-0000", "9007199254740992-0000", "x"]), "body": json_values},
    optional={"sig": st.text(max_size=90)},
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _deep_body(args: tuple[dict[str, Any], str]) -> bytes:
    env, text = args
    return json.dumps({**env, "body": "@BODY@"}).replace('"@BODY@"', '{"x":' + text + "}").encode()


payloads = (
    st.binary(max_size=300)
    | json_values.map(_dumps)
    | envelope_like.map(_dumps)
    | st.fixed_dictionaries({"id": json_values, "data": json_values}).map(_dumps)
    | deep.map(str.encode)
    | deep.map(lambda t: ('{"data":{"temperature_c":-18,"door_open_s":0,"compressor_a":4,"note":' + t + "}}").encode())
    | st.tuples(envelope_like, deep).map(_deep_body)
)


@dataclass
class Running:
    node: DaemonProc
    topics: list[str]
    last: dict[str, Any] = field(default_factory=dict)  # the broker status after the previous batch


@pytest.fixture
def running(tmp_path: Path, broker: Broker) -> Iterator[Running]:
    data = tmp_path / "data"
    data.mkdir()
    cfg = freezer_config(data, mqtt_port=broker.port)
    cfg["trust"] = {"allow_unknown_peers": True, "operators": []}
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    topics = concrete_topics(subscriptions(load_config(path).config), node=NODE, fleet=FLEET, peers=["peer-x"], skills=SKILLS)
    node = DaemonProc(config_path=path, data_dir=data)
    node.start()
    wait_connected(node)
    digits = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # to write (and report) the huge integers
    try:
        yield Running(node=node, topics=topics, last=settle(node))
    finally:
        sys.set_int_max_str_digits(digits)
        node.stop()


# No shrinking: every example goes to the one daemon of this test, and a batch that broke it
# (a poison message the broker redelivers at each reconnect) breaks every smaller one after it.
# The failing batch is reported as it was drawn.
@settings(max_examples=40, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_arbitrary_payloads_on_every_subscribed_topic(running: Running, broker: Broker, data: st.DataObject) -> None:
    batch = data.draw(st.lists(st.tuples(st.sampled_from(running.topics), payloads, st.sampled_from([0, 1])), min_size=1, max_size=6),
                      label="batch")
    before = running.last
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    for name, payload, qos in batch:
        pub.publish(name, payload, qos=qos).wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()
    # answers after the batch: alive and serving (it stops waiting for quiet after 60 s: a node
    # in a reconnect loop never gets quiet, and the assertions below then say so)
    after = running.last = settle(running.node, give_up_s=60)

    assert after["connected"] is True
    assert after["reconnects"] == before["reconnects"], "the batch cost the node its MQTT session"
    assert after.get("failures", 0) == before.get("failures", 0), "the batch made the link fail unexpectedly"
    assert after.get("handler_errors", 0) == before.get("handler_errors", 0), "the batch met a bug at a handler boundary"
    grown = {k: v for k, v in after.get("refused", {}).items() if k.endswith(".internal_error") and v > before.get("refused", {}).get(k, 0)}
    assert not grown, f"the batch met a bug: {grown}"
    assert running.node.proc is not None and running.node.proc.poll() is None
