"""Tests of storage.tail.Tail: the unsealed batches of a store and the rows that blocks in flight
(built or being committed, not shown yet) have claimed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from storage.tail import Tail, WalEntry


def _entry(seq: int, first: int, n: int, start: int = 0) -> WalEntry:
    return WalEntry(seq, [{"id": first + i} for i in range(n)], start)


def _ids(rows: list[dict]) -> list[int]:
    return [row["id"] for row in rows]


def test_a_second_claim_skips_the_rows_of_the_block_in_flight() -> None:
    tail = Tail()
    tail.append([_entry(0, 0, 5), _entry(1, 5, 5)], now=1.0)
    first, n_first = tail.claim(4)
    second, n_second = tail.claim(4)
    assert [(e.seq, a, b) for e, a, b in first] == [(0, 0, 4)] and n_first == 4
    assert [(e.seq, a, b) for e, a, b in second] == [(0, 4, 5), (1, 0, 3)] and n_second == 4
    assert (tail.records, tail.claimed, tail.unclaimed) == (10, 8, 2)
    assert _ids(tail.rows()) == list(range(10))  # claimed rows are still the reader's
    tail.seal(first, n_first, now=2.0)
    assert _ids(tail.rows()) == list(range(4, 10)) and tail.since == 2.0
    tail.seal(second, n_second, now=3.0)
    assert _ids(tail.rows()) == [8, 9] and [e.seq for e in tail.entries] == [1]
    assert (tail.records, tail.claimed) == (2, 0)


def test_released_claims_are_claimed_again_from_the_oldest_row() -> None:
    tail = Tail()
    tail.append([_entry(0, 0, 6)], now=0.0)
    older, n_older = tail.claim(3)
    newer, n_newer = tail.claim(3)
    tail.release(n_older)  # the older block's commit failed ...
    tail.release(n_newer)  # ... and the sealer drops the one it built meanwhile
    again, n_again = tail.claim(3)
    assert [(a, b) for _, a, b in again] == [(0, 3)] and n_again == 3


def test_replayed_entries_start_past_their_sealed_rows() -> None:
    tail = Tail()
    tail.append([_entry(7, 0, 10, start=6)], now=5.0)
    assert (tail.records, _ids(tail.rows()), tail.since) == (4, [6, 7, 8, 9], 5.0)
    taken, count = tail.claim(100)
    assert [(a, b) for _, a, b in taken] == [(6, 10)] and count == 4
    tail.seal(taken, count, now=6.0)
    assert not tail and tail.records == 0


@settings(max_examples=200)
@given(st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 7)),
    st.tuples(st.just("claim"), st.integers(1, 9)),
    st.tuples(st.just("seal"), st.just(0)),
    st.tuples(st.just("fail"), st.just(0)),
), max_size=40))
def test_claims_cover_the_oldest_rows_in_order_and_sealing_removes_exactly_them(ops: list[tuple[str, int]]) -> None:
    """The store's protocol: claims in order; the oldest claim in flight is sealed, or a failure
    releases every claim in flight.  Claims are always consecutive runs of the oldest rows, and the
    tail's rows are always exactly the appended rows minus the sealed ones."""
    tail = Tail()
    appended: list[int] = []
    sealed: set[int] = set()
    in_flight: list[tuple[list, int]] = []
    next_id = seq = 0
    for op, n in ops:
        if op == "append":
            tail.append([_entry(seq, next_id, n)], now=0.0)
            appended += range(next_id, next_id + n)
            next_id += n
            seq += 1
        elif op == "claim" and tail.unclaimed > 0:
            taken, count = tail.claim(n)
            claimed_ids = [r["id"] for e, a, b in taken for r in e.records[a:b]]
            previous = [r["id"] for t, _ in in_flight for e, a, b in t for r in e.records[a:b]]
            unsealed = [i for i in appended if i not in sealed]
            assert previous + claimed_ids == unsealed[:len(previous) + count]
            assert count == min(n, len(unsealed) - len(previous))
            in_flight.append((taken, count))
        elif op == "seal" and in_flight:
            taken, count = in_flight.pop(0)
            sealed.update(r["id"] for e, a, b in taken for r in e.records[a:b])
            tail.seal(taken, count, now=0.0)
        elif op == "fail" and in_flight:
            for _, count in in_flight:
                tail.release(count)
            in_flight.clear()
        assert _ids(tail.rows()) == [i for i in appended if i not in sealed]
        assert tail.records == len(tail.rows())
        assert tail.claimed == sum(count for _, count in in_flight)
