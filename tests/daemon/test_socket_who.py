"""Who a local request is recorded as coming from: the kernel's word (SO_PEERCRED), a claim beside it."""

from __future__ import annotations

import os
import pwd
import socket

from agentd.daemon.socket_api import peer_user, who
from agentd.state.labels import MAX_BY


def test_the_peer_of_a_unix_socket_is_the_calling_user() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        assert peer_user(a) == f"local:{pwd.getpwuid(os.getuid()).pw_name}(uid={os.getuid()})"
    finally:
        a.close()
        b.close()
    assert peer_user(None) is None


def test_a_claim_is_kept_beside_the_uid_and_cut_before_it() -> None:
    peer = "local:ops(uid=1001)"
    assert who("local-cli", peer) == peer and who("local:ops", peer) == peer
    assert who("alice", peer) == f"alice via {peer}"
    long = who("x" * 200, peer)
    assert long.endswith(f" via {peer}") and len(long) == MAX_BY
    assert who("alice", None) == "alice"


def test_a_claim_cannot_pass_for_the_kernels_part() -> None:
    """Issue 15 (review): a --by that itself holds " via local:root(uid=0)" must not read as who called."""
    peer = "local:mallory(uid=1001)"
    recorded = who("alice via local:root(uid=0)", peer)
    assert recorded.endswith(f" via {peer}") and recorded.count(" via ") == 1 and "(uid=0)" not in recorded.split(" via ")[-1]
