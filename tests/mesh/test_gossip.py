"""agentd.mesh.gossip: the resend planner (plain functions, no broker)."""

from __future__ import annotations

from agentd.mesh.gossip import due_for_resend, resend_after


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
