"""canonical() writes RFC 8785 byte for byte: the fast path (stdlib encoder over checked, key-sorted
values) against the reference implementation, on every kind of JSON value."""

from __future__ import annotations

import json
from enum import IntEnum, StrEnum
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.errors import TrustError
from agentd.trust.canonical import canonical

numbers = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.sampled_from([2**53, 2**53 - 1, -(2**53) + 1, 1e16, 1e16 - 2, 9007199254740992.0, 5e-324, -0.0, 1e-4, 9.99e-5, 0.5, 123456789.123])
)
keys = st.text(max_size=6) | st.sampled_from(["a", "B", "é", "\U0001f600", "\ufb01", "aa", ""])
scalars = st.none() | st.booleans() | numbers | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5), max_leaves=25)


@settings(max_examples=2000, deadline=None)
@given(value=values)
def test_canonical_equals_the_reference(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError, TypeError):
        with pytest.raises(TrustError):
            canonical(value)
        return
    assert canonical(value) == expected


class Colour(StrEnum):
    RED = "red"


class Size(IntEnum):
    BIG = 3


def test_subclasses_of_json_types_are_written_as_their_values() -> None:
    value = {"c": Colour.RED, "s": Size.BIG, "t": (1, 2.0), "d": {"z": 1, "a": [Colour.RED]}}
    assert canonical(value) == rfc8785.dumps(json.loads(json.dumps(value)))
    assert canonical(value) == b'{"c":"red","d":{"a":["red"],"z":1},"s":3,"t":[1,2]}'


def test_a_decision_record_is_written_with_sorted_keys_and_integral_floats_as_integers() -> None:
    record = {"latency_ms": 1.0, "inputs": {"temperature_c": -18.0, "door_open_s": 0.25}, "created_at": 1796135960.650989, "id": "x"}
    assert canonical(record) == b'{"created_at":1796135960.650989,"id":"x","inputs":{"door_open_s":0.25,"temperature_c":-18},"latency_ms":1}'
