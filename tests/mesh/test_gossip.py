"""agentd.mesh.gossip: the resend planners of decisions and fleet state, and the peer bodies (plain functions, no broker)."""

from __future__ import annotations

import pytest

from agentd.errors import Rejected
from agentd.mesh.gossip import due_for_resend, resend_after, state_to_send
from agentd.mesh.peerwire import check_peer_body


def test_resends_after_the_newest_a_peer_holds() -> None:
    assert resend_after([3, 100.0], [5, 200.0], since=10.0) == 100.0


def test_resends_the_whole_window_when_the_gap_is_in_the_middle() -> None:
    assert resend_after([3, 200.0], [5, 200.0], since=10.0) == 10.0
    assert resend_after([0, 0.0], [5, 200.0], since=10.0) == 10.0


def test_resends_nothing_to_a_peer_missing_none() -> None:
    assert resend_after([5, 200.0], [5, 200.0], since=10.0) is None
    assert resend_after([6, 300.0], [5, 200.0], since=10.0) is None
    assert resend_after("junk", [5, 200.0], since=10.0) is None


def test_a_digest_older_than_the_last_resend_does_not_ask_again() -> None:
    records = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    resent_at = {"a": 100.0, "b": 98.0}
    due = due_for_resend(records, resent_at, made_at=100.5, grace_s=1.0)
    assert [r["id"] for r in due] == ["b", "c"]


def test_fleet_state_is_relayed_after_a_peers_newest_or_whole_when_it_is_not_behind() -> None:
    ours = {"n": 3, "newest": "1700000000500-0000", "sha": "s1"}
    assert state_to_send({"n": 2, "newest": "1700000000100-0000", "sha": "s0"}, ours) == "1700000000100-0000"
    assert state_to_send({"n": 3, "newest": "1700000000900-0000", "sha": "s2"}, ours) == ""  # a partition wrote on both sides
    assert state_to_send({"n": 3, "newest": ours["newest"], "sha": "s2"}, ours) == ""
    assert state_to_send({**ours}, ours) is None  # the same map
    assert state_to_send(None, ours) is None  # an older agentd's digest says nothing of it
    assert state_to_send({"n": 1, "newest": "x", "sha": "s9"}, {"n": 0, "newest": "", "sha": "e"}) is None  # nothing to give


def test_peer_bodies_of_the_fleet_state_are_checked() -> None:
    def check(kind: str, body: object) -> None:
        check_peer_body("gossip", {"kind": kind, "body": body}, now_s=0.0, max_skew_s=30.0)

    check("state", {"origin": {"kind": "command"}})
    check("digest", {"since": 0, "counts": {}, "state": {"n": 1, "newest": "1700000000000-0000", "sha": "ab"}})
    check("digest", {"since": 0, "counts": {}})  # from a node without fleet state (an older agentd)
    for kind, bad in (("state", {"origin": "x"}), ("state", {"origin": {}, "more": 1}),
                      ("digest", {"since": 0, "counts": {}, "state": {"n": True, "newest": "", "sha": ""}}),
                      ("digest", {"since": 0, "counts": {}, "state": {"n": 1, "newest": "x" * 40, "sha": ""}})):
        with pytest.raises(Rejected):
            check(kind, bad)
    with pytest.raises(Rejected):
        check_peer_body("decisions", {"kind": "state", "body": {"origin": {}}}, now_s=0.0, max_skew_s=30.0)
