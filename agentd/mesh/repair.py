"""Anti-entropy repair (issue 16, part 4; DESIGN section 6, "Repair"): digests that say exactly what
a peer lacks, and resends batched under one signature that wait for the peer's subscriptions.

Every ``mqtt.digest_interval_s``, at once on connect, and early (at most once per
``trigger_gap_s``) when a peer's digest shows this node lacks something, a node publishes a
digest: per origin node ``[decisions held since "since", newest time]``, per fleet-state writer
``[winning keys held, newest HLC]``, and when its session's subscriptions were in place
(``subscribed``). A peer's digest is answered with exactly what it lacks:

- our own decisions after the newest it holds, when it holds exactly the ones before (counted
  against ours up to that time); the whole window only when it lacks some in the middle;
- per writer, the signed writes whose winners we hold newer than its newest for that writer,
  or all of that writer's when its count shows a hole (anyone relays any writer's write: the
  origin's own signature travels with it).

A resend goes out on ``gossip/<node>`` and reaches every peer, so it is planned once per
record: again only when a digest made ``grace_s`` after the resend still lacks it, or at once
when the digest's session subscribed after the resend went out (it could not have received
it). Answers of the same ``DEBOUNCE_S`` are sent together, packed into signed batches
(``agentd.trust.batch``). A write relayed by another peer counts as resent here, from when the
relay went out. The planners are pure functions.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from agentd.ids import new_id
from agentd.mesh.topics import topic
from agentd.mesh.transport import publish_in_loop
from agentd.state import digests, queries
from agentd.trust.batch import batch_body, item_bytes, pack
from agentd.trust.canonical import canonical
from agentd.trust.envelope import envelope
from agentd.trust.hlc import decode as hlc_decode

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentd.config.schema import Config
    from agentd.mesh.publisher import OutboxPublisher
    from agentd.state.store import Store
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import NodeKey

log = logging.getLogger(__name__)
DIGEST_WINDOW_S = 24 * 3600.0  # anti-entropy covers the decisions fleet_count() can read
RESEND_GRACE_S = 3.0  # time a resend is given to reach subscribed peers before their digests count against it
SETTLE_S = 1.0  # what a peer holds that is newer than this (before its digest) may still be on its way to us
TRIGGER_GAP_S = 0.25  # early digests of one node: at most one in this long ...
TRIGGERS_PER_S = 100.0  # ... and, across the fleet, about this many a second
IN_REACH_S = 10.0  # a node heard from within max(this, 2.5 digest intervals) relays its own writes
LATENCY_S = 0.25  # a resend reaches a peer in reach within this (a digest made earlier says nothing about it)
DEBOUNCE_S = 0.05  # the answers to digests arriving within this go out together
MAX_RESENT = 100_000  # resend times remembered before the ones older than an hour are forgotten
CACHE_S = 5.0  # the digest's own sums are read again after a commit, or after this long


def decisions_from(theirs: Any, ours: tuple[int, int, float], since: float) -> float | None:
    """Where to resend our decisions from when a peer holds ``theirs`` ([count, newest]) of them and
    ``ours`` is (our count since ``since``, how many of those are dated at or before the peer's
    newest, our newest): after its newest when it holds exactly the ones up to it, else the whole
    window (it lacks some in the middle). None when it lacks none."""
    if not _pair(theirs) or not isinstance(theirs[1], int | float) or theirs[0] >= ours[0]:
        return None
    count, newest = int(theirs[0]), float(theirs[1])
    if newest and count == ours[1] and newest < ours[2]:
        return newest
    return float(since)


def writers_from(theirs: Any, ours: dict[str, list[str]]) -> dict[str, str]:
    """Per writer whose winning writes we hold (``ours``: their HLCs, sorted) and a peer's digest
    (``theirs``: writer -> [count, newest HLC]) may lack: the HLC after which to relay them ("" for
    all). A peer that holds as many up to its newest and nothing older than our newest lacks none."""
    their = theirs if isinstance(theirs, dict) else {}
    out: dict[str, str] = {}
    for writer, hlcs in ours.items():
        if not hlcs:
            continue
        entry: Any = their.get(writer)
        if not _pair(entry) or not isinstance(entry[1], str):
            out[writer] = ""
            continue
        count, newest = int(entry[0]), str(entry[1])
        upto = bisect.bisect_right(hlcs, newest)
        if count >= upto and newest >= hlcs[-1]:
            continue
        out[writer] = newest if count >= upto else ""
    return out


def behind(theirs: dict[str, Any], ours: dict[str, Any], *, me: str, settled_before: float) -> bool:
    """True when a peer's digest (``counts`` and ``writers``) shows it holds something we lack and
    that had time to reach us: decisions of some other node, or winning writes of some writer, that
    we lack in the middle (it holds more with a newest no newer than ours), or newer ones dated
    before ``settled_before`` (epoch seconds; later ones may still be on their way)."""
    for part, kind in (("counts", (int, float)), ("writers", (str,))):
        mine = ours.get(part) or {}
        entries = theirs.get(part)
        for origin, entry in (entries if isinstance(entries, dict) else {}).items():
            if not _pair(entry) or not isinstance(entry[1], kind) or entry[0] <= 0 or (part == "counts" and origin == me):
                continue
            have = mine.get(origin) or [0, 0.0 if part == "counts" else ""]
            newer = entry[1] > have[1]
            if (newer and _seconds(entry[1]) < settled_before) or (not newer and entry[0] > have[0]):
                return True
    return False


def _seconds(stamp: float | str) -> float:
    """A decision time (seconds), or an HLC's wall time in seconds."""
    if isinstance(stamp, str):
        try:
            return hlc_decode(stamp)[0] / 1000
        except ValueError:
            return float("inf")
    return float(stamp)


