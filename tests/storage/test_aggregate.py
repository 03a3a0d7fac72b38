"""Aggregation partial states: merging shards' partials equals aggregating everything at once."""

from __future__ import annotations

import random

import msgpack
import pytest

from storage.aggregate import AggSpec, Aggregator, finalize, from_wire, merge, new_partial, to_wire
from storage.errors import BadQuery


def _records(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"ts_ns": rng.randrange(0, 10**12), "level": rng.choice(["INFO", "WARN", "ERROR"]),
             "source": rng.choice("abcde"), "tags": rng.sample(["x", "y", "z", "w"], rng.randint(0, 2)),
             "metadata": {"ms": rng.choice([1, 5, 12, 250, 999])} if rng.random() < 0.7 else {},
             "request_id": None, "user_id": None, "thread_id": None, "message": ""} for _ in range(n)]


SPEC = AggSpec(group_by="level", histogram="ms:100", top=(("tags", 2), ("source", 3)), interval_ns=10**11)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merged_partials_equal_one_aggregation(seed: int) -> None:
    records = _records(seed, 500)
    whole = Aggregator(SPEC)
    for record in records:
        whole.add_record(record)
    merged = new_partial(SPEC)
    merged["time_histogram"] = {}
    for part in range(3):
        shard = Aggregator(SPEC)
        for record in records[part::3]:
            shard.add_record(record)
        wire = msgpack.unpackb(msgpack.packb(to_wire(shard.partial)), strict_map_key=True)  # survives the wire
        merge(merged, from_wire(wire))
    assert finalize(merged, SPEC) == finalize(whole.partial, SPEC)


def test_finalize_matches_a_plain_count() -> None:
    records = _records(7, 300)
    agg = Aggregator(SPEC)
    for record in records:
        agg.add_record(record)
    final = finalize(agg.partial, SPEC)
    assert final["total"] == 300
    assert final["group_by"] == {lvl: sum(r["level"] == lvl for r in records) for lvl in final["group_by"]}
    tag_counts = {t: sum(t in r["tags"] for r in records) for t in "xyzw"}
    top = final["top"]["tags"]
    assert len(top) == 2 and all(tag_counts[v] == c for v, c in top)
    assert min(c for _, c in top) >= max(c for t, c in tag_counts.items() if t not in dict(top))
    buckets = {}
    for r in records:
        b = r["ts_ns"] // 10**11 * 10**11
        buckets[b] = buckets.get(b, 0) + 1
    assert final["time_histogram"] == sorted([b, c] for b, c in buckets.items())
    assert sum(final["histogram"].values()) == sum(1 for r in records if r["metadata"])
    assert set(final["histogram"]) <= {"0", "200", "900"}


def test_time_buckets_by_row_ranges_equal_a_row_loop() -> None:
    rng = random.Random(5)
    ts = sorted(rng.randrange(0, 10**6) for _ in range(300))
    bits = sum(1 << i for i in range(300) if rng.random() < 0.3)
    spec = AggSpec(interval_ns=7_000)
    fast = Aggregator(spec)
    fast.add_time_buckets(bits, ts)
    slow = Aggregator(spec)
    for i in range(300):
        if bits >> i & 1:
            slow.add_record({"ts_ns": ts[i]})
    assert fast.partial == slow.partial


def test_bad_specs_name_the_value() -> None:
    with pytest.raises(BadQuery, match="top tags=0"):
        AggSpec(top=(("tags", 0),))
    with pytest.raises(BadQuery, match="width"):
        AggSpec(histogram="ms:-5")
    with pytest.raises(BadQuery, match="cannot group by 'message'"):
        AggSpec(group_by="message")
