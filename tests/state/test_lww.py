"""agentd.state.lww: the fleet-state register's merge is commutative, associative and idempotent,
so replicas that received the same writes in any order, any number of times, hold the same map."""

from __future__ import annotations

import dataclasses
import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from agentd.state.lww import Entry, apply_all, expiry, merge, merge_maps

KEYS = ["site/maintenance", "site/generator", "nodes/a/down", "nodes/b/down"]
hlcs = st.builds(lambda w, c: f"{w:013d}-{c:04d}", st.integers(1_700_000_000_000, 1_700_000_000_020), st.integers(0, 2))
values = st.one_of(st.booleans(), st.integers(-5, 5), st.text(max_size=3), st.dictionaries(st.text(max_size=2), st.integers(0, 3), max_size=2))
entries = st.builds(
    lambda key, hlc, writer, wid, value, deleted, ttl: Entry(
        key=key, hlc=hlc, writer=writer, wid=wid, value=None if deleted else value, deleted=deleted,
        expires_at=None if deleted or ttl is None else expiry(hlc, ttl)),
    st.sampled_from(KEYS), hlcs, st.sampled_from(["a", "b", "operator:alice"]), st.sampled_from(["w1", "w2", "w3"]),
    values, st.booleans(), st.one_of(st.none(), st.integers(1, 100)),
)
same_key = entries.map(lambda e: dataclasses.replace(e, key="k"))
replicas = st.dictionaries(st.sampled_from(KEYS), entries).map(lambda m: {e.key: e for e in m.values()})


@given(same_key, same_key)
def test_merge_is_commutative(a: Entry, b: Entry) -> None:
    assert merge(a, b) == merge(b, a)


@given(same_key, same_key, same_key)
def test_merge_is_associative(a: Entry, b: Entry, c: Entry) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@given(same_key)
def test_merge_is_idempotent_and_nothing_is_neutral(a: Entry) -> None:
    assert merge(a, a) == a
    assert merge(a, None) == merge(None, a) == a


@given(same_key, same_key)
def test_the_later_hlc_wins_and_the_writer_breaks_a_tie(a: Entry, b: Entry) -> None:
    won = merge(a, b)
    assert won is not None
    if a.hlc != b.hlc:
        assert won.hlc == max(a.hlc, b.hlc)
    elif a.writer != b.writer:
        assert won.writer == max(a.writer, b.writer)


@given(replicas, replicas, replicas)
def test_maps_merge_like_sets(a: dict[str, Entry], b: dict[str, Entry], c: dict[str, Entry]) -> None:
    assert merge_maps(a, b) == merge_maps(b, a)
    assert merge_maps(merge_maps(a, b), c) == merge_maps(a, merge_maps(b, c))
    assert merge_maps(a, a) == a


@given(st.lists(entries, max_size=12), st.lists(entries, max_size=12), st.randoms(use_true_random=False))
def test_concurrent_writes_on_both_sides_of_a_partition_end_equal(left: list[Entry], right: list[Entry], rnd: random.Random) -> None:
    """Each side writes while split; after the heal each receives the other's writes, in any order,
    some twice (redelivery, anti-entropy resends): both hold the same map."""
    side_a = apply_all({}, left)
    side_b = apply_all({}, right)
    to_a = right + rnd.sample(right, k=min(2, len(right)))
    to_b = left + rnd.sample(left, k=min(2, len(left)))
    rnd.shuffle(to_a)
    rnd.shuffle(to_b)
    healed_a, healed_b = apply_all(side_a, to_a), apply_all(side_b, to_b)
    assert healed_a == healed_b == apply_all({}, left + right)


def test_every_order_of_three_writes_ends_with_the_same_winner() -> None:
    w = [Entry("k", "1700000000000-0000", "b", "x", 1), Entry("k", "1700000000000-0000", "a", "y", 2),
         Entry("k", "1699999999999-0005", "z", "z", 3)]
    assert {apply_all({}, order)["k"].value for order in itertools.permutations(w)} == {1}


def test_expiry_counts_from_the_writes_hlc_and_a_tombstone_reads_as_absent() -> None:
    e = Entry("site/m", "1700000000000-0003", "operator:alice", "c1", True, expires_at=expiry("1700000000000-0003", 60))
    assert e.expires_at == 1_700_000_060.0
    assert e.live(1_700_000_059.9) and not e.live(1_700_000_060.0)
    gone = Entry("site/m", "1700000000001-0000", "operator:bob", "c2", deleted=True)
    assert not gone.live(0) and merge(e, gone) == gone  # the later unset wins, expiry or not
