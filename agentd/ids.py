"""Identifiers: new ids, and the syntax of caller-given event ids."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

from agentd.errors import InputError

if TYPE_CHECKING:
    pass


EVENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")


def new_id() -> str:
    return uuid.uuid4().hex


def check_event_id(event_id: Any) -> str:
    """A caller-given event id, validated; InputError otherwise."""
    if not isinstance(event_id, str) or not EVENT_ID_RE.fullmatch(event_id):
        raise InputError(
            f"event id {str(event_id)[:40]!r} is invalid: use 1-128 characters of letters, digits and ._:@/- "
            "starting with a letter or digit"
        )
    return event_id
