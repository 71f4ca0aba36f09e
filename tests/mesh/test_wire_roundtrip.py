"""Everything accepted can be signed: every event the schema (and the bounded parser) accepts
round-trips through canonical JSON, the signer, the SQLite store, and a peer's verifier."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.config.loader import LoadedConfig
from agentd.decision.engine import Engine
from agentd.errors import InputError, Rejected
from agentd.mesh.peerwire import check_peer_body
from agentd.mesh.wire import decision_wire
from agentd.state import queries
from agentd.trust.envelope import check_envelope
from agentd.trust.keys import NodeKey, create_key
from agentd.trust.untrusted import MAX_SAFE_INT, parse_json
from tests.conftest import SKILL, make_config

surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
tricky_text = st.text(max_size=20) | surrogates | st.builds(lambda a, s: a + s, st.text(max_size=5), surrogates)
tricky_numbers = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.sampled_from([2**53, 2**53 - 1, -(2**53), 1e16, 1e17, 9007199254740992.0, 5e-324, -0.0, 1e-7, 123456789.123])
)
values = st.none() | st.booleans() | tricky_numbers | tricky_text | st.lists(st.integers(), max_size=2)
events = st.fixed_dictionaries(  # mostly the right types, with edge values; sometimes anything at all
    {"temperature_c": tricky_numbers},
    optional={"door_open_s": tricky_numbers | st.integers(min_value=0, max_value=2**54), "note": tricky_text},
) | st.fixed_dictionaries({"temperature_c": values}, optional={"door_open_s": values, "note": values, "extra": values})


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedConfig, NodeKey]:
    tmp = tmp_path_factory.mktemp("wire")
    loaded = make_config(tmp, mqtt={"enabled": True}, skill={
        "cascade": [], "approval": {"actions": []},
        "input": {"temperature_c": {"min": None, "max": None},  # no range: any number the schema takes
                  "door_open_s": {"type": "integer", "min": None, "max": None}},
    })
    key, _ = create_key(loaded.config.data_dir)
    return loaded, key


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=events)
def test_every_accepted_event_round_trips_to_a_peer(wire: tuple[LoadedConfig, NodeKey], data: dict[str, Any]) -> None:
    loaded, key = wire
    try:
        wire_bytes = json.dumps({"data": data}).encode()  # ensure_ascii: lone surrogates travel as \\udXXX escapes
    except ValueError:
        return  # json.dumps itself refuses NaN-free output only with allow_nan=False; never here
    try:
        parsed = parse_json(wire_bytes, max_bytes=65536)["data"]
    except Rejected:
        parsed = data  # the parser refused it; the schema must refuse it too, given as Python values
    record, decided = asyncio.run(_decide(loaded, key, parsed))
    if not decided:
        return
    cfg = loaded.config
    # canonical JSON re-parses to the same value, the bounded parser accepts it as is
    assert parse_json(rfc8785.dumps(record), max_bytes=1 << 20) == json.loads(rfc8785.dumps(record))
    for value in record["inputs"].values():
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert abs(value) <= MAX_SAFE_INT
    env = check_envelope(
        decided["payload"], fleet=cfg.node.fleet, max_bytes=cfg.mqtt.max_payload_bytes,
        key_for=lambda node, _e: key.public_b64 if node == cfg.node.id else None,
        now_ms=time.time_ns() // 1_000_000, max_skew_ms=30_000,
    )
    check_peer_body("decisions", env, now_s=time.time(), max_skew_s=30)
    assert env["body"] == record == decided["stored"]
    assert decided["audit_ok"]


async def _decide(loaded: LoadedConfig, key: NodeKey, data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    async with Engine(loaded=loaded, key=key, run_handlers=False, outbound=decision_wire(loaded.config, key)) as eng:
        try:
            record = await eng.decide(SKILL, data)
        except InputError:
            return {}, {}
        rid = record["id"]
        payload, stored = await eng.store.read(lambda c: (
            c.execute("SELECT payload FROM outbox ORDER BY seq DESC LIMIT 1").fetchone()[0],
            queries.get_decision(c, rid),
        ))
        audit_ok = await eng.store.read(lambda c: queries.verify_audit(c).ok)
    return record, {"payload": bytes(payload), "stored": stored, "audit_ok": audit_ok}


@pytest.mark.parametrize("value", [2**53, -(2**53), 1e16, 1e17, float(2**53), "\ud800", "a\udfffb"])
def test_values_canonical_json_cannot_carry_are_refused_naming_the_field(wire: tuple[LoadedConfig, NodeKey], value: Any) -> None:
    loaded, key = wire
    field = "note" if isinstance(value, str) else "temperature_c"
    with pytest.raises(InputError, match=f"{SKILL}.{field}"):
        asyncio.run(_decide_or_raise(loaded, key, {"temperature_c": -18.0, field: value}))


async def _decide_or_raise(loaded: LoadedConfig, key: NodeKey, data: dict[str, Any]) -> None:
    async with Engine(loaded=loaded, key=key, run_handlers=False) as eng:
        await eng.decide(SKILL, data)


def test_the_parser_refuses_what_would_crash_a_handler() -> None:
    sys.set_int_max_str_digits(4300)
    cases = {
        b"9" * 5000: "number_too_long",
        b"-" + b"1" * 400 + b".5": "number_too_long",
        b"1e999": "number_range",
        b"[" * 5000 + b"]" * 5000: "too_deep",
        b'{"a":' * 40 + b"1" + b"}" * 40: "too_deep",
        b'"\\ud800"': "bad_string",
        b'{"\\udc00": 1}': "bad_string",
        b"NaN": "not_json",
        b"\xff\xfe": "not_json",
        b"x" * 70_000: "oversized",
        b"9007199254740992": "number_range",
        b"1e17": "number_range",
    }
    for payload, reason in cases.items():
        with pytest.raises(Rejected) as refused:
            parse_json(payload, max_bytes=65536)
        assert refused.value.reason == reason, (payload[:40], refused.value)
    assert parse_json(b'{"a": [1, 2.5, "\\ud83d\\ude00", 9007199254740991]}', max_bytes=100) == {"a": [1, 2.5, "😀", 2**53 - 1]}

