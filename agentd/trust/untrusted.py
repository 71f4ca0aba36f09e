"""The one parser for untrusted bytes: JSON with every bound checked (docs/SECURITY.md).

Every handler of bytes from outside (MQTT events, peer envelopes, fleet commands and
their replies, the local socket, ``--data``) parses with ``parse_json``. It refuses, with a
reason code for counting and a message naming the place:

- a payload over ``max_bytes`` before it is parsed (``oversized``), bytes that are not
  UTF-8 JSON, ``NaN`` and ``Infinity`` (``not_json``);
- nesting deeper than ``max_depth`` (``too_deep``), which also keeps the C decoder's
  recursion (a ``RecursionError`` at about 1,000 levels) out of every handler;
- number literals longer than ``MAX_NUMBER_CHARS`` (``number_too_long``), so Python's
  4,300-digit int limit is never reached;
- values that canonical JSON (RFC 8785) cannot carry unchanged (``number_range``,
  ``bad_string``): integers beyond +-(2^53 - 1), floats that are integers beyond that
  (``1e17`` would be written ``100000000000000000`` and read back as such an integer),
  strings or keys holding a lone surrogate.

So whatever this accepts can be canonicalised, signed and verified by a peer.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from agentd.errors import Rejected

MAX_DEPTH = 32
MAX_NUMBER_CHARS = 32  # a double needs at most 24 characters ("-2.2250738585072014e-308")
MAX_SAFE_INT = 2**53 - 1
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _TooLong(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _TooLong(text)
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _TooLong(text)
    return float(text)


def _parse_constant(text: str) -> Any:
    raise Rejected("not_json", f"{text} is not a JSON number")


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)


def parse_json(payload: bytes | str, *, max_bytes: int, what: str = "payload", max_depth: int = MAX_DEPTH) -> Any:
    """``payload`` parsed as JSON within every bound above; ``Rejected`` (an InputError) otherwise."""
    if len(payload) > max_bytes:
        raise Rejected("oversized", f"{what} is {len(payload)} bytes, over the limit of {max_bytes}")
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    except UnicodeDecodeError as exc:
        raise Rejected("not_json", f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise Rejected("too_deep", f"{what} is nested deeper than {max_depth} levels") from None
    except _TooLong as exc:
        raise Rejected("number_too_long", f"{what} has a number of {len(exc.text)} characters (at most {MAX_NUMBER_CHARS})") from None
    except json.JSONDecodeError as exc:
        raise Rejected("not_json", f"{what} is not JSON: {exc.msg} at {exc.pos}") from None
    check_value(value, what=what, max_depth=max_depth)
    return value


def _path(parent: str, key: str | int | None) -> str:
    """The path of a member, as messages name it: ``what.name`` (40 characters at most) or ``what[3]``."""
    if key is None:
        return parent
    return f"{parent}[{key}]" if isinstance(key, int) else f"{parent}.{key[:40]}"


def check_value(value: Any, *, what: str = "value", max_depth: int = MAX_DEPTH) -> None:
    """Refuse (``Rejected``) what canonical JSON cannot carry unchanged, and nesting past ``max_depth``.

    Iterative, so a deep value costs no recursion; the message names the member's path.
    """
    # (item, its parent's path, its key there, depth): a path is spelled out only for a container
    # or a refusal, not for each of an event's scalar members
    stack: list[tuple[Any, str, str | int | None, int]] = [(value, what, None, 0)]
    while stack:
        item, parent, key, depth = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _LONE_SURROGATE.search(item):
                raise Rejected("bad_string", f"{_path(parent, key)}: a lone UTF-16 surrogate is not text (RFC 8785 refuses it)")
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) > MAX_SAFE_INT:
                raise Rejected("number_range", f"{_path(parent, key)}: {str(item)[:24]} is beyond +-(2^53-1), which JSON cannot carry exactly")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise Rejected("number_range", f"{_path(parent, key)}: {item} is not a finite number")
            if item.is_integer() and abs(item) > MAX_SAFE_INT:
                raise Rejected("number_range",
                               f"{_path(parent, key)}: {item:g} is an integer beyond +-(2^53-1), which JSON cannot carry exactly")
        elif isinstance(item, dict | list | tuple):
            path = _path(parent, key)
            if depth >= max_depth:
                raise Rejected("too_deep", f"{path}: nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for k, v in item.items():
                    if not isinstance(k, str):
                        raise Rejected("malformed", f"{path}: member name {k!r} is not a string")
                    if not k.isascii() and _LONE_SURROGATE.search(k):
                        raise Rejected("bad_string", f"{path}: a member name holds a lone UTF-16 surrogate")
                    stack.append((v, path, k, depth + 1))
            else:
                stack.extend((v, path, i, depth + 1) for i, v in enumerate(item))
        else:
            raise Rejected("malformed", f"{_path(parent, key)}: {type(item).__name__} is not a JSON value")
