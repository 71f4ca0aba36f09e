"""agentd.trust.untrusted.check_value: what canonical JSON cannot carry is refused, and the message names where."""

from __future__ import annotations

from typing import Any

import pytest

from agentd.errors import Rejected
from agentd.trust.untrusted import MAX_SAFE_INT, check_value


@pytest.mark.parametrize(("value", "code", "where"), [
    ({"a": {"b": [1, 2, float("nan")]}}, "number_range", "event.a.b[2]: nan is not a finite number"),
    ({"a": [{"n": MAX_SAFE_INT + 1}]}, "number_range", "event.a[0].n: 9007199254740992 is beyond"),
    ({"a": [{"f": 2.0 ** 60}]}, "number_range", "event.a[0].f: 1.15292e+18 is an integer beyond"),
    ({"note": "caf\u00e9 \ud800"}, "bad_string", "event.note: a lone UTF-16 surrogate"),
    ({"ok": "caf\u00e9", "n\ud800": 1}, "bad_string", "event: a member name holds a lone UTF-16 surrogate"),
    ({"a": {1: 2}}, "malformed", "event.a: member name 1 is not a string"),
    ({"a": [b"bytes"]}, "malformed", "event.a[0]: bytes is not a JSON value"),
    ({"x" * 60: {"y": set()}}, "malformed", "event." + "x" * 40 + ".y: set is not a JSON value"),
    ({"a": [[[[1]]]]}, "too_deep", "event.a[0][0]: nested deeper than 3 levels"),
])
def test_a_refusal_names_the_member_it_refuses(value: Any, code: str, where: str) -> None:
    with pytest.raises(Rejected) as err:
        check_value(value, what="event", max_depth=3)
    assert err.value.reason == code and str(err.value).startswith(where), str(err.value)


def test_what_canonical_json_carries_passes() -> None:
    check_value({"t": -18.5, "door": 12, "note": "caf\u00e9 \U0001f9ca door propped", "tags": ["a", None, True],
                 "n": MAX_SAFE_INT, "f": -2.0 ** 53 + 1, "deep": [[1]]}, what="event", max_depth=3)
