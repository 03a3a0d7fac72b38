"""Tests of storage.header (stored form, both versions) and of ``search.header_levels``, which lets
the per-minute level counts of a header answer time histograms: whenever it names a level set for a
block, the filter must match exactly the block's records of those levels (checked against
``query.matches`` on random filter trees; the seed is in every message)."""

from __future__ import annotations

import random
from collections import Counter

import msgpack
import pytest

from storage import query as q
from storage.block import build_block
from storage.errors import CorruptData
from storage.header import MINUTE_NS, BlockHeader
from storage.search import header_levels
from tests.helpers import S_NS, T0_NS, QueryGen, RecordGen, seeds_to_run

SEEDS = seeds_to_run([21, 22, 23, 24])


def test_minute_counts_are_the_records_per_minute_and_level() -> None:
    rng = random.Random(5)
    records = RecordGen(rng, ts_spread_ns=10 * 60 * S_NS).records(300)
    header = build_block(records, 3).header
    expected: dict[int, Counter[str]] = {}
    for r in records:
        expected.setdefault(r["ts_ns"] // MINUTE_NS, Counter())[r["level"]] += 1
    assert header.minutes == {minute: dict(c) for minute, c in expected.items()}
    errors = {m * MINUTE_NS: c["ERROR"] for m, c in expected.items() if c["ERROR"]}
    assert header.minute_counts({"ERROR"}) == errors


def test_header_round_trips_and_version_1_headers_still_decode() -> None:
    header = BlockHeader(7, -5, 10**18, 3, {"INFO": 2, "ERROR": 1}, {"app": 3}, {"x": 1},
                         {-1: {"INFO": 1}, 16666666666: {"INFO": 1, "ERROR": 1}})
    assert BlockHeader.decode(header.encode()) == header
    old = msgpack.packb([1, 7, -5, 10**18, 3, {"INFO": 3}, {"app": 3}, {}])
    decoded = BlockHeader.decode(old)
    assert decoded.minutes is None and decoded.minute_counts({"INFO"}) is None
    assert decoded.levels == {"INFO": 3}


def _fresh(text: str) -> str:
    """An equal string that is a new object (as a record decoded from the wire holds)."""
    return "".join(list(text))


def _names(header: BlockHeader) -> list[str]:
    return [*header.levels, *header.sources, *header.tags,
            *(level for counts in (header.minutes or {}).values() for level in counts)]


def test_headers_share_one_copy_of_each_name_when_built_and_when_decoded() -> None:
    """Every block's header stays in memory: the level, source and tag names of two headers are the
    same objects, whether sealed here from records holding fresh copies of the strings or decoded
    from their stored form (msgpack interns map keys; this test notices if it stops)."""
    def records(first_id: int) -> list[dict]:
        return [{"id": first_id + i, "ts_ns": T0_NS + i * 20 * S_NS, "level": _fresh(("INFO", "ERROR")[i % 2]),
                 "message": "m", "source": _fresh(f"source-{i % 3}"), "tags": [_fresh("edge"), _fresh(f"t{i % 2}")],
                 "metadata": {}, "thread_id": None, "request_id": None, "user_id": None} for i in range(8)]

    built = [build_block(records(first), block_id).header for block_id, first in enumerate((0, 100))]
    decoded = [BlockHeader.decode(header.encode()) for header in built]
    for a, b in (built, decoded, (built[0], decoded[1])):
        names_a = {name: name for name in _names(a)}
        assert names_a and all(names_a[name] is name for name in _names(b)), (a, b)


@pytest.mark.parametrize("value", [
    [2, 7, 0, 1, 1, {}, {}, {}],                      # version 2 without minutes
    [2, 7, 0, 1, 1, {}, {}, {}, {"1": {"INFO": 1}}],  # minutes as a map
    [2, 7, 0, 1, 1, {}, {}, {}, [["1", {}]]],         # minute not an int
    [3, 7, 0, 1, 1, {}, {}, {}, []],                  # unknown version
])
def test_malformed_headers_are_corrupt_data(value: list) -> None:
    with pytest.raises(CorruptData):
        BlockHeader.decode(msgpack.packb(value))


@pytest.mark.parametrize("seed", SEEDS)
def test_header_levels_names_exactly_the_matching_records(seed: int) -> None:
    rng = random.Random(seed)
    spread = 3_600 * S_NS
    answered = 0
    for trial in range(40):
        records = RecordGen(rng, ts_spread_ns=spread).records(rng.choice((1, 5, 40)))
        header = build_block(records, trial).header
        gen = QueryGen(rng, ts_spread_ns=spread)
        for _ in range(25):
            node = gen.node()
            levels = header_levels(node, header)
            if levels is None:
                continue
            answered += 1
            for r in records:
                assert q.matches(node, r) == (r["level"] in levels), (
                    f"seed={seed} trial={trial} node={node!r} levels={levels} record={r!r}")
    assert answered > 100, f"seed={seed}: header_levels answered only {answered} filters"


def test_header_levels_for_the_common_filters() -> None:
    records = RecordGen(random.Random(9), ts_spread_ns=60 * S_NS).records(50)
    header = build_block(records, 0).header
    everything = set(header.levels)
    assert header_levels(q.MatchAll(), header) == everything
    assert header_levels(q.Field("level", "ERROR"), header) == {"ERROR"} & everything
    window = q.TimeRange(T0_NS - 10 * S_NS, T0_NS + 3_600 * S_NS)
    assert header_levels(q.And((window, q.Field("level", "ERROR"))), header) == {"ERROR"} & everything
    assert header_levels(q.TimeRange(T0_NS + S_NS, T0_NS + 2 * S_NS), header) is None  # cuts the block
    assert header_levels(q.Token("timeout"), header) is None
