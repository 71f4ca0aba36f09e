"""agentd.mesh.repair and peerwire: the resend planners of decisions and fleet state, and the peer bodies (plain functions, no broker)."""

from __future__ import annotations

import pytest

from agentd.errors import Rejected
from agentd.mesh.peerwire import check_peer_body
from agentd.mesh.repair import behind, decisions_from, due, left_to_writer, worth_asking, writers_from


def test_resends_exactly_the_decisions_after_the_newest_when_a_peer_holds_all_before() -> None:
    # ours: 5 since the window, 3 of them at or before the peer's newest (100), newest 200
    assert decisions_from([3, 100.0], (5, 3, 200.0), since=10.0) == 100.0


def test_resends_the_whole_window_only_when_a_peer_lacks_some_in_the_middle() -> None:
    assert decisions_from([2, 100.0], (5, 3, 200.0), since=10.0) == 10.0  # it lacks one dated before 100
    assert decisions_from([3, 200.0], (5, 5, 200.0), since=10.0) == 10.0  # same newest, fewer
    assert decisions_from([0, 0.0], (5, 0, 200.0), since=10.0) == 10.0  # none at all


def test_resends_nothing_to_a_peer_missing_none() -> None:
    assert decisions_from([5, 200.0], (5, 5, 200.0), since=10.0) is None
    assert decisions_from([6, 300.0], (5, 5, 200.0), since=10.0) is None
    for junk in ("junk", [True, 1.0], [1], [1, "x"]):
        assert decisions_from(junk, (5, 5, 200.0), since=10.0) is None


def test_fleet_state_writes_are_relayed_per_writer_after_what_a_peer_holds() -> None:
    ours = {"n1": ["1700000000100-0000", "1700000000200-0000"], "operator:alice": ["1700000000150-0000"]}
    assert writers_from({"n1": [2, "1700000000200-0000"], "operator:alice": [1, "1700000000150-0000"]}, ours) == {}
    # behind on n1's writes (it holds the first only), alice's unknown to it
    assert writers_from({"n1": [1, "1700000000100-0000"]}, ours) == {"n1": "1700000000100-0000", "operator:alice": ""}
    # it holds n1's newest but not the one before: a hole, so all of n1's
    assert writers_from({"n1": [1, "1700000000200-0000"], "operator:alice": [1, "1700000000150-0000"]}, ours) == {"n1": ""}
    # concurrent writes on both sides of a partition: it holds a newer write of alice's that we lack; we lack nothing to send
    assert writers_from({"n1": [2, "1700000000200-0000"], "operator:alice": [2, "1700000000900-0000"]}, ours) == {}
    assert writers_from(None, {"n1": ["1700000000100-0000"]}) == {"n1": ""}
    assert writers_from({"n1": "junk"}, {"n1": ["1700000000100-0000"]}) == {"n1": ""}


def test_a_peer_holding_what_we_lack_makes_us_send_our_digest_early() -> None:
    ours = {"counts": {"me": [9, 50.0], "b": [3, 100.0]}, "writers": {"b": [1, "1700000000100-0000"]}}
    settled = 1000.0
    assert not behind({"counts": {"b": [3, 100.0], "me": [2, 10.0]}, "writers": {"b": [1, "1700000000100-0000"]}}, ours, me="me",
                      settled_before=settled)
    assert behind({"counts": {"b": [4, 150.0]}}, ours, me="me", settled_before=settled)  # newer, and settled
    assert not behind({"counts": {"b": [4, 1500.0]}}, ours, me="me", settled_before=settled)  # newer, maybe still on its way
    assert behind({"counts": {"b": [4, 100.0]}}, ours, me="me", settled_before=settled)  # a hole on our side
    assert behind({"counts": {"c": [1, 10.0]}}, ours, me="me", settled_before=settled)  # a node we know nothing of
    assert not behind({"counts": {"c": [0, 0.0], "me": [99, 999.0]}}, ours, me="me", settled_before=settled)
    assert behind({"writers": {"operator:alice": [1, "1700000000100-0000"]}}, ours, me="me", settled_before=1700000001.0)
    assert not behind({"writers": {"b": [1, "1700000005000-0000"]}}, ours, me="me", settled_before=1700000001.0)
    assert not behind({"counts": "junk", "writers": {"b": "junk"}}, ours, me="me", settled_before=settled)


