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
from agentd.trust.batch import BATCH

AUDIT_KINDS = ("checkpoints_request", "checkpoints", "witness_request")  # agentd.mesh.checkpoint_fetch, witness_answers
MAX_FETCH = 32  # checkpoints in one "checkpoints" answer (about 15 KiB)
KINDS_BY_TOPIC = {"status": ("status",), "decisions": ("decision", BATCH), "gossip": ("digest", "decision", "state", "head", *AUDIT_KINDS, BATCH)}
MAX_DIGEST_NODES = 10_000
MAX_HEAD_CHAIN = 16  # agentd.trust.witness.MAX_CHAIN
CHECKPOINT_MEMBERS = {"v", "node", "seq", "hash", "count", "ts", "prev", "every", "interval_s", "public_key", "sig"}


def item_kinds(topic_kind: str) -> tuple[str, ...]:
    """The kinds a batch on a ``topic_kind`` topic may hold: those of the topic, but a batch."""
    return tuple(k for k in KINDS_BY_TOPIC.get(topic_kind, ()) if k != BATCH)


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
        writers = body.get("writers")
        if writers is not None and (not isinstance(writers, dict) or len(writers) > MAX_DIGEST_NODES):
            raise Rejected("malformed", f'digest "writers" must be an object of at most {MAX_DIGEST_NODES} writers')
        for writer, entry in (writers or {}).items():
            if (len(writer) > 80 or not isinstance(entry, list) or len(entry) != 2 or isinstance(entry[0], bool)
                    or not isinstance(entry[0], int) or entry[0] < 0 or not isinstance(entry[1], str) or len(entry[1]) > 32):
                raise Rejected("malformed", f"digest writer entry for {writer[:64]!r} must be [count, newest HLC]")
        if "subscribed" in body:
            _number(body, "subscribed")
    elif kind == "state":  # a signed fleet-state write, relayed: its own signature is checked by agentd.control.state_writes
        if set(body) != {"origin"} or not isinstance(body["origin"], dict):
            raise Rejected("malformed", 'a state body is {"origin": <a signed write>}')
    elif kind == "head":  # a signed audit head; its signatures and links are checked by agentd.trust.witness
        chain = body.get("chain")
        if set(body) != {"head", "chain"} or not isinstance(chain, list) or len(chain) > MAX_HEAD_CHAIN:
            raise Rejected("malformed", f'a head body is {{"head": <checkpoint>, "chain": [at most {MAX_HEAD_CHAIN} checkpoints]}}')
        for cp in [body["head"], *chain]:
            _checkpoint(cp)
    elif kind == BATCH:  # its items are checked one by one, each as if it came alone (agentd.trust.batch.unbatch)
        return
    elif kind in AUDIT_KINDS:
        _audit_body(kind, body)
    else:
        _text(body, "id", 128)
        _text(body, "action", 64)
        _text(body, "skill", 64)
        created = _number(body, "created_at")
        if created < 0:
            raise Rejected("malformed", "decision 'created_at' is before 1970")
        if created - now_s > max_skew_s:
            raise Rejected("clock_skew", f"decision dated {created - now_s:.0f} s ahead of local time (at most {max_skew_s:g} s)")


def _audit_body(kind: str, body: dict[str, Any]) -> None:
    """The fetch of missed checkpoints and the fleet's witness request (DESIGN section 6)."""
    if kind == "witness_request":
        if set(body) != {"node"}:
            raise Rejected("malformed", 'a witness_request body is {"node": <the node asking about itself>}')
        _text(body, "node", 64)
    elif kind == "checkpoints_request":
        if set(body) != {"node", "after", "upto"}:
            raise Rejected("malformed", 'a checkpoints_request body is {"node", "after", "upto"}')
        _text(body, "node", 64)
        after, upto = _whole(body, "after"), _whole(body, "upto")
        if upto <= after:
            raise Rejected("malformed", "checkpoints_request: upto must be above after")
    else:
        cps = body.get("checkpoints")
        if set(body) != {"to", "request", "checkpoints", "more", "lowest"} or not isinstance(cps, list) or len(cps) > MAX_FETCH:
            raise Rejected("malformed", f'a checkpoints body is {{"to", "request", "checkpoints": [at most {MAX_FETCH}], "more", "lowest"}}')
        _text(body, "to", 64)
        _text(body, "request", 128)
        if not isinstance(body["more"], bool) or (body["lowest"] is not None and _whole(body, "lowest") < 0):
            raise Rejected("malformed", 'checkpoints: "more" is a boolean, "lowest" a whole number or null')
        for cp in cps:
            _checkpoint(cp)


def _whole(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise Rejected("malformed", f"body member {name!r} must be a whole number")
    return value


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
