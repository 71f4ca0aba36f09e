"""What the fleet witnessed of this node (issue 15): `agentd audit verify --fleet` and `agentd restore`.

``ask_peers`` sends the node's signed ``witness_request`` (``agentd.mesh.witness_answers``) once,
on its own ``gossip/<node>``, and collects the peers' signed replies with the one-shot client
(``agentd.mesh.oneshot``): a reply counts only when it verifies against the key this node
trusts for that peer (``trust.peers``, and the keys it learned where ``trust.allow_unknown_peers``
lets it learn them). ``check_chain`` then takes each witnessed head that is itself signed by
this node (a key of its own rotation history) and requires the chain in a database (the live
one, or a backup's) to extend it: to hold the witnessed record with the witnessed hash. A
chain that ends below a witnessed head was truncated or rolled back; one that holds another
record there was rewritten, whoever signed its checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentd.errors import TrustError
from agentd.ids import new_id
from agentd.mesh.topics import topic
from agentd.state.audit_log import base_of
from agentd.trust.checkpoints import Checkpoint
from agentd.trust.witness import head_problem

if TYPE_CHECKING:
    from pathlib import Path

    from agentd.config.schema import Config
    from agentd.trust.keys import NodeKey

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Witness:
    """One peer's verified answer: the head of this node it witnessed (None: none yet), when, and its state there."""

    peer: str
    head: Checkpoint | None
    witnessed_at: float | None
    state: str | None
    anchor: Checkpoint | None = None  # the last head it verified by links, where it later took one over a gap

    def as_dict(self) -> dict[str, Any]:
        return {"peer": self.peer, "seq": self.head.seq if self.head else None, "hash": self.head.hash if self.head else None,
                "witnessed_at": self.witnessed_at, "state": self.state, "anchor": self.anchor.seq if self.anchor else None}


@dataclass
class FleetCheck:
    """The answers, and what the chain checked against them showed."""

    asked: list[str]
    answers: list[Witness] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)  # "peer: why", never counted
    failures: list[str] = field(default_factory=list)  # witnessed heads the chain does not extend
    unchecked: list[str] = field(default_factory=list)  # witnessed heads below the chain's (pruned) base

    @property
    def witnessed(self) -> list[Witness]:
        return [w for w in self.answers if w.head is not None]

    @property
    def newest(self) -> Witness | None:
        return max(self.witnessed, key=lambda w: w.head.seq if w.head else -1, default=None)

    @property
    def ok(self) -> bool:
        """At least one peer witnessed a head of this node, and the chain extends every one."""
        return bool(self.witnessed) and not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "asked": self.asked, "answered": [w.peer for w in self.answers],
                "witnessed": [w.as_dict() for w in self.witnessed], "unverified": self.unverified,
                "failures": self.failures, "unchecked": self.unchecked}


def trusted_peers(cfg: Config, conn: sqlite3.Connection | None) -> dict[str, str]:
    """The peers' keys as the node trusts them: ``trust.peers``, and the keys it learned where it may learn."""
    keys: dict[str, str] = {}
    if cfg.trust.allow_unknown_peers and conn is not None:
        with contextlib.suppress(sqlite3.DatabaseError):  # a database no agentd has opened yet
            keys.update({str(n): str(k) for n, k in conn.execute("SELECT node, public_key FROM peers WHERE public_key IS NOT NULL")})
    keys.update(cfg.trust.peers)
    keys.pop(cfg.node.id, None)
    return keys


