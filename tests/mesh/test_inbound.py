"""agentd.mesh.inbound: which inbound topics a node reads, and as what."""

from __future__ import annotations

from agentd.mesh.inbound import Route, Router


def test_routes_events_commands_and_peer_messages() -> None:
    router = Router(fleet="f", node="n1")
    assert router.route("agentd/v1/f/nodes/n1/events/freezer_health") == Route("event", "freezer_health")
    assert router.route("agentd/v1/f/cmd/n1") == Route("command")
    assert router.route("agentd/v1/f/cmd/all") == Route("command")
    assert router.route("agentd/v1/f/nodes/n2/decisions") == Route("peer", "n2", "decisions")
    assert router.route("agentd/v1/f/nodes/n2/status") == Route("peer", "n2", "status")
    assert router.route("agentd/v1/f/gossip/n2") == Route("peer", "n2", "gossip")


def test_ignores_its_own_messages_and_other_topics() -> None:
    router = Router(fleet="f", node="n1")
    for name in ("agentd/v1/f/nodes/n1/decisions", "agentd/v1/f/nodes/n1/status", "agentd/v1/f/gossip/n1",
                 "agentd/v1/f/cmd/n2", "agentd/v1/f/nodes/n2/metrics", "agentd/v1/f/nodes/n2/events/x",
                 "agentd/v1/other/nodes/n2/decisions"):
        assert router.route(name) is None, name
