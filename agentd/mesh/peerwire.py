"""What a peer's verified envelope must hold before anything reads it (plain functions).

The signature says who sent an envelope, not that its body is sane: a trusted peer with a
bug (or a stolen key, or anyone while ``trust.allow_unknown_peers`` is on) can send any
JSON. Each kind's body is checked here for members, types, lengths and dates, and refused
with a reason code (``agentd.errors.Rejected``) that the link counts.
"""

from __future__ import annotations

import math
from typing import Any

from agentd.errors import Rejected

KINDS_BY_TOPIC = {"status": ("status",), "decisions": ("decision",), "gossip": ("digest", "decision", "state", "head")}
MAX_DIGEST_NODES = 10_000
MAX_HEAD_CHAIN = 16  # agentd.trust.witness.MAX_CHAIN
CHECKPOINT_MEMBERS = {"v", "node", "seq", "hash", "count", "ts", "prev", "every", "interval_s", "public_key", "sig"}


def check_peer_body(topic_kind: str, env: dict[str, Any], *, now_s: float, max_skew_s: float) -> None:
    """``Rejected`` unless ``env`` is a kind allowed on a ``topic_kind`` topic with a well-formed body."""
    kind, body = env["kind"], env["body"]
    if kind not in KINDS_BY_TOPIC.get(topic_kind, ()):
        raise Rejected("malformed", f"kind {kind!r} on a {topic_kind} topic")
    if kind == "status":
        _text(body, "status", 16)
        if "public_key" in body:
            _text(body, "public_key", 64)
    elif kind == "digest":
        _number(body, "since")
        counts = body.get("counts")
        if not isinstance(counts, dict) or len(counts) > MAX_DIGEST_NODES:
            raise Rejected("malformed", f"digest 'counts' must be an object of at most {MAX_DIGEST_NODES} nodes")
        for node, entry in counts.items():
            if (len(node) > 64 or not isinstance(entry, list) or len(entry) != 2 or isinstance(entry[0], bool)
                    or not isinstance(entry[0], int) or entry[0] < 0 or not _is_number(entry[1])):
                raise Rejected("malformed", f"digest entry for {node[:64]!r} must be [count, newest time]")
        state = body.get("state")
        if state is not None and (not isinstance(state, dict) or isinstance(state.get("n"), bool) or not isinstance(state.get("n"), int)
                                  or not isinstance(state.get("newest"), str) or len(state["newest"]) > 32
                                  or not isinstance(state.get("sha"), str) or len(state["sha"]) > 64):
            raise Rejected("malformed", 'digest "state" must be {"n": keys, "newest": HLC, "sha": hash}')
    elif kind == "state":  # a signed fleet-state write, relayed: its own signature is checked by agentd.control.state_writes
        if set(body) != {"origin"} or not isinstance(body["origin"], dict):
            raise Rejected("malformed", 'a state body is {"origin": <a signed write>}')
    elif kind == "head":  # a signed audit head; its signatures and links are checked by agentd.trust.witness
        chain = body.get("chain")
        if set(body) != {"head", "chain"} or not isinstance(chain, list) or len(chain) > MAX_HEAD_CHAIN:
            raise Rejected("malformed", f'a head body is {{"head": <checkpoint>, "chain": [at most {MAX_HEAD_CHAIN} checkpoints]}}')
        for cp in [body["head"], *chain]:
            _checkpoint(cp)
    else:
        _text(body, "id", 128)
        _text(body, "action", 64)
        _text(body, "skill", 64)
        created = _number(body, "created_at")
        if created < 0:
            raise Rejected("malformed", "decision 'created_at' is before 1970")
        if created - now_s > max_skew_s:
            raise Rejected("clock_skew", f"decision dated {created - now_s:.0f} s ahead of local time (at most {max_skew_s:g} s)")


def _checkpoint(cp: Any) -> None:
    if not isinstance(cp, dict) or not set(cp) <= CHECKPOINT_MEMBERS:
        raise Rejected("malformed", f"a checkpoint has the members {sorted(CHECKPOINT_MEMBERS)} only")
    for name in ("node", "hash", "prev", "public_key", "sig"):
        if name in cp:
            _text(cp, name, 128)
    for name in ("v", "seq", "count", "every"):
        if name in cp and (isinstance(cp[name], bool) or not isinstance(cp[name], int) or cp[name] < 0):
            raise Rejected("malformed", f"checkpoint member {name!r} must be a whole number")
    for name in ("ts", "interval_s"):
        if name in cp:
            _number(cp, name)


def _text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise Rejected("malformed", f"body member {name!r} must be a string of 1-{limit} characters")
    return value


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _number(body: dict[str, Any], name: str) -> float:
    value = body.get(name)
    if not _is_number(value):
        raise Rejected("malformed", f"body member {name!r} must be a number")
    return float(value)  # type: ignore[arg-type]  # _is_number checked it
