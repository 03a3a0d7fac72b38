"""Property tests of storage.store.Store against a plain oracle: a list of records and
``storage.query.matches``.

For each seed, random records (tests.helpers.RecordGen: out-of-order and tied timestamps, unicode,
empty strings, repeated template tokens and unique ids, tags, metadata, None ids) go into a store with
small blocks, so a few hundred records cross many seal boundaries; random filter trees
(tests.helpers.QueryGen, built as AST nodes and parsed from query text) are then answered by the
store and by a scan of the list, in every state a store goes through:

    live (unsealed tail mixed with sealed blocks, the sealer running) -> after flush()
    -> more records, then close without flush and reopen (WAL replay) -> after drop_before()
    -> close and reopen after retention

and compared: ``query`` rows for both sort orders with offset/limit (whole records, in order) and
the total, cursor paging (``after``) across every page, ``count``, and ``aggregate`` (group_by,
top N, numeric histogram, time histogram).  Every assertion message names the seed and the state;
``SHARDLOG_TEST_SEED=N`` replays one seed.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from storage import query as q
from storage import querytext
from storage import querywire
from storage.aggregate import AggSpec, finalize, from_wire
from storage.layout import meta_value_text
from storage.levels import SEVERITY
from storage.store import Store, StoreConfig
from tests.helpers import (ALL_LEVELS, S_NS, T0_NS, QueryGen, RecordGen, close_store, seeds_to_run,
                           short_tmpdir)

SPREAD_NS = 3_600 * S_NS
SEEDS = seeds_to_run([1, 2, 3, 4, 5, 6])
NOW_NS = T0_NS + SPREAD_NS


def _key(record: dict[str, Any]) -> tuple[int, int]:
    return record["ts_ns"], record["id"]


def _expected(records: list[dict[str, Any]], node: q.Node) -> list[dict[str, Any]]:
    """The oracle: every matching record, ascending by (ts_ns, id)."""
    return sorted((r for r in records if q.matches(node, r)), key=_key)


# --- the aggregation oracle (written out here, not taken from storage.aggregate) -----------------


def _values(record: dict[str, Any], name: str) -> list[str]:
    """A record's values for a user field name; None / missing counts as no value."""
    if name in ("tags", "tag"):
        return list(record["tags"])
    if name in ("level", "source", "user_id", "thread_id", "request_id"):
        value = record[name]
        return [] if value is None else [value]
    key = name[5:] if name.startswith("meta.") else name
    value = record["metadata"].get(key)
    return [] if value is None else [meta_value_text(value)]


