"""Canonical JSON (RFC 8785) for everything that is hashed or signed."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import rfc8785

from agentd.errors import TrustError


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON: sorted keys, no spaces, UTF-8.

    The stdlib encoder produces the same bytes as RFC 8785 when every float is integral
    (written as an integer, as ECMAScript does) or has a plain decimal form in Python
    (1e-4 <= |x| < 1e16) and every key is in the Basic Multilingual Plane (so code-point
    order equals UTF-16 order). ``_simple`` checks that, writes integral floats as integers
    and puts each object's keys in order, so the encoder need not sort. Anything else takes
    the reference implementation. A property test (tests/trust/test_canonical.py) checks
    the two agree.
    """
    try:
        simple = _simple(obj)
    except _NotSimple:
        simple = _NOT_SIMPLE
    if simple is not _NOT_SIMPLE:
        try:
            return _ENCODER.encode(simple).encode()
        except (ValueError, UnicodeEncodeError):
            pass
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise TrustError(f"cannot canonicalise value for signing: {exc}") from exc


# One encoder for every call (json.dumps with options builds one each time); keys come sorted from _simple.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_NOT_SIMPLE = object()
_MAX_EXACT = 2**53


class _NotSimple(Exception):
    pass


def _simple(obj: Any) -> Any:
    t = type(obj)
    if t is str or obj is None or t is bool:
        return obj
    if t is float:
        if obj.is_integer():
            if -_MAX_EXACT < obj < _MAX_EXACT:
                return int(obj)
            raise _NotSimple
        if 1e-4 <= abs(obj) < 1e16:
            return obj
        raise _NotSimple
    if t is int:
        if -_MAX_EXACT < obj < _MAX_EXACT:  # RFC 8785 refuses integers it cannot represent exactly
            return obj
        raise _NotSimple
    if t is dict:
        for k in obj:
            if type(k) is not str or (not k.isascii() and any(ord(c) > 0xFFFF for c in k)):
                raise _NotSimple
        return {k: _simple(obj[k]) for k in sorted(obj)}
    if t is list or t is tuple:
        return [_simple(v) for v in obj]
    return _simple_subclass(obj)


def _simple_subclass(obj: Any) -> Any:
    """Subclasses of the JSON types (a StrEnum, an IntEnum, a dict subclass) as their plain values."""
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
        return [_simple(v) for v in obj]
    raise _NotSimple


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
