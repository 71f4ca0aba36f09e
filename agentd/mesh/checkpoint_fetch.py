"""A peer that missed checkpoints fetches the ones between before it judges a new head (issue 15, item 3).

A head whose chain does not reach back to the head witnessed before would be an unchecked
``gap``. Instead the peer asks the node: a ``checkpoints_request`` envelope on its own
``gossip/<peer>``, signed by the peer, body ``{"node", "after": the witnessed seq, "upto": the
new head's seq}``. Only the node itself answers, on its ``gossip/<node>`` and signed by its
key: a ``checkpoints`` envelope ``{"to": peer, "request": the request's envelope id,
"checkpoints": [at most peerwire.MAX_FETCH, from "after" on, below "upto", oldest first],
"more": bool, "lowest": the oldest checkpoint it still holds}``. Every checkpoint must be the
node's, signed by the key trusted for it (the answer's envelope is; each checkpoint's own
signature is checked as the judge links it). With ``more`` the last checkpoint sent is judged
(it becomes the witnessed head when it extends it) and the next page asked for; the last
page judges the head over the fetched chain (``trust.witness.judge_fetched``), so a node
whose chain was rewritten below its new head is found forked even after a long absence.
With no answer within ``timeout_s`` the head is taken as an unchecked gap, as before.

Bounds: one fetch at a time per node (a newer head replaces the one waiting), at most
``MAX_PENDING`` nodes; a node answers at most ``ANSWERS_PER_S`` requests a second (more are
refused as ``peer.rate_limited``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentd.errors import Rejected, TrustError
from agentd.ids import new_id
from agentd.mesh.peerwire import MAX_FETCH
from agentd.mesh.topics import topic
from agentd.mesh.witness_answers import is_stale
from agentd.state.audit_check import checkpoints_between
from agentd.state.witness import witnessed
from agentd.trust.checkpoints import Checkpoint
from agentd.trust.envelope import envelope
from agentd.trust.witness import Verdict, head_problem

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentd.mesh.refusals import RefusalTally
    from agentd.state.store import Store
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import NodeKey

log = logging.getLogger(__name__)
REQUEST, ANSWER = "checkpoints_request", "checkpoints"
MAX_PENDING = 1000
ANSWERS_PER_S = 20
MIN_TIMEOUT_S = 15.0  # a loaded node answers a page within a second; a busy 2-core board may take longer


@dataclass
class _Pending:
    request: str  # the envelope id of the request in flight
    after: int
    head: Checkpoint
    chain: list[Checkpoint]
    deadline: float


class CheckpointFetch:
    """Both ends of the fetch: asks peers for the checkpoints it missed, answers for its own."""

    def __init__(
        self, *, fleet: str, node: str, key: NodeKey, clock: Clock, store: Callable[[], Store], counters: dict[str, int],
        refusals: RefusalTally, key_of: Callable[[str], str | None], send: Callable[[str, bytes], None],
        report: Callable[[str, Verdict, bool], None], timeout_s: float,
    ) -> None:
        self.fleet, self.node = fleet, node
        self._key, self._clock, self._store, self._counters = key, clock, store, counters
        self._refusals, self._key_of, self._send, self._report = refusals, key_of, send, report
        self._timeout = max(MIN_TIMEOUT_S, timeout_s)
        self._pending: dict[str, _Pending] = {}
        self._answered: deque[float] = deque()

    def _count(self, name: str) -> None:
        self._counters[name] = self._counters.get(name, 0) + 1

    # -- the peer that missed some -------------------------------------------

    async def start(self, node: str, head: Checkpoint, chain: list[Checkpoint]) -> None:
        """``node``'s new ``head`` would be a gap: ask for the checkpoints between (or wait for the fetch in flight)."""
        waiting = self._pending.get(node)
        if waiting is not None:
            if head.seq > waiting.head.seq:
                waiting.head, waiting.chain = head, chain
            return
        if len(self._pending) >= MAX_PENDING:
            await self._settle(node, head, chain, None, None)
            return
        held = await self._store().read(lambda c: witnessed(c, node))
        if held is None:
            return
        self._pending[node] = _Pending("", held[0].seq, head, chain, 0.0)
        self._ask(node)

    def _ask(self, node: str) -> None:
        p = self._pending[node]
        p.request, p.deadline = new_id(), time.monotonic() + self._timeout
        body = {"node": node, "after": p.after, "upto": p.head.seq}
        self._send(topic(self.fleet, "gossip", self.node),
                   envelope(REQUEST, fleet=self.fleet, node=self.node, hlc=self._clock.now(), body=body, key=self._key, ident=p.request))
        self._count("checkpoint_fetches")

    async def answered(self, node: str, env: dict[str, Any]) -> None:
        """A ``checkpoints`` answer on ``node``'s gossip topic (envelope signed by ``node``, body checked)."""
        body = env["body"]
        p = self._pending.get(node)
        if body["to"] != self.node or p is None or body["request"] != p.request:
            return  # another peer's fetch, or an answer that came after the timeout
        key = self._key_of(node)
        try:
            fetched = sorted((Checkpoint.from_dict(c) for c in body["checkpoints"]), key=lambda c: c.seq)
            problem = "no key configured for it" if key is None else next(
                (f"record {c.seq}: {pr}" for c in fetched if (pr := head_problem(c, node=node, key=key, signature=False)) is not None), None)
            if problem is None and any(not p.after <= c.seq < p.head.seq for c in fetched):
                problem = f"checkpoints outside the records {p.after}-{p.head.seq} asked for"
            if problem is None and body["more"] and (not fetched or fetched[-1].seq <= p.after):
                problem = "a page that says more follow but does not move past the witnessed head"
            if problem is None and body["more"] and not fetched[-1].valid():  # it may become the witnessed head
                problem = f"record {fetched[-1].seq}: checkpoint with a bad signature"
        except TrustError as exc:
            problem = str(exc)
        if problem is not None or key is None:
            self._refusals.refused("peer", node, Rejected("bad_head", f"checkpoints of {node[:64]!r}: {problem}"))
            del self._pending[node]
            await self._settle(node, p.head, p.chain, None, None)
            return
        lowest = body["lowest"]
        if body["more"]:
            last = fetched[-1]
            verdict, changed = await self._store().witness_head(node, last, fetched[:-1], key=key, fetched=fetched[:-1], lowest=lowest)
            if verdict.outcome in ("first", "consistent"):
                p.after = last.seq
                self._ask(node)
                return
            del self._pending[node]
            self._report(node, verdict, changed)
            return
        del self._pending[node]
        await self._settle(node, p.head, p.chain, fetched, lowest)

    async def _settle(self, node: str, head: Checkpoint, chain: list[Checkpoint], fetched: list[Checkpoint] | None,
                      lowest: int | None) -> None:
        key = self._key_of(node)
        if key is None:
            return
        verdict, changed = await self._store().witness_head(node, head, chain, key=key, fetched=fetched, lowest=lowest)
        self._report(node, verdict, changed)

    async def expire(self) -> None:
        """Fetches with no answer in time: their heads are taken as unchecked gaps."""
        now = time.monotonic()
        for node, p in [(n, p) for n, p in self._pending.items() if p.deadline <= now]:
            del self._pending[node]
            self._count("checkpoint_fetches_unanswered")
            log.warning("peer %s did not send the checkpoints after record %d in %.0f s; its head at record %d is an unchecked gap",
                        node[:64], p.after, self._timeout, p.head.seq)
            await self._settle(node, p.head, p.chain, None, None)

    # -- the node asked for its own ------------------------------------------

    async def answer(self, requester: str, env: dict[str, Any]) -> None:
        """A peer's ``checkpoints_request`` (signed by ``requester``, body checked): answer it if it is about this node."""
        body = env["body"]
        if body["node"] != self.node or is_stale(env):  # not ours; or queued for us while away, its asker gone
            return
        now = time.monotonic()
        while self._answered and now - self._answered[0] > 1.0:
            self._answered.popleft()
        if len(self._answered) >= ANSWERS_PER_S:
            self._refusals.refused("peer", requester, Rejected("rate_limited", f"over {ANSWERS_PER_S} checkpoint requests a second"))
            return
        self._answered.append(now)
        cps, lowest = await self._store().read(
            functools.partial(checkpoints_between, after_seq=int(body["after"]), upto_seq=int(body["upto"]), limit=MAX_FETCH + 1))
        answer = {"to": requester, "request": env["id"], "checkpoints": cps[:MAX_FETCH], "more": len(cps) > MAX_FETCH, "lowest": lowest}
        self._send(topic(self.fleet, "gossip", self.node),
                   envelope(ANSWER, fleet=self.fleet, node=self.node, hlc=self._clock.now(), body=answer, key=self._key))
        self._count("checkpoint_answers")