def ask_peers(cfg: Config, key: NodeKey, peers: dict[str, str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> FleetCheck:
    """Ask the peers once which heads of this node they witnessed; the verified answers (MeshError: no broker)."""
    from agentd.mesh.oneshot import send_command
    from agentd.trust.envelope import envelope
    from agentd.trust.hlc import Clock

    me, fleet = cfg.node.id, cfg.node.fleet
    rid = new_id()
    payload = envelope("witness_request", fleet=fleet, node=me, hlc=Clock().now(), body={"node": me}, key=key, ident=rid)
    outcome = send_command(cfg, payload, command_id=rid, target="all", timeout_s=timeout_s, peer_keys=peers,
                           to_topic=topic(fleet, "gossip", me), expect=sorted(peers))
    check = FleetCheck(asked=sorted(peers))
    for reply in outcome.replies:
        if reply.node not in peers:
            continue  # not a peer this node trusts: its word counts for nothing here
        if not reply.verified:
            check.unverified.append(f"{reply.node}: {reply.reason}")
            continue
        result = reply.body.get("result") if isinstance(reply.body, dict) else None
        if not isinstance(result, dict) or result.get("node") != me:
            check.unverified.append(f"{reply.node}: the reply is not about node {me}")
            continue
        try:
            head, anchor = (Checkpoint.from_dict(result[k]) if result.get(k) is not None else None for k in ("witnessed", "anchor"))
        except (TrustError, TypeError, KeyError, ValueError) as exc:
            check.unverified.append(f"{reply.node}: {str(exc)[:200]}")
            continue
        at = result.get("witnessed_at")
        check.answers.append(Witness(reply.node, head, float(at) if isinstance(at, int | float) else None,
                                     str(result.get("state")) if result.get("state") is not None else None, anchor))
    return check


def own_keys(conn: sqlite3.Connection, pinned: str) -> set[str]:
    """The pinned key and every key of the chain's rotation history (its rotations verify by both keys)."""
    keys = {pinned}
    for (body,) in conn.execute("SELECT body FROM audit WHERE kind = 'key_rotation'"):
        parsed = json.loads(body)
        keys.update(str(parsed[k]) for k in ("old", "new") if isinstance(parsed.get(k), str))
    return keys


def check_chain(conn: sqlite3.Connection, check: FleetCheck, *, node: str, keys: set[str], what: str = "the local chain") -> FleetCheck:
    """Require the chain in ``conn`` to extend every witnessed head signed by one of ``keys``."""
    last = conn.execute("SELECT MAX(seq) FROM audit").fetchone()[0] or 0
    base_seq, _ = base_of(conn)
    good = []
    for w in check.answers:
        problem = next((p for cp in (w.head, w.anchor) if cp is not None and (p := _unsigned(cp, node, keys))), None)
        if problem is not None:
            check.unverified.append(f"{w.peer}: its witnessed head is not signed by this node's key ({problem})")
            continue
        good.append(w)
        if w.head is not None:
            by = f"witnessed by {w.peer}" + (f" ({w.state})" if w.state not in (None, "first", "consistent") else "")
            _require(conn, check, w.head, by=by, what=what, last=last, base_seq=base_seq)
        if w.anchor is not None:
            _require(conn, check, w.anchor, what=what, last=last, base_seq=base_seq, anchor=True,
                     by=f"that {w.peer} verified last before taking a later head over a gap it could not check")
    check.answers = good
    return check


def _unsigned(cp: Checkpoint, node: str, keys: set[str]) -> str | None:
    """Why ``cp`` is not a checkpoint of ``node`` signed by one of ``keys``; None when it is."""
    problems = [head_problem(cp, node=node, key=k) for k in keys]
    return None if any(p is None for p in problems) else problems[0]


def _require(conn: sqlite3.Connection, check: FleetCheck, cp: Checkpoint, *, by: str, what: str, last: int, base_seq: int,
             anchor: bool = False) -> None:
    """The chain must hold ``cp``'s record with ``cp``'s hash; else a failure (or, below a pruned base, unchecked,
    but never for an anchor: a chain pruned past it is what a laundered rewrite looks like)."""
    row = conn.execute("SELECT hash FROM audit WHERE seq = ?", (cp.seq,)).fetchone()
    if row is not None and row[0] == cp.hash:
        return
    if anchor and row is None and cp.seq <= base_seq:
        check.failures.append(f"the head at record {cp.seq} {by} is below {what}'s base (record {base_seq}, pruned): it"
                              " cannot be shown to extend it; if this node pruned its audit after an export, verify the"
                              " export (audit verify --export) and have that peer's operator clear it"
                              " (agentd peers clear-flag)")
        return
    if row is not None:
        check.failures.append(f"record {cp.seq} of {what} is not the one {by} (hash {row[0][:12]}..., witnessed"
                              f" {cp.hash[:12]}...): the chain was rewritten")
    elif cp.seq > last:
        check.failures.append(f"{what} ends at record {last}, below the head at record {cp.seq} {by}: records were"
                              " deleted (a truncated tail) or an older copy was restored")
    elif cp.seq <= base_seq:
        check.unchecked.append(f"the head at record {cp.seq} {by} is below the chain's base (record {base_seq}, pruned)")
    else:
        check.failures.append(f"record {cp.seq} {by} is missing from {what}")


def restore_check(cfg: Config, backup_db: Path, current_db: Path, key: NodeKey, *, force: bool, timeout_s: float) -> dict[str, Any]:
    """Before a restore: ask the peers for the heads of this node they witnessed and refuse (StateError) a
    backup whose chain does not extend one of them, or, with no answer, any backup, unless ``force``.
    Returns what the signed restore record keeps of it."""
    from agentd.errors import MeshError, StateError

    if not cfg.mqtt.enabled:
        return {"asked": [], "note": "no broker configured (mqtt.enabled: false): the peers were not asked", "forced": force}
    peers_conn = sqlite3.connect(f"file:{current_db}?mode=ro", uri=True) if current_db.exists() else None
    try:
        peers = trusted_peers(cfg, peers_conn)
    finally:
        if peers_conn is not None:
            peers_conn.close()
    unreachable = None
    try:
        check = ask_peers(cfg, key, peers, timeout_s=timeout_s)
    except MeshError as exc:
        check, unreachable = FleetCheck(asked=sorted(peers)), str(exc)
    conn = sqlite3.connect(f"file:{backup_db}?mode=ro", uri=True)
    try:
        check_chain(conn, check, node=cfg.node.id, keys=own_keys(conn, key.public_b64), what="the backup's chain")
    finally:
        conn.close()
    record = {**check.as_dict(), "forced": force}
    if unreachable:
        record["unreachable"] = unreachable
    if check.failures and not force:
        raise StateError(f"refusing the backup: {check.failures[0]}; restoring it would roll the node back behind what its"
                         " peers witnessed: restore a newer backup, or pass --force (recorded in the signed restore record)")
    if not check.answers and not force:
        why = unreachable or f"no peer answered in {timeout_s:g} s ({len(check.asked)} asked: {', '.join(check.asked) or 'none configured'})"
        raise StateError(f"{why}: nothing shows the backup is not older than a head the peers witnessed;"
                         " pass --force to restore it anyway (recorded in the signed restore record)")
    return record
