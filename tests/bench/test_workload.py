"""Tests for the benchmark workload (bench.workload): determinism by seed, the normalized record
shape, the realism knobs (levels, out-of-order stamps), the query parameters (a rare token is
rare, a common token is common, windows), the NDJSON form; and that the SQLite baseline and the
plain-scan oracle agree on every benchmark query, since the benchmark trusts both."""

from __future__ import annotations

import dataclasses
import statistics
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from bench import report, workload
from bench.sqlite_baseline import SqliteBaseline
from storage.levels import LEVELS
from storage.tokens import token_set

N = 3000
SEED = 7


@pytest.fixture(scope="module")
def records() -> list[workload.Record]:
    return workload.generate(N, seed=SEED)


def test_same_seed_same_records_other_seed_other_records(records: list[workload.Record]) -> None:
    assert workload.generate(N, seed=SEED) == records
    other = workload.generate(N, seed=SEED + 1)
    assert [r["message"] for r in other] != [r["message"] for r in records]


def test_start_ns_shifts_only_the_stamps(records: list[workload.Record]) -> None:
    shifted = workload.generate(50, seed=SEED, start_ns=workload.DEFAULT_START_NS + 10**12)
    assert [r["ts_ns"] - 10**12 for r in shifted] == [r["ts_ns"] for r in records[:50]]
    assert [r["message"] for r in shifted] == [r["message"] for r in records[:50]]


def test_records_have_the_normalized_shape(records: list[workload.Record]) -> None:
    expected_keys = {"id", "ts_ns", "level", "message", "source", "tags", "metadata", "thread_id",
                     "request_id", "user_id"}
    assert [r["id"] for r in records] == list(range(N))
    for r in records:
        assert set(r) == expected_keys
        assert isinstance(r["ts_ns"], int) and r["ts_ns"] % 1000 == 0  # microsecond stamps
        assert r["level"] in LEVELS
        assert r["message"] and isinstance(r["message"], str)
        assert r["source"] in workload.SOURCES
        assert r["tags"] == sorted(set(r["tags"])) and len(r["tags"]) <= 3
        assert set(r["tags"]) <= set(workload.TAGS)
        assert set(r["metadata"]) <= {"host", "status", "duration_ms"} and "host" in r["metadata"]
        assert all(isinstance(v, (str, int)) for v in r["metadata"].values())
        assert isinstance(r["thread_id"], str) and isinstance(r["request_id"], str)
        assert r["user_id"] is None or isinstance(r["user_id"], str)


def test_status_in_metadata_fits_the_level(records: list[workload.Record]) -> None:
    for r in records:
        status = r["metadata"].get("status")
        if status is None:
            continue
        assert str(status) in r["message"]
        if r["level"] == "ERROR":
            assert status >= 500
        if r["level"] == "WARN":
            assert 400 <= status < 500


def test_level_mix_and_event_rate_and_disorder(records: list[workload.Record]) -> None:
    shares = {level: sum(r["level"] == level for r in records) / N for level in workload.LEVEL_WEIGHTS}
    for level, weight in workload.LEVEL_WEIGHTS.items():
        assert abs(shares[level] - weight / 100) < 0.03, (level, shares)
    start = workload.DEFAULT_START_NS
    stamps = [r["ts_ns"] for r in records]
    # ~1 ms of event time per record, each within ±30 s of its slot, none before start_ns
    assert min(stamps) >= start
    assert max(stamps) <= start + 2 * workload.JITTER_NS + N * workload.STEP_NS
    inversions = sum(a > b for a, b in zip(stamps, stamps[1:]))
    assert inversions > N // 4  # out of order, not merely sorted with noise at the edges


def test_rare_token_is_rare_and_common_token_is_common(records: list[workload.Record]) -> None:
    params = workload.query_params(records)
    holders = [r for r in records if params.rare_token in token_set(r["message"])]
    assert 1 <= len(holders) <= 5
    assert len(holders) <= params.rare_token_records
    with_common = [r for r in records if params.common_token in token_set(r["message"])]
    assert len(with_common) >= 0.10 * N
    errors = [r for r in records if r["level"] == "ERROR"]
    assert sum(params.common_token in token_set(r["message"]) for r in errors) >= 0.10 * len(errors)
    # a mid-popularity source: neither the most nor the least frequent one
    counts = {s: sum(r["source"] == s for r in records) for s in workload.SOURCES}
    assert min(counts.values()) < counts[params.page_source] < max(counts.values())
    assert workload.query_params(records) == params  # a pure function of the records


