"""Fleet-state keys and values (DESIGN section 6): their syntax and bounds, and a skill's writes.

A key is 1-8 segments of ``[a-z0-9][a-z0-9_.-]*`` joined by ``/``, at most 128 characters.
Keys under ``nodes/<id>/`` belong to node ``<id>`` (only it may write them, signed by its own
key); every other key is a site key, written by an operator (role ``operator`` or above)
with a signed fleet command. A value is a JSON scalar, list or object of at most
``MAX_VALUE_BYTES`` in canonical form and ``MAX_VALUE_DEPTH`` levels; ``null`` is not a value
(``unset`` clears a key). These checks are plain functions returning the problem, so the
config, the CLI, the command path and the wire each word their own error.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import Field, model_validator

from agentd.config.base import NAME_RE, _Model

KEY_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}(?:/[a-z0-9][a-z0-9_.-]{0,63}){0,7}")
MAX_KEY_CHARS = 128
MAX_VALUE_BYTES = 1024
MAX_VALUE_DEPTH = 4
MAX_TTL_S = 30 * 86400.0
MAX_SAFE_INT = 2**53 - 1
NODE_PREFIX = "nodes/"


def key_problem(key: Any) -> str | None:
    """What is wrong with ``key`` as a fleet-state key, or None."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS or not KEY_RE.fullmatch(key):
        return (f"{str(key)[:80]!r} is not a fleet-state key: 1-8 segments of [a-z0-9][a-z0-9_.-]* joined by '/',"
                f" at most {MAX_KEY_CHARS} characters")
    if key.startswith(NODE_PREFIX) and (key.count("/") < 2 or not NAME_RE.fullmatch(key.split("/")[1])):
        return f"{key!r}: a node's key is nodes/<node id>/<name>"
    return None


def owner_of(key: str) -> str | None:
    """The node that owns ``key`` (``nodes/<id>/...``), or None for a site key (operators write those)."""
    return key.split("/", 2)[1] if key.startswith(NODE_PREFIX) else None


def value_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a fleet-state value, or None."""
    if value is None:
        return "null is not a value (unset the key instead)"
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, bool | str) or item is None:
            continue
        if isinstance(item, int):
            if abs(item) > MAX_SAFE_INT:
                return "integers must be within +-(2^53-1)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{item} is not a finite number"
        elif isinstance(item, dict | list):
            if depth >= MAX_VALUE_DEPTH:
                return f"nested deeper than {MAX_VALUE_DEPTH} levels"
            if isinstance(item, dict) and not all(isinstance(k, str) for k in item):
                return "object member names must be strings"
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
        else:
            return f"a {type(item).__name__} is not a JSON value"
    size = len(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_VALUE_BYTES:
        return f"{size} bytes as JSON, over the limit of {MAX_VALUE_BYTES}"
    return None


class FleetStateWrite(_Model):
    """One entry of a skill's ``fleet_state:``: a decision with ``action`` sets (or unsets) the
    node's own key ``nodes/<node id>/<key>`` to ``value``, for ``ttl_s`` seconds (None: until changed)."""

    action: str
    key: str = Field(min_length=1, max_length=MAX_KEY_CHARS - 70)  # room for nodes/<63-character id>/
    value: Any = True
    unset: bool = False
    ttl_s: float | None = Field(default=None, gt=0, le=MAX_TTL_S)

    @model_validator(mode="after")
    def _check(self) -> FleetStateWrite:
        problem = key_problem(f"{NODE_PREFIX}node/{self.key}")
        if problem is not None:
            raise ValueError(f"key {self.key!r} (under nodes/<node id>/): 1-6 segments of [a-z0-9][a-z0-9_.-]* joined by '/'")
        if self.unset and ("value" in self.model_fields_set or self.ttl_s is not None):
            raise ValueError("unset: true clears the key; it takes no value and no ttl_s")
        problem = None if self.unset else value_problem(self.value)
        if problem is not None:
            raise ValueError(f"value: {problem}")
        return self