Sent = tuple[float, set[str]]  # when a resend went out (or was heard relayed), and the peers whose digests asked for it


def due(sent: Sent | None, peer: str, *, made_at: float, subscribed: float | None, grace_s: float, latency_s: float) -> bool:
    """Whether a digest of ``peer`` made at ``made_at`` by a session subscribed at ``subscribed`` (peer
    clock, seconds) may have something resent that went out as ``sent``: never sent; sent before the
    peer's subscriptions were in place; asked for by this peer and still lacking ``grace_s`` after;
    or not asked for by it (it may have been out of reach, on the other side of a partition) and
    still lacking ``latency_s`` after."""
    if sent is None:
        return True
    at, askers = sent
    if subscribed is not None and subscribed > at:
        return True
    return made_at >= at + (grace_s if peer in askers else latency_s)


def worth_asking(subscribed: float | None, *, sent_at: float, now: float, grace_s: float) -> bool:
    """Whether to send our digest early for a peer (subscribed at ``subscribed``) that showed we lack
    something: only when it could not have seen our last digest (sent at ``sent_at``: it subscribed
    later) or that digest is ``grace_s`` old; otherwise the answers it asked for may be on their way."""
    return subscribed is None or subscribed > sent_at or now - sent_at >= grace_s


def left_to_writer(writer: str, hlcs: list[str], *, me: str, heard_ago: float | None, claim: Any, in_reach_s: float) -> bool:
    """Whether to leave another node's writes (``hlcs``, the winners of it we hold) to that node: it was
    heard from ``heard_ago`` seconds ago, within ``in_reach_s``, and its own last digest's entry for its
    writes (``claim``: [count, newest]) covers ours, so it answers the digest itself (every node relaying
    every write it holds made a heal's batches grow with the fleet: O(N^2) items). An operator's writes,
    and those of a node out of reach or behind on its own (a restore), anyone relays."""
    return (writer != me and heard_ago is not None and heard_ago < in_reach_s and _pair(claim) and isinstance(claim[1], str)
            and claim[0] >= len(hlcs) and claim[1] >= hlcs[-1])


def _pair(entry: Any) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int) and not isinstance(entry[0], bool)


