"""Signed fleet commands (DESIGN section 7): who may do what, and the checks before anything runs.

A command is an envelope of kind ``command`` whose ``node`` is the operator's name and whose
body is ``{"cmd", "target", "args", "expires_at"}``. It is accepted only if the operator is
in ``trust.operators``, the signature verifies with that operator's key, the role allows the
command, ``expires_at`` has not passed (and is not absurdly far ahead), the envelope id was
never seen (nonces persist in SQLite), and the target is this node or ``all``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agentd.control.registry import COMMANDS, ROLE_COMMANDS
from agentd.errors import Rejected
from agentd.trust import hlc
from agentd.trust.envelope import check_envelope

if TYPE_CHECKING:
    from agentd.config.schema import Config

MAX_VALIDITY_S = 24 * 3600


# Refusals that a known operator's signature stands behind: audited one by one and answered.
# Everything else (unsigned, forged, malformed, replayed, not for this node) is only counted and
# summarised, so a flood costs no reply and bounded audit growth (DESIGN section 7).
ANSWERED = frozenset({"unknown_command", "malformed", "expired", "forbidden"})


def check_command(payload: bytes, *, cfg: Config, now: float, seen: set[str] | None = None) -> dict[str, Any]:
    """The verified command envelope; ``Rejected`` with a reason code otherwise.

    A refusal after the signature verified is a ``CommandRefused``, which holds the envelope.
    ``seen`` holds envelope ids already used (the caller persists them).
    """
    operators = {o.name: o for o in cfg.trust.operators}
    try:
        env = check_envelope(
            payload,
            fleet=cfg.node.fleet,
            max_bytes=cfg.mqtt.max_payload_bytes,
            key_for=lambda name, _env: operators[name].key if name in operators else None,
            now_ms=int(now * 1000),
            max_skew_ms=int(cfg.mesh.max_clock_skew_s * 1000),
            accept_v1=cfg.mesh.accept_v1,
        )
    except Rejected as exc:
        if exc.reason == "unknown_signer":
            raise Rejected("unknown_signer", "the operator is not in trust.operators on this node") from exc
        raise
    try:
        _check_body(env, cfg=cfg, now=now, operators=operators, seen=seen)
    except Rejected as exc:
        raise CommandRefused(exc, env) from None
    return env


class CommandRefused(Rejected):
    """A command whose operator signature verified, refused for what it asks; ``env`` is the envelope."""

    def __init__(self, exc: Rejected, env: dict[str, Any]) -> None:
        super().__init__(exc.reason, str(exc))
        self.env = env


def _check_body(env: dict[str, Any], *, cfg: Config, now: float, operators: dict[str, Any], seen: set[str] | None) -> None:
    if env["kind"] != "command":
        raise Rejected("malformed", f"kind {env['kind'][:32]!r} on a command topic")
    body = env["body"]
    cmd, target, args, expires_at = body.get("cmd"), body.get("target"), body.get("args", {}), body.get("expires_at")
    if target not in (cfg.node.id, "all"):  # first: a command for another node is never answered here
        raise Rejected("wrong_target", f"for {str(target)[:64]!r}, this is {cfg.node.id!r}")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise Rejected("unknown_command", f"{str(cmd)[:32]!r} (known: {', '.join(sorted(COMMANDS))})")
    if not isinstance(args, dict):
        raise Rejected("malformed", '"args" must be an object')
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise Rejected("malformed", '"expires_at" (epoch seconds) is required')
    if hlc.decode(env["hlc"])[0] < (now - MAX_VALIDITY_S) * 1000:  # signed longer ago than any command lives
        raise Rejected("stale", "signed more than 24 h ago")
    if expires_at <= now:
        raise Rejected("expired", f"expired {now - expires_at:.0f} s ago")
    if expires_at > now + MAX_VALIDITY_S:
        raise Rejected("malformed", f"expires_at more than {MAX_VALIDITY_S // 3600} h ahead")
    role = operators[env["node"]].role
    if cmd not in ROLE_COMMANDS[role]:
        raise Rejected("forbidden", f"operator {env['node']!r} ({role}) may not {cmd}")
    if seen is not None and env["id"] in seen:
        raise Rejected("replayed", f"command id {env['id'][:40]!r} was already used")


def new_command(cmd: str, *, target: str, args: dict[str, Any] | None = None, ttl_s: float = 300.0, now: float | None = None) -> dict[str, Any]:
    """The body of a command to sign."""
    return {"cmd": cmd, "target": target, "args": args or {}, "expires_at": round((now or time.time()) + ttl_s, 3)}
