"""Tests of storage.bloom.BloomCache: the bounded set of the newest blocks' filters a store keeps
in memory (the filters themselves are tested with the blocks, in test_block.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from storage.bloom import BloomCache


def test_the_oldest_filters_go_first_when_the_budget_is_passed() -> None:
    cache = BloomCache(max_bytes=10)
    for block_id in range(5):
        cache.add(block_id, bytes([block_id]) * 3)
    assert [block_id for block_id in range(5) if block_id in cache] == [2, 3, 4]
    assert cache.bytes == 9 and len(cache) == 3
    assert cache.get(4) == b"\x04\x04\x04" and cache.get(0) is None


def test_drop_and_re_add_keep_the_byte_count_exact() -> None:
    cache = BloomCache(max_bytes=100)
    cache.add(1, b"x" * 10)
    cache.add(1, b"y" * 20)  # the same block again (never happens in a store, but must not leak)
    cache.drop(1)
    cache.drop(7)  # absent: nothing to do
    assert (cache.bytes, len(cache)) == (0, 0)


def test_a_filter_larger_than_the_budget_is_not_kept() -> None:
    cache = BloomCache(max_bytes=8)
    cache.add(1, b"a" * 4)
    cache.add(2, b"b" * 9)
    assert 2 not in cache and cache.get(1) == b"aaaa" and cache.bytes == 4
    empty = BloomCache(max_bytes=0)  # no cache at all: every filter is read from the map
    empty.add(1, b"a")
    assert len(empty) == 0


@given(st.integers(0, 200), st.lists(st.integers(1, 60), max_size=40))
def test_it_holds_the_longest_run_of_newest_filters_that_fits(budget: int, sizes: list[int]) -> None:
    """Newest first, every filter that fits in what is left of the budget, up to the first that does
    not (a filter larger than the whole budget is never kept)."""
    cache = BloomCache(max_bytes=budget)
    for block_id, size in enumerate(sizes):
        cache.add(block_id, b"f" * size)
    expected: list[int] = []
    room = budget
    for block_id in reversed(range(len(sizes))):
        if sizes[block_id] > budget:
            continue  # never kept, so it evicted nothing
        if sizes[block_id] > room:
            break
        room -= sizes[block_id]
        expected.append(block_id)
    assert sorted(block_id for block_id in range(len(sizes)) if block_id in cache) == sorted(expected)
    assert cache.bytes == sum(sizes[block_id] for block_id in expected) <= budget
