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
    order equals UTF-16 order). Anything else takes the reference implementation. A
    property test (tests/trust/test_canonical.py) checks the two agree.
    """
    try:
        simple = _simple(obj)
    except _NotSimple:
        simple = None
    if simple is not None:
        try:
            return json.dumps(simple, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        except (ValueError, UnicodeEncodeError):
            pass
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise TrustError(f"cannot canonicalise value for signing: {exc}") from exc


class _NotSimple(Exception):
    pass


def _simple(obj: Any) -> Any:
    if isinstance(obj, str) or obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        if abs(obj) > 2**53 - 1:  # RFC 8785 refuses integers it cannot represent exactly
            raise _NotSimple
        return obj
    if isinstance(obj, float):
        if obj.is_integer():
            if abs(obj) < 2**53:
                return int(obj)
            raise _NotSimple
        if 1e-4 <= abs(obj) < 1e16:
            return obj
        raise _NotSimple
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or (not k.isascii() and any(ord(c) > 0xFFFF for c in k)):
                raise _NotSimple
            out[k] = _simple(v)
        return out
    if isinstance(obj, list | tuple):
        return [_simple(v) for v in obj]
    raise _NotSimple


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
