"""The daemon's answer to `agentd audit verify --fleet` and `agentd restore` (issue 15, items 3 and 5).

A node asks its peers which of its heads they witnessed: a ``witness_request`` envelope on its
own ``gossip/<node>``, body ``{"node": <itself>}``, signed by its node key (so only the node, or
whoever holds its key, asks, and every peer checks it against the key it trusts for the node).
Each peer answers from its witness table with a ``reply`` envelope on ``nodes/<peer>/reply``,
signed by its own key (not when the request is over ``MAX_AGE_S`` old: one the broker
queued while the peer was away), in the shape `agentd fleet send` reads: ``{"command_id": <the request's
id>, "ok": true, "result": {"node", "witnessed": <the checkpoint as witnessed, signed by the
node> | null, "witnessed_at", "state", "seen_seq"}}``. At most ``ANSWERS_PER_S`` a second.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from typing import TYPE_CHECKING

from agentd.errors import Rejected
from agentd.mesh.topics import topic
from agentd.state.witness import witness_row
from agentd.trust.envelope import envelope
from agentd.trust.hlc import decode as hlc_decode

if TYPE_CHECKING:
    from typing import Any

    from agentd.state.store import Store
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import NodeKey

REQUEST = "witness_request"
ANSWERS_PER_S = 10


MAX_AGE_S = 120.0  # a request queued for a peer while it was away is not answered when it comes back


def is_stale(env: dict[str, Any], now: float | None = None) -> bool:
    """True when ``env`` (a verified envelope) was made more than ``MAX_AGE_S`` ago by its HLC."""
    return hlc_decode(env["hlc"])[0] / 1000 < (time.time() if now is None else now) - MAX_AGE_S


class Rate:
    """At most ``per_s`` events in any second."""

    def __init__(self, per_s: int) -> None:
        self.per_s = per_s
        self._times: deque[float] = deque()

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        while self._times and now - self._times[0] > 1.0:
            self._times.popleft()
        if len(self._times) >= self.per_s:
            return False
        self._times.append(now)
        return True


async def answer_witness_request(
    store: Store, node: str, env: dict[str, Any], *, fleet: str, me: str, key: NodeKey, clock: Clock, rate: Rate
) -> tuple[str, bytes]:
    """The reply (topic, signed envelope) to ``node``'s witness request; ``Rejected`` when it asks about
    another node or comes over the rate."""
    if is_stale(env):
        raise Rejected("stale", f"a witness request made over {MAX_AGE_S:g} s ago (queued for this node while it was away)")
    if env["body"]["node"] != node:
        raise Rejected("malformed", f"a witness request of {node[:64]!r} about {str(env['body']['node'])[:64]!r}: a node asks about itself")
    if not rate.allow():
        raise Rejected("rate_limited", f"over {rate.per_s} witness requests a second")
    row = await store.read(functools.partial(witness_row, node=node))
    result = {"node": node, "witnessed": None, "witnessed_at": None, "state": None, "seen_seq": None, "anchor": None}
    if row is not None:
        result.update(witnessed=row["head"], witnessed_at=row["witnessed_at"], state=row["state"], seen_seq=row["seen_seq"],
                      anchor=row["anchor"])
    body = {"command_id": env["id"], "ok": True, "result": result}
    return topic(fleet, "nodes", me, "reply"), envelope("reply", fleet=fleet, node=me, hlc=clock.now(), body=body, key=key)