def test_an_early_digest_only_for_a_peer_that_could_not_have_seen_our_last() -> None:
    assert worth_asking(None, sent_at=100.0, now=100.5, grace_s=3.0)  # an older agentd: it says nothing of it
    assert worth_asking(100.2, sent_at=100.0, now=100.5, grace_s=3.0)  # it subscribed after our last digest went out
    assert not worth_asking(99.0, sent_at=100.0, now=100.5, grace_s=3.0)  # it saw it; the answers may be on their way
    assert worth_asking(99.0, sent_at=100.0, now=103.0, grace_s=3.0)  # and they did not come


def test_another_nodes_writes_are_left_to_it_while_it_is_in_reach_and_holds_them() -> None:
    hlcs = ["1700000000100-0000", "1700000000200-0000"]
    kw = {"me": "a", "in_reach_s": 75.0}
    assert left_to_writer("b", hlcs, heard_ago=1.0, claim=[2, "1700000000200-0000"], **kw)
    assert not left_to_writer("a", hlcs, heard_ago=1.0, claim=[2, "1700000000200-0000"], **kw)  # our own: we relay them
    assert not left_to_writer("b", hlcs, heard_ago=None, claim=[2, "1700000000200-0000"], **kw)  # never heard: out of reach
    assert not left_to_writer("b", hlcs, heard_ago=100.0, claim=[2, "1700000000200-0000"], **kw)  # silent too long
    assert not left_to_writer("b", hlcs, heard_ago=1.0, claim=[1, "1700000000100-0000"], **kw)  # behind on its own (a restore)
    assert not left_to_writer("operator:alice", hlcs, heard_ago=None, claim=None, **kw)  # an operator's: anyone relays
    assert not left_to_writer("b", hlcs, heard_ago=1.0, claim="junk", **kw)


def test_a_resend_waits_for_the_grace_unless_the_peer_subscribed_after_it_or_was_out_of_reach() -> None:
    sent = (100.0, {"asker"})
    kw = {"grace_s": 3.0, "latency_s": 0.25}
    assert due(None, "asker", made_at=100.1, subscribed=None, **kw)  # never sent
    assert not due(sent, "asker", made_at=102.0, subscribed=50.0, **kw)  # it asked; the resend may still be on its way
    assert due(sent, "asker", made_at=103.0, subscribed=50.0, **kw)  # made after the grace, still lacking it
    assert due(sent, "asker", made_at=100.5, subscribed=100.2, **kw)  # subscribed after the resend went out
    assert not due(sent, "other", made_at=100.1, subscribed=None, **kw)  # made before the resend could reach it
    assert due(sent, "other", made_at=100.5, subscribed=None, **kw)  # did not ask, still lacks it: it was out of reach


def test_peer_bodies_of_the_fleet_state_are_checked() -> None:
    def check(kind: str, body: object) -> None:
        check_peer_body("gossip", {"kind": kind, "body": body}, now_s=0.0, max_skew_s=30.0)

    check("state", {"origin": {"kind": "command"}})
    check("digest", {"since": 0, "counts": {}, "state": {"n": 1, "newest": "1700000000000-0000", "sha": "ab"}})
    check("digest", {"since": 0, "counts": {}})  # from a node without fleet state (an older agentd)
    check("digest", {"since": 0, "counts": {}, "writers": {"n1": [2, "1700000000000-0000"]}, "subscribed": 1700000000.5})
    for kind, bad in (("state", {"origin": "x"}), ("state", {"origin": {}, "more": 1}),
                      ("digest", {"since": 0, "counts": {}, "state": {"n": True, "newest": "", "sha": ""}}),
                      ("digest", {"since": 0, "counts": {}, "state": {"n": 1, "newest": "x" * 40, "sha": ""}}),
                      ("digest", {"since": 0, "counts": {}, "writers": {"n1": [-1, ""]}}),
                      ("digest", {"since": 0, "counts": {}, "writers": {"n1": [1, 5]}}),
                      ("digest", {"since": 0, "counts": {}, "subscribed": "now"})):
        with pytest.raises(Rejected):
            check(kind, bad)
    with pytest.raises(Rejected):
        check_peer_body("decisions", {"kind": "state", "body": {"origin": {}}}, now_s=0.0, max_skew_s=30.0)