class Repair:
    """One node's digests out and the resends they ask for (owned by ``Gossip``)."""

    def __init__(
        self, *, cfg: Config, store: Callable[[], Store], publisher: OutboxPublisher, key: NodeKey, clock: Clock,
        counters: dict[str, int], peers: Callable[[], int] = lambda: 0,
    ) -> None:
        self.fleet, self.node = cfg.node.fleet, cfg.node.id
        self._interval = cfg.mqtt.digest_interval_s
        self._max_bytes = cfg.mqtt.max_payload_bytes
        self._grace = RESEND_GRACE_S
        self._peers = peers
        self._store, self._publisher, self._key, self._clock, self._counters = store, publisher, key, clock, counters
        self._resent_at: dict[str, Sent] = {}  # "d:<decision id>" or "s:<write id>" -> last resent (or heard relayed)
        self._pending: dict[str, tuple[str, dict[str, Any]]] = {}  # ref -> (kind, record or signed write), for the next flush
        self._askers: dict[str, set[str]] = {}  # ref -> the peers whose digests asked for it, for the next flush
        self._asked_at: dict[str, float] = {}  # ref -> when the last of those digests was taken (epoch seconds), for the next flush
        self._flush: asyncio.TimerHandle | None = None
        self._wake: asyncio.Event | None = None
        self._triggered_at = -1e18
        self._deferred: asyncio.TimerHandle | None = None
        self._asked = False  # an early digest is wanted (``trigger``)
        self._again = False  # ... or only if the evidence below still shows us behind (``_look_again``)
        self._evidence: tuple[dict[str, Any], float] | None = None  # the last digest that showed us behind while we waited, settled before
        self._recheck: asyncio.TimerHandle | None = None
        self._sent_at = -1e18  # when our last digest went out (epoch seconds)
        self._last_heard: dict[str, float] = {}  # peer node -> when a verified message of it last came (monotonic)
        self._own_claims: dict[str, Any] = {}  # peer node -> its digest's entry for its own writes
        self._in_reach_s = max(IN_REACH_S, 2.5 * self._interval)
        self._subscribed: float | None = None
        self._cache: tuple[int, float, dict[str, Any]] | None = None
        self._covered: dict[str, tuple[Any, Sent]] = {}  # "d:" (our decisions) or "w:<writer>" -> (resent after, sent)

    # -- digests out ---------------------------------------------------------

    async def digests(self, client: Any) -> None:
        """On connect (the session's subscriptions are in place), then every digest interval, or early when triggered
        (``trigger``; ``_look_again``: only if a peer's digest still shows that we lack something)."""
        loop = asyncio.get_running_loop()
        self._subscribed = time.time()
        self._wake = asyncio.Event()
        self._asked = self._again = False
        send, deadline = True, 0.0
        while True:
            sums = await self._sums()
            self._wake.clear()
            asked, self._asked = self._asked, False
            again, self._again = self._again, False
            if again and not (send or asked):
                evidence, self._evidence = self._evidence, None
                send = evidence is not None and behind(evidence[0], sums, me=self.node, settled_before=evidence[1])
                if send:
                    self._counters["digests_asked_again"] = self._counters.get("digests_asked_again", 0) + 1
            if send or asked:
                body = {"since": sums["since"], "counts": sums["counts"], "writers": sums["writers"], "subscribed": self._subscribed}
                payload = envelope("digest", fleet=self.fleet, node=self.node, hlc=self._clock.now(), body=body, key=self._key)
                self._sent_at = time.time()
                await publish_in_loop(client, topic(self.fleet, "gossip", self.node), payload, qos=0)
                self._counters["digests_sent"] = self._counters.get("digests_sent", 0) + 1
                deadline = loop.time() + self._interval * random.uniform(0.9, 1.1)  # no fleet-wide herd
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
                send = False
            except TimeoutError:
                send = True

    async def _sums(self) -> dict[str, Any]:
        """What our digest says (``since``, ``counts``, ``writers``), read again after a commit or CACHE_S."""
        store = self._store()
        now = time.monotonic()
        if self._cache is not None and self._cache[0] == store.commits and now - self._cache[1] < CACHE_S:
            return self._cache[2]
        since = time.time() - DIGEST_WINDOW_S

        def read(conn: Any) -> dict[str, Any]:
            held = digests.writers(conn)
            return {"since": since, "counts": queries.fleet_digest(conn, since),
                    "writers": {w: [len(h), h[-1]] for w, h in held.items()}, "_held": held}

        sums = await store.read(read)
        self._cache = (store.commits, now, sums)
        return sums

    @property
    def trigger_gap_s(self) -> float:
        """The least time between early digests: 0.25 s, or a hundredth of a second per peer (the fleet's early
        digests stay near 100 a second whatever its size), at most the digest interval."""
        return min(self._interval, max(TRIGGER_GAP_S, self._peers() / TRIGGERS_PER_S))

    def trigger(self, subscribed: float | None, evidence: tuple[dict[str, Any], float] | None = None) -> None:
        """Send our digest early: a peer whose session subscribed at ``subscribed`` showed we lack something
        (``evidence``: its digest, and the time before which what it holds had time to reach us).

        Only when that peer could not have seen our last digest (it subscribed after it went out,
        or that one is older than the resend grace): our last digest already asks everyone who saw
        it, and answers may just be on their way. Whether they came is looked at once that digest
        is the grace old (``_look_again``): if they did not, we ask again then. At most once per
        ``trigger_gap_s``; one asked for sooner goes out when that time is up (a later peer's digest
        must not be lost in it).
        """
        if self._wake is None:
            return
        now = time.time()
        if worth_asking(subscribed, sent_at=self._sent_at, now=now, grace_s=self._grace):
            self._asked = True
            self._soon()
        elif evidence is not None:
            self._evidence = evidence  # the latest: one digest body held, whatever the fleet's size
            if self._recheck is None:
                self._recheck = asyncio.get_running_loop().call_later(max(0.0, self._sent_at + self._grace - now), self._look_again)

    def _look_again(self) -> None:
        """Our last digest is the resend grace old: ask again if the evidence still shows us behind (the
        digests loop looks, with our sums as they are now). A digest that went out meanwhile is given
        the grace in turn."""
        self._recheck = None
        left = self._sent_at + self._grace - time.time()
        if left > 0:
            self._recheck = asyncio.get_running_loop().call_later(left, self._look_again)
        elif self._evidence is not None:
            self._again = True
            self._soon()

    def _soon(self) -> None:
        """Wake the digests loop now, or when ``trigger_gap_s`` since the last early digest is up."""
        if self._wake is None or self._deferred is not None:
            return
        wait = self._triggered_at + self.trigger_gap_s - time.monotonic()
        if wait > 0:
            self._deferred = asyncio.get_running_loop().call_later(wait, self._fire)
        else:
            self._fire()

    def _fire(self) -> None:
        self._deferred = None
        if self._wake is not None:
            self._triggered_at = time.monotonic()
            self._counters["digests_triggered"] = self._counters.get("digests_triggered", 0) + 1
            self._wake.set()

    # -- a peer's digest in ----------------------------------------------------

    async def answer(self, peer: str, body: dict[str, Any], made_at: float) -> None:
        """A peer's digest (checked by peerwire; made at ``made_at``, its HLC): plan what it lacks; say if we lack something."""
        now = time.time()  # what is planned for this digest goes out after this
        ours = await self._sums()
        writers = body.get("writers")
        if isinstance(writers, dict) and (peer in self._own_claims or len(self._own_claims) < MAX_RESENT):
            self._own_claims[peer] = writers.get(peer)
        subscribed = body.get("subscribed")
        subscribed = float(subscribed) if isinstance(subscribed, int | float) and not isinstance(subscribed, bool) else None
        if behind(body, ours, me=self.node, settled_before=made_at - SETTLE_S):
            self.trigger(subscribed, (body, made_at - SETTLE_S))
        store = self._store()
        since = max(float(body["since"]), time.time() - DIGEST_WINDOW_S)  # a digest cannot ask for all of history
        theirs = body["counts"].get(self.node) or [0, 0.0]
        planned = 0
        mine = ours["counts"].get(self.node) or [0, 0.0]
        if _pair(theirs) and isinstance(theirs[1], int | float) and theirs[0] < mine[0]:  # it lacks some of ours
            summary = await store.read(lambda c: digests.own_upto(c, self.node, since, float(theirs[1])))
            after = decisions_from(theirs, summary, since)
            if after is not None and not self._covers("d:", peer, after, made_at, subscribed):
                rows = await store.read(lambda c: queries.own_decisions_since(c, self.node, after))
                sent = [self._plan(f"d:{r.get('id')}", peer, "decision", r, made_at, subscribed, now) for r in rows]
                planned += self._cover("d:", peer, after, sent, now)
        for writer, after_hlc in writers_from(body.get("writers"), ours["_held"]).items():
            if self._left_to_writer(writer, ours["_held"][writer]) or self._covers(f"w:{writer}", peer, after_hlc, made_at, subscribed):
                continue
            origins = await store.read(functools.partial(digests.origins_by, writer=writer, after=after_hlc))
            sent = [self._plan(f"s:{origin.get('id')}", peer, "state", origin, made_at, subscribed, now) for _, origin in origins]
            planned += self._cover(f"w:{writer}", peer, after_hlc, sent, now)
        if planned:
            log.info("anti-entropy: %s lacks %d of ours; resending in a batch", peer[:64], planned)
            if self._flush is None:
                self._flush = asyncio.get_running_loop().call_later(DEBOUNCE_S, self._send)

    def _covers(self, what: str, peer: str, after: Any, made_at: float, subscribed: float | None) -> bool:
        """Whether a resend of ``what`` from ``after`` on is covered by one noted before (``_cover``) that is
        not yet due again for ``peer``: then no query is needed."""
        last = self._covered.get(what)
        if last is not None and last[0] <= after and not due(last[1], peer, made_at=made_at, subscribed=subscribed,
                                                             grace_s=self._grace, latency_s=LATENCY_S):
            last[1][1].add(peer)
            return True
        return False

    def _cover(self, what: str, peer: str, after: Any, sent: list[tuple[bool, float]], now: float) -> int:
        """Note what ``peer``'s digest was answered with for ``what`` from ``after`` on (``_plan``'s answer for
        each record) as the covering resend for later digests; how many records were planned anew.

        It went out when the oldest of those records last did: one planned now, or waiting for the next
        flush, goes out after ``now``; one not due went out, or was relayed, at its own time, which can be
        earlier (a digest of a peer that subscribed between the two must be answered). Only when all go
        out after ``now`` did this peer ask for all of them (the resend grace applies to it).
        """
        if len(self._covered) > MAX_RESENT:
            self._covered.clear()
        at = min((t for _, t in sent), default=now)
        self._covered[what] = (after, (at, {peer} if at >= now else set()))
        return sum(1 for new, _ in sent if new)

    def _plan(self, ref: str, peer: str, kind: str, body: dict[str, Any], made_at: float, subscribed: float | None,
              now: float) -> tuple[bool, float]:
        """Plan ``ref`` for ``peer`` if it is due for it: (whether it was planned anew, when the resend that
        serves this peer goes out: ``now`` for one planned or waiting for the next flush, else when it went out)."""
        if ref in self._pending:
            self._askers.setdefault(ref, set()).add(peer)
            self._asked_at[ref] = now
            return False, now
        last = self._resent_at.get(ref)
        if last is not None and not due(last, peer, made_at=made_at, subscribed=subscribed, grace_s=self._grace, latency_s=LATENCY_S):
            return False, min(last[0], now)
        self._pending[ref] = (kind, body)
        self._askers[ref] = {peer}
        self._asked_at[ref] = now
        return True, now

    def heard_from(self, node: str) -> None:
        """A verified message of peer ``node`` came in: it is in reach, and relays its own writes."""
        if node in self._last_heard or len(self._last_heard) < MAX_RESENT:
            self._last_heard[node] = time.monotonic()

    def _left_to_writer(self, writer: str, hlcs: list[str]) -> bool:
        last = self._last_heard.get(writer)
        return left_to_writer(writer, hlcs, me=self.node, heard_ago=None if last is None else time.monotonic() - last,
                              claim=self._own_claims.get(writer), in_reach_s=self._in_reach_s)

    def heard(self, origin: Any, sent_at: float | None = None) -> None:
        """Another peer relayed this signed write in a message it made at ``sent_at`` (its HLC; None: now).

        It went out then for every peer subscribed by then: counted as resent at that time, not when
        this node took it (which may be much later, behind a backlog), and never earlier than a resend
        already counted. Our own resend of it, waiting for the next flush, is dropped only when the
        relay went out after the last digest that asked for it was taken here; an older relay may
        have passed that peer by.
        """
        if isinstance(origin, dict) and isinstance(origin.get("id"), str):
            ref = f"s:{origin['id']}"
            now = time.time()
            at = now if sent_at is None else min(sent_at, now)
            last = self._resent_at.get(ref)
            if last is None or last[0] < at:
                self._resent_at[ref] = (at, set())
            if ref in self._pending and at >= self._asked_at.get(ref, now):
                self._pending.pop(ref, None)
                self._askers.pop(ref, None)
                self._asked_at.pop(ref, None)

    def _send(self) -> None:
        """The debounced flush: everything planned, in signed batches, to the publisher."""
        self._flush = None
        planned, self._pending = self._pending, {}
        askers, self._askers = self._askers, {}
        self._asked_at = {}
        if not planned:
            return
        wall = time.time()
        if len(self._resent_at) > MAX_RESENT:
            self._resent_at = {k: t for k, t in self._resent_at.items() if wall - t[0] < 3600}
        items, by_item = [], {}
        for ref, (kind, body) in planned.items():
            self._resent_at[ref] = (wall, askers.get(ref, set()))
            if kind == "decision":
                item = item_bytes("decision", str(body["id"]), str(body["hlc"]), canonical(body))
            else:
                item = item_bytes("state", new_id(), self._clock.now(), b'{"origin":' + canonical(body) + b"}")
            items.append(item)
            by_item[item] = (kind, body)
        batches, alone = pack(items, max_bytes=self._max_bytes)
        decisions = sum(1 for k, _ in planned.values() if k == "decision")
        self._counters["resent"] = self._counters.get("resent", 0) + decisions
        self._counters["state_resent"] = self._counters.get("state_resent", 0) + len(planned) - decisions
        self._counters["batches_sent"] = self._counters.get("batches_sent", 0) + len(batches)
        self._publisher.resend_batches([batch_body(b) for b in batches])
        for item in alone:  # too large to share a batch: on its own, as before batches
            kind, body = by_item[item]
            if kind == "decision":
                self._publisher.resend([body])
            else:
                self._publisher.resend_state([body])
