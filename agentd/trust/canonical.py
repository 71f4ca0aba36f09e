"""Canonical JSON (RFC 8785) for everything that is hashed or signed."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import rfc8785

from agentd.errors import TrustError


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON: sorted keys, no spaces, UTF-8.

    orjson (keys sorted) produces the same bytes as RFC 8785 when every float is integral
    (written as an integer, as ECMAScript does) or has a plain decimal form (1e-4 <= |x| <
    1e16, where both write the shortest round-trip digits) and every key is in the Basic
    Multilingual Plane (so code-point order equals UTF-16 order). Anything else takes the
    reference implementation. A property test (tests/trust/test_canonical.py) checks the two
    agree.
    """
    try:
        return orjson.dumps(_simple(obj), option=orjson.OPT_SORT_KEYS)
    except (_NotSimple, orjson.JSONEncodeError):  # JSONEncodeError: a lone surrogate, a nesting deeper than orjson's limit
        pass
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise TrustError(f"cannot canonicalise value for signing: {exc}") from exc


class _NotSimple(Exception):
    pass


_MAX_SAFE = 2**53 - 1  # RFC 8785 refuses integers it cannot represent exactly


def _simple(obj: Any) -> Any:
    """``obj`` with integral floats as integers; _NotSimple if orjson's bytes would not be RFC 8785's."""
    t = type(obj)
    if t is str or t is bool or obj is None:
        return obj
    if t is dict:
        out = {}
        for k, v in obj.items():
            if type(k) is not str or (not k.isascii() and any(ord(c) > 0xFFFF for c in k)):
                raise _NotSimple
            tv = type(v)
            out[k] = v if tv is str or tv is bool or v is None else _simple(v)
        return out
    if t is int:
        if -_MAX_SAFE <= obj <= _MAX_SAFE:
            return obj
        raise _NotSimple
    if t is float:
        if obj.is_integer():
            if abs(obj) < 2**53:
                return int(obj)
            raise _NotSimple
        if 1e-4 <= abs(obj) < 1e16:
            return obj
        raise _NotSimple
    if t is list or t is tuple:
        return [v if type(v) is str else _simple(v) for v in obj]
    return _subclass(obj)


def _subclass(obj: Any) -> Any:
    """Subclasses of the JSON types (a str enum, an OrderedDict) as their plain values."""
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return _simple(int(obj))
    if isinstance(obj, float):
        return _simple(float(obj))
    if isinstance(obj, dict):
        return _simple(dict(obj))
    if isinstance(obj, list | tuple):
        return _simple(list(obj))
    raise _NotSimple


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