def test_window_covers_the_span_when_it_is_short_and_is_centered_otherwise() -> None:
    hour = workload.HOUR_NS
    assert workload.window(100, 5000, hour) == (100, 5001)
    start = workload.DEFAULT_START_NS
    end = start + 10 * hour
    from_ns, to_ns = workload.window(start, end, hour)
    assert to_ns - from_ns == hour
    assert start <= from_ns and to_ns <= end
    assert from_ns % workload.MINUTE_NS == 0
    assert abs((from_ns + to_ns) // 2 - (start + end) // 2) <= workload.MINUTE_NS


def test_to_jsonl_round_trips_the_stamp_and_omits_the_id(records: list[workload.Record]) -> None:
    lines = workload.to_jsonl(records[:200])
    assert len(lines) == 200
    for line, record in zip(lines, records):
        raw = orjson.loads(line)
        assert "id" not in raw and "ts_ns" not in raw
        stamp = datetime.fromisoformat(raw["timestamp"].replace("Z", "+00:00"))
        seconds = int(stamp.timestamp())
        assert seconds * 10**9 + stamp.microsecond * 1000 == record["ts_ns"]
        assert raw["message"] == record["message"] and raw["level"] == record["level"]
        assert raw.get("user_id") == record["user_id"]
        assert raw.get("tags", []) == record["tags"]


def test_sqlite_baseline_agrees_with_the_scan_oracle(records: list[workload.Record], tmp_path: Path) -> None:
    # A mid-popularity source has ~25 of 3000 records: page 2 of 10 rows, not of 50, has rows.
    params = dataclasses.replace(workload.query_params(records), page_offset=10, page_limit=10)
    expected = workload.expected_answers(records, params)
    db = SqliteBaseline(tmp_path / "sqlite")
    try:
        for start in range(0, N, 1000):
            db.ingest(records[start:start + 1000])
        db.finish_ingest()
        assert db.bytes_on_disk() > 0
        newest = db.search(token=params.rare_token)
        assert [r["id"] for r in newest] == expected["rare_token"]
        assert newest[0] == records[newest[0]["id"]]  # full records, tags and metadata included
        got = {
            "rare_token": [r["id"] for r in newest],
            "common_error": [r["id"] for r in db.search(token=params.common_token, level="ERROR")],
            "warn_count_1h": db.count(level="WARN", from_ns=params.hour_from_ns, to_ns=params.hour_to_ns),
            "source_page2_6h": [r["id"] for r in db.search(
                source=params.page_source, from_ns=params.six_hours_from_ns,
                to_ns=params.six_hours_to_ns, offset=params.page_offset, limit=params.page_limit)],
            "count_by_source": dict(sorted(db.count_by("source").items())),
            "count_by_level": dict(sorted(db.count_by("level").items())),
            "top5_tags": [[tag, count] for tag, count in db.top_tags(5)],
            "error_per_minute_1h": [[b, c] for b, c in db.histogram(
                params.histogram_interval_ns, level="ERROR", from_ns=params.hour_from_ns,
                to_ns=params.hour_to_ns)],
        }
    finally:
        db.close()
    assert set(got) == set(workload.QUERIES)
    assert got == expected
    # the oracle is not trivially empty
    assert expected["common_error"] and expected["source_page2_6h"] and expected["error_per_minute_1h"]


def test_percentiles_match_the_statistics_module() -> None:
    values = sorted(float((i * 37) % 101) for i in range(1, 60))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert report.percentile(values, 0.90) == pytest.approx(cuts[89])
    assert report.percentile(values, 0.99) == pytest.approx(cuts[98])
    timing = report.summarize([v / 1000 for v in values])
    assert timing.median_ms == pytest.approx(statistics.median(values))
    assert timing.runs == len(values)
