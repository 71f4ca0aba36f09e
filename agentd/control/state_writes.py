"""Who may write which fleet-state key: the checks of a signed write, wherever it came from (issue 16).

A write is an ``origin``: a node's ``state_write`` envelope (signed with its node key, for a
key under ``nodes/<that node>/``), or an operator's ``fleet_set``/``fleet_unset`` command
(signed with the operator's key, whose role must allow it, for a site key: anything not under
``nodes/``). The node that relays an origin vouches for nothing: the origin is checked here
on every node against this node's own ``trust`` (``check_origin``), and refused with a reason
code (``not_owner``, ``forbidden``, ``bad_signature``, ``unknown_signer``, ``malformed``, ...)
that the caller counts. A command's ``expires_at`` bounds when a node may first apply it (the
command path checks it); a write relayed later, after a partition or days offline, stands on
its signature and its HLC, and last-writer-wins makes a replay of it harmless.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agentd.config.fleet_state import MAX_TTL_S, key_problem, owner_of, value_problem
from agentd.control.registry import ROLE_COMMANDS, STATE_COMMANDS
from agentd.errors import Rejected, TrustError
from agentd.mesh.wire import STATE_WRITE
from agentd.state.lww import Entry, expiry
from agentd.trust.canonical import canonical
from agentd.trust.envelope import check_envelope

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentd.config.schema import Config


def check_origin(origin: Any, *, cfg: Config, node_key: Callable[[str], str | None], now: float | None = None) -> Entry:
    """The entry a signed write sets; ``Rejected`` with the reason otherwise.

    ``node_key(node)`` is the public key this node trusts for ``node`` (its peers', its own), or None.
    """
    if not isinstance(origin, dict):
        raise Rejected("malformed", "a fleet-state write is a signed envelope (an object)")
    try:
        payload = canonical(origin)
    except TrustError as exc:
        raise Rejected("malformed", str(exc)) from exc
    operators = {o.name: o for o in cfg.trust.operators}
    kind = origin.get("kind")
    if kind == STATE_WRITE:
        def key_for(name: str, _env: dict[str, Any]) -> str | None:
            return node_key(name)
    elif kind == "command":
        def key_for(name: str, _env: dict[str, Any]) -> str | None:
            return operators[name].key if name in operators else None
    else:
        raise Rejected("malformed", f"a fleet-state write is a {STATE_WRITE} or a command envelope, not {str(kind)[:32]!r}")
    now = time.time() if now is None else now
    env = check_envelope(payload, fleet=cfg.node.fleet, max_bytes=cfg.mqtt.max_payload_bytes, key_for=key_for,
                         now_ms=int(now * 1000), max_skew_ms=int(cfg.mesh.max_clock_skew_s * 1000))
    body, signer = env["body"], env["node"]
    if kind == STATE_WRITE:
        args, unset, writer = body, body.get("unset") is True, signer
    else:
        cmd = body.get("cmd")
        if cmd not in STATE_COMMANDS:
            raise Rejected("malformed", f"command {str(cmd)[:32]!r} writes no fleet state")
        role = operators[signer].role
        if cmd not in ROLE_COMMANDS[role]:
            raise Rejected("forbidden", f"operator {signer!r} ({role}) may not {cmd}")
        args, unset, writer = body.get("args"), cmd == "fleet_unset", f"operator:{signer}"
        if not isinstance(args, dict):
            raise Rejected("malformed", '"args" must be an object')
    key = args.get("key")
    problem = key_problem(key)
    if problem is not None:
        raise Rejected("malformed", problem)
    owner = owner_of(key)
    if kind == STATE_WRITE and owner != signer:
        raise Rejected("not_owner", f"node {signer!r} may write only its own keys (nodes/{signer}/...), not {key!r}")
    if kind == "command" and owner is not None:
        raise Rejected("not_owner", f"{key!r} belongs to node {owner!r}; operators write site keys (not under nodes/)")
    value, lifetime = (None, None) if unset else (args.get("value"), args.get("expires_in_s"))
    problem = None if unset else value_problem(value)
    if problem is not None:
        raise Rejected("malformed", f"value of {key!r}: {problem}")
    if lifetime is not None and (isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or not 0 < lifetime <= MAX_TTL_S):
        raise Rejected("malformed", f'"expires_in_s" must be a number of seconds in (0, {MAX_TTL_S:.0f}]')
    return Entry(key=key, hlc=env["hlc"], writer=writer, wid=env["id"], value=value, deleted=unset, expires_at=expiry(env["hlc"], lifetime))
