"""agentd.hlc: the hybrid logical clock's tick/merge properties and its string form."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentd.trust.hlc import Clock, decode, encode, merge, tick

walls = st.integers(min_value=0, max_value=10**13 - 1)
counters = st.integers(min_value=0, max_value=9999)
stamps = st.tuples(walls, counters)


@given(stamps, walls)
def test_tick_is_strictly_monotonic_and_tracks_wall_time(last: tuple[int, int], now: int) -> None:
    new = tick(last, now)
    assert new > last
    assert 0 <= new[1] <= 9999
    # wall time follows the clock; it runs 1 ms ahead only when the counter would overflow
    assert max(last[0], now) <= new[0] <= max(last[0], now) + 1
    if now > last[0]:
        assert new == (now, 0)


@given(stamps, stamps, walls)
def test_merge_is_after_both_clocks_and_not_before_wall_time(
    last: tuple[int, int], remote: tuple[int, int], now: int
) -> None:
    new = merge(last, remote, now)
    assert new > last
    assert new > remote
    assert 0 <= new[1] <= 9999
    assert max(last[0], remote[0], now) <= new[0] <= max(last[0], remote[0], now) + 1


@given(stamps, stamps, walls)
def test_merge_is_symmetric_in_its_two_clocks(a: tuple[int, int], b: tuple[int, int], now: int) -> None:
    assert merge(a, b, now) == merge(b, a, now)


@given(stamps, walls)
def test_counter_resets_when_wall_time_moves_ahead(remote: tuple[int, int], now: int) -> None:
    last = (0, 5)
    new = merge(last, remote, now)
    if now > remote[0] and now > last[0]:
        assert new == (now, 0)


@given(st.lists(st.one_of(walls.map(lambda w: ("tick", w)), st.tuples(st.just("merge"), stamps, walls)), max_size=50))
def test_any_sequence_of_events_is_strictly_increasing(ops: list[tuple]) -> None:
    state = (0, 0)
    for op in ops:
        new = tick(state, op[1]) if op[0] == "tick" else merge(state, op[1], op[2])
        assert new > state
        state = new


@given(stamps)
def test_encode_decode_round_trip(ts: tuple[int, int]) -> None:
    text = encode(ts)
    assert decode(text) == ts
    assert len(text) == 18


@given(stamps, stamps)
def test_string_order_is_tuple_order(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (encode(a) < encode(b)) == (a < b)


def test_string_order_holds_when_the_clock_stands_still_under_load() -> None:
    # A wall clock stuck (or stepped back) while 2000 events/s arrive: the counter would pass
    # 9999 in 5 s. The encoded stamps must still sort like the tuples and stay decodable.
    clock = Clock(now_ms=lambda: 1_700_000_000_000)
    seen = [clock.now() for _ in range(25_000)]
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert all(decode(s) for s in seen[-3:])


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "123",
        "1700000000000",
        "1700000000000-",
        "170000000000-0001",
        "abcdefghijklm-0001",
        "1700000000000-x",
        "1700000000000-1234567890",
        "1700000000000-12345",
    ],
)
def test_decode_refuses_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="malformed HLC"):
        decode(bad)


def test_clock_is_monotonic_when_wall_time_stands_still_or_goes_back() -> None:
    times = iter([1000, 1000, 1000, 990, 980, 1001, 1001])
    clock = Clock(now_ms=lambda: next(times))
    stamps_seen = [clock.now() for _ in range(7)]
    assert stamps_seen == sorted(stamps_seen)
    assert len(set(stamps_seen)) == 7
    assert decode(stamps_seen[4]) == (1000, 4)  # the clock went back: keep counting on the old wall time
    assert decode(stamps_seen[5]) == (1001, 0)


def test_clock_observe_moves_past_a_remote_stamp() -> None:
    clock = Clock(now_ms=lambda: 1000)
    local = clock.now()
    remote = encode((5000, 7))
    after = clock.observe(remote)
    assert after > remote > local
    assert clock.now() > after


def test_clock_is_thread_safe() -> None:
    clock = Clock(now_ms=lambda: 1000)
    out: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [clock.now() for _ in range(500)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 2000


def test_decode_takes_ascii_digits_only() -> None:
    assert decode("1796119000000-0001") == (1796119000000, 1)
    arabic_indic = "".join(chr(0x660 + int(c)) for c in "1796119000000") + "-" + chr(0x660) * 4
    for bad in (arabic_indic, "179611900000a-0000", "1796119000000-00001", " 796119000000-0000", "1796119000000_0000"):
        with pytest.raises(ValueError):
            decode(bad)


@given(last=stamps, remote_wall=walls, now=walls)
def test_a_peer_moves_the_clock_at_most_the_bound_ahead(last: tuple[int, int], remote_wall: int, now: int) -> None:
    merged = merge(last, (remote_wall, 5), now, max_advance_ms=1000)
    assert merged[0] <= max(last[0], now + 1000) + 1  # +1: a full counter moves logical time one ms on
    assert merged > last


def test_fleet_count_never_counts_a_decision_before_its_time() -> None:
    import time

    from agentd.decision.fleet import FleetView

    now = time.time()
    view = FleetView()
    view.add_decision("shutdown", now - 100)
    view.add_decision("shutdown", now + 3000)  # dated ahead (a peer's clock, or a forgery within the skew bound)
    assert view.count("shutdown", 600, now=now) == 1
    assert view.count("shutdown", 600, now=now + 3100) == 1  # counted from its time on, then ages out like any other