def _counts(records: list[dict[str, Any]], name: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for record in records:
        counts.update(_values(record, name))
    return counts


def _bucketed(counts: Counter[str], width: float) -> Counter[str]:
    """Numeric histogram buckets: floor(value / width) * width, rendered like storage.aggregate."""
    out: Counter[str] = Counter()
    for text, n in counts.items():
        try:
            number = float(text)
        except ValueError:
            continue
        start = (number // width) * width
        out[str(int(start)) if start == int(start) else repr(start)] += n
    return out


class Checker:
    """Compares one store with the oracle list; ``label`` goes into every assertion message."""

    def __init__(self, store: Store, records: list[dict[str, Any]], rng: random.Random, label: str) -> None:
        self.store = store
        self.records = records
        self.rng = rng
        self.label = label

    def nodes(self, n_ast: int, n_text: int) -> list[q.Node]:
        gen = QueryGen(self.rng, ts_base_ns=T0_NS, ts_spread_ns=SPREAD_NS,
                       known_ids=[r["id"] for r in self.records])
        nodes: list[q.Node] = [q.MatchAll()]
        nodes += [gen.node() for _ in range(n_ast)]
        for _ in range(n_text):
            text = gen.text()
            nodes.append(querytext.parse_query(text, now_ns=NOW_NS).filter)
        return nodes

    def run(self, n_ast: int = 10, n_text: int = 4) -> None:
        for node in self.nodes(n_ast, n_text):
            expected = _expected(self.records, node)
            where = f"{self.label} query={querywire.to_wire(node)!r} ({len(expected)} expected matches)"
            self.check_rows(node, expected, where)
            self.check_cursor(node, expected, where)
            assert self.store.count(node) == len(expected), f"count: {where}"
            self.check_aggregate(node, expected, where)
        for _ in range(n_ast):
            self.check_level_window(self.level_window_node())

    def level_window_node(self) -> q.Node:
        """"level in L" ANDed with a time window (sometimes open, sometimes minute-aligned): the shape
        the store answers from per-minute totals plus the blocks at the window's edges."""
        rng = self.rng

        def levels(depth: int = 0) -> q.Node:
            kind = rng.randrange(6 if depth < 2 else 3)
            if kind == 0:
                return q.Field("level", rng.choice(ALL_LEVELS + ("ABSENT",)))
            if kind == 1:
                return q.MinSeverity(rng.choice(sorted(set(SEVERITY.values()))))
            if kind == 2:
                return q.MatchAll()
            if kind == 3:
                return q.Not(levels(depth + 1))
            children = tuple(levels(depth + 1) for _ in range(rng.randint(1, 3)))
            return q.Or(children) if kind == 4 else q.And(children)

        def point() -> int:
            t = T0_NS + rng.randrange(-SPREAD_NS // 10, SPREAD_NS * 11 // 10)
            return t // (60 * S_NS) * 60 * S_NS if rng.random() < 0.3 else t

        lo, hi = sorted((point(), point()))
        children = [levels(), q.TimeRange(None if rng.random() < 0.15 else lo, None if rng.random() < 0.15 else hi)]
        rng.shuffle(children)
        return q.And(tuple(children))

    def check_level_window(self, node: q.Node) -> None:
        expected = _expected(self.records, node)
        where = f"{self.label} level window={querywire.to_wire(node)!r} ({len(expected)} expected matches)"
        assert self.store.count(node) == len(expected), f"count: {where}"
        interval_ns = self.rng.choice((60 * S_NS, 120 * S_NS, 3_600 * S_NS, 90 * S_NS))
        spec = AggSpec(interval_ns=interval_ns)
        result = finalize(from_wire(self.store.aggregate(node, spec)), spec)
        buckets = Counter(r["ts_ns"] // interval_ns * interval_ns for r in expected)
        assert result["total"] == len(expected), f"histogram total, interval {interval_ns}: {where}"
        assert result["time_histogram"] == sorted([b, n] for b, n in buckets.items()), (
            f"time histogram, interval {interval_ns}: {where}")

    def check_rows(self, node: q.Node, expected: list[dict[str, Any]], where: str) -> None:
        rng = self.rng
        for sort in ("asc", "desc"):
            ordered = expected if sort == "asc" else expected[::-1]
            offset = rng.choice((0, 0, rng.randrange(len(expected) + 3)))
            limit = rng.choice((0, 1, 5, 40, len(expected) + 1))
            want_total = rng.random() < 0.8
            answer = self.store.query(node, sort=sort, offset=offset, limit=limit, want_total=want_total)
            page = ordered[offset:offset + limit]
            got_ids = [row["id"] for row in answer["rows"]]
            assert got_ids == [r["id"] for r in page], f"{sort} offset={offset} limit={limit}: {where}"
            # whole records come back as stored, from the tail and from decoded block columns alike
            assert answer["rows"] == page, f"{sort} rows differ from the records stored: {where}"
            assert answer["total"] == (len(expected) if want_total else None), f"{sort} total: {where}"

    def check_cursor(self, node: q.Node, expected: list[dict[str, Any]], where: str) -> None:
        for sort in ("asc", "desc"):
            ordered = expected if sort == "asc" else expected[::-1]
            page_size = self.rng.choice((3, 7, 25, 64))
            seen: list[int] = []
            after: tuple[int, int] | None = None
            while True:
                answer = self.store.query(node, sort=sort, limit=page_size, after=after)
                assert answer["total"] == len(ordered) - len(seen), (
                    f"{sort} cursor total after {len(seen)} rows (page {page_size}): {where}")
                rows = answer["rows"]
                seen += [row["id"] for row in rows]
                if len(rows) < page_size:
                    break
                after = (rows[-1]["ts_ns"], rows[-1]["id"])
                assert len(seen) <= len(ordered), f"{sort} cursor paging runs past the end: {where}"
            assert seen == [r["id"] for r in ordered], f"{sort} cursor pages of {page_size}: {where}"

    def check_aggregate(self, node: q.Node, expected: list[dict[str, Any]], where: str) -> None:
        rng = self.rng
        if rng.random() < 0.3:
            # a time histogram alone: whole-minute intervals are answered from the headers' per-minute
            # level counts where the filter allows it, 90 s and 7.5 s from the timestamps
            interval_ns = rng.choice((60 * S_NS, 2 * 60 * S_NS, 3_600 * S_NS, 90 * S_NS, 7_500_000_000))
            spec = AggSpec(interval_ns=interval_ns)
            result = finalize(from_wire(self.store.aggregate(node, spec)), spec)
            where = f"{where} spec={spec.to_wire()!r}"
            assert result["total"] == len(expected), f"aggregate total: {where}"
            buckets = Counter(r["ts_ns"] // interval_ns * interval_ns for r in expected)
            assert result["time_histogram"] == sorted([b, n] for b, n in buckets.items()), (
                f"time histogram alone: {where}")
            return
        top_n = rng.choice((1, 2, 3, 10))
        if rng.random() < 0.4:
            # fields the block headers count: whole matching blocks are answered from headers alone
            group_by = rng.choice(("level", "source", "tags"))
            top_field = rng.choice(("tags", "source", "level"))
            histogram = None
        else:
            group_by = rng.choice(("level", "source", "tags", "host", "meta.code", "ok", "user_id", "ключ"))
            top_field = rng.choice(("tags", "source", "level", "meta.host", "thread_id"))
            histogram = rng.choice((None, "code:100", "meta.seq:10", "code"))
        interval_ns = rng.choice((None, 60 * S_NS, 7 * 60 * S_NS, 3_600 * S_NS))
        spec = AggSpec(group_by=group_by, histogram=histogram, top=((top_field, top_n),), interval_ns=interval_ns)
        where = f"{where} spec={spec.to_wire()!r}"
        result = finalize(from_wire(self.store.aggregate(node, spec)), spec)

        assert result["total"] == len(expected), f"aggregate total: {where}"
        assert result["group_by"] == dict(_counts(expected, group_by)), f"group_by: {where}"
        if histogram is not None:
            name, _, width = histogram.partition(":")
            counts = _counts(expected, name)
            wanted = _bucketed(counts, float(width)) if width else counts
            assert result["histogram"] == dict(wanted), f"histogram: {where}"

        counts = _counts(expected, top_field)
        top = result["top"][top_field]
        assert len(top) == min(top_n, len(counts)), f"top has {len(top)} values: {where}"
        for value, n in top:
            assert counts[value] == n, f"top count of {value!r}: {where}"
        returned = {value for value, _ in top}
        lowest = min((n for _, n in top), default=0)
        omitted = {value: n for value, n in counts.items() if value not in returned}
        assert all(n <= lowest for n in omitted.values()), f"top omitted a bigger value {omitted}: {where}"
        assert [n for _, n in top] == sorted((n for _, n in top), reverse=True), f"top order: {where}"

        if interval_ns is not None:
            buckets = Counter(r["ts_ns"] // interval_ns * interval_ns for r in expected)
            assert result["time_histogram"] == sorted([b, n] for b, n in buckets.items()), (
                f"time histogram: {where}")


def _ingest_in_batches(store: Store, records: list[dict[str, Any]], rng: random.Random) -> None:
    start = 0
    while start < len(records):
        size = rng.choice((1, 3, 10, 29, 70))
        answer = store.ingest(records[start:start + size])
        assert answer == {"accepted": len(records[start:start + size]), "duplicate": False}
        start += size


def _all_ids(store: Store) -> set[int]:
    answer = store.query(q.MatchAll(), sort="asc", limit=100_000)
    ids = [row["id"] for row in answer["rows"]]
    assert len(ids) == len(set(ids)) == answer["total"], "a record is returned twice"
    return set(ids)


@pytest.mark.parametrize("seed", SEEDS)
def test_store_answers_like_a_scan(seed: int) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    block_records = rng.choice((7, 13, 64))
    # a long seal_after_s leaves a partial tail next to sealed blocks; a short one seals by age
    seal_after_s = rng.choice((3_600.0, 0.05))
    # 1 byte: unmap the data file's pages after every sealed block (Env.release_pages) while reading
    max_mapped_bytes = rng.choice((1, StoreConfig.max_mapped_bytes))
    config = StoreConfig(block_records=block_records, seal_after_s=seal_after_s, max_mapped_bytes=max_mapped_bytes)
    label = f"seed={seed} block_records={block_records} seal_after_s={seal_after_s} max_mapped_bytes={max_mapped_bytes}"
    gen = RecordGen(rng, ts_base_ns=T0_NS, ts_spread_ns=SPREAD_NS, extreme_ts_rate=0.02)
    records = gen.records(rng.randint(120, 220))

    with short_tmpdir() as tmp:
        path = Path(tmp) / "store"
        store = Store(path, config)
        try:
            _ingest_in_batches(store, records, rng)
            Checker(store, records, rng, f"{label} state=live").run()

            store.flush()
            stats = store.stats()
            assert stats["unsealed_records"] == 0 and stats["records"] == len(records), f"{label} {stats}"
            assert stats["blocks"] >= len(records) // block_records, f"{label} too few blocks: {stats}"
            Checker(store, records, rng, f"{label} state=flushed").run()

            # more records, then close WITHOUT flush: the reopened store replays the WAL
            # (a count that is no multiple of block_records leaves a partial block in the WAL)
            more = gen.records(rng.randint(2, 6) * block_records + rng.randint(1, block_records - 1))
            _ingest_in_batches(store, more, rng)
            records += more
            if seal_after_s > 5:  # only whole blocks are sealed by count: the remainder stays unsealed
                assert store.stats()["unsealed_records"] > 0, f"{label}: nothing left for the WAL replay to test"
            close_store(store)
            store = Store(path, config)
            assert store.stats()["records"] == len(records), f"{label} after reopen: {store.stats()}"
            Checker(store, records, rng, f"{label} state=reopened").run()

            # retention: flush so old records sit in blocks of their own, then drop before a cutoff
            store.flush()
            old_gen = RecordGen(rng, ts_base_ns=T0_NS - 10 * SPREAD_NS, ts_spread_ns=SPREAD_NS, first_id=gen.next_id)
            old = old_gen.records(rng.randint(block_records, 3 * block_records))
            _ingest_in_batches(store, old, rng)
            store.flush()
            newest_old_ns = max(r["ts_ns"] for r in old)
            everything = records + old
            assert _all_ids(store) == {r["id"] for r in everything}, f"{label}: before retention"
            # retention works as a filter for readers (DESIGN §10 "retention vs filter": every record
            # older than the cutoff is gone from answers at once) and drops storage by whole blocks
            stored_before = store.stats()["records"]
            answer = store.drop_before(newest_old_ns + 1)
            assert _all_ids(store) == {r["id"] for r in everything if r["ts_ns"] > newest_old_ns}, label
            # the old records sit in blocks of their own, wholly older than the cutoff: all are dropped
            assert answer["dropped_records"] >= len(old), f"{label}: old blocks kept: {answer}"
            assert store.stats()["records"] == stored_before - answer["dropped_records"], label
            records = [r for r in records if r["ts_ns"] > newest_old_ns]

            # a cutoff inside the main time span: readers see exactly the records at or after it
            cutoff_ns = T0_NS + rng.randrange(SPREAD_NS)
            stored_before = store.stats()["records"]
            answer = store.drop_before(cutoff_ns)
            records = [r for r in records if r["ts_ns"] >= cutoff_ns]
            assert _all_ids(store) == {r["id"] for r in records}, f"{label} cutoff={cutoff_ns}: {answer}"
            assert store.stats()["records"] == stored_before - answer["dropped_records"], label
            assert store.stats()["records"] >= len(records), f"{label}: a visible record was dropped"
            Checker(store, records, rng, f"{label} state=retained cutoff={cutoff_ns}").run(n_ast=6, n_text=2)

            close_store(store)
            store = Store(path, config)
            assert _all_ids(store) == {r["id"] for r in records}, f"{label}: expired records came back after reopen"
            Checker(store, records, rng, f"{label} state=reopened-after-retention").run(n_ast=6, n_text=2)
        finally:
            close_store(store)
