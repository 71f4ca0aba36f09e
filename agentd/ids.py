"""Identifiers: new ids, and the syntax of caller-given event ids."""

from __future__ import annotations

import os
import re
import threading
from typing import TYPE_CHECKING, Any

from agentd.errors import InputError

if TYPE_CHECKING:
    pass


EVENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")


_POOL = 4096  # random bytes read at once: one getrandom() per 256 ids
_random = bytearray()
_random_lock = threading.Lock()


def _forget_random() -> None:
    global _random  # noqa: PLW0603
    _random = bytearray()


os.register_at_fork(after_in_child=_forget_random)  # a forked child never reuses the parent's bytes


def new_id() -> str:
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` writes it, from the
    operating system's random source read in blocks (ids are made on the hot path of every decision)."""
    global _random  # noqa: PLW0603 - the block of random bytes not yet used
    with _random_lock:
        if len(_random) < 16:
            _random = bytearray(os.urandom(_POOL))
        b = _random[-16:]
        del _random[-16:]
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return b.hex()


def check_event_id(event_id: Any) -> str:
    """A caller-given event id, validated; InputError otherwise."""
    if not isinstance(event_id, str) or not EVENT_ID_RE.fullmatch(event_id):
        raise InputError(
            f"event id {str(event_id)[:40]!r} is invalid: use 1-128 characters of letters, digits and ._:@/- "
            "starting with a letter or digit"
        )
    return event_id
