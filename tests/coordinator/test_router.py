"""Routing: stable across processes, even for one dominant source, replayable with a key."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from coordinator.router import route, route_lines, shard_for_record


def _records(n: int) -> list[dict]:
    return [{"ts_ns": 1_700_000_000_000_000_000 + i * 1000, "source": "api", "message": f"GET /x/{i} 200"}
            for i in range(n)]


def test_one_dominant_source_spreads_evenly() -> None:
    batches = route(_records(30_000), 3)
    sizes = [len(b) for b in batches]
    assert sum(sizes) == 30_000
    assert min(sizes) > 9_000, sizes  # within 10 % of even


def test_route_is_stable_across_interpreters() -> None:
    # crc32, not the salted hash(): another process with another PYTHONHASHSEED agrees
    record = _records(1)[0]
    here = shard_for_record(record, 7)
    code = ("from coordinator.router import shard_for_record;"
            f"print(shard_for_record({record!r}, 7))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin", "PYTHONPATH": "."})
    assert int(out.stdout) == here


def test_keyed_requests_route_by_position() -> None:
    first = route(_records(100), 4, idempotency_key="k1")
    # a retry whose records got other timestamps (ingest-time stamps) still routes identically
    retried = [dict(r, ts_ns=r["ts_ns"] + 99) for r in _records(100)]
    again = route(retried, 4, idempotency_key="k1")
    assert [[r["message"] for r in b] for b in first] == [[r["message"] for r in b] for b in again]
    assert Counter(len(b) for b in first) != Counter([100])  # spread, not all on one shard


def test_single_shard_keeps_order() -> None:
    records = _records(10)
    assert route(records, 1) == [records]


# --- JSON lines routed unparsed ------------------------------------------------------------------------


def _lines(n: int) -> list[bytes]:
    return [b'{"source": "api", "message": "GET /x/%d 200"}' % i for i in range(n)]


def test_route_lines_spreads_one_source_and_keeps_line_numbers_and_order() -> None:
    (parts, routed) = route_lines(_lines(30_000), 3, first_line=11)
    assert routed == 30_000
    assert min(len(lines) for lines, _ in parts) > 9_000  # within 10 % of even
    for lines, numbers in parts:
        assert numbers == sorted(numbers)
        assert all(line == _lines(30_000)[number - 11] for line, number in zip(lines[:50], numbers[:50]))
    assert sorted(n for _, numbers in parts for n in numbers) == list(range(11, 30_011))


def test_route_lines_is_stable_so_a_retry_routes_every_line_alike() -> None:
    assert route_lines(_lines(500), 4) == route_lines(_lines(500), 4)


def test_route_lines_strips_and_leaves_out_blank_lines_but_counts_them_in_numbers() -> None:
    lines = [b"  {\"message\": \"a\"}\r", b"", b"   ", "\u3000{\"message\": \"b\"}\u3000", b"\t{}"]
    (parts, routed) = route_lines(lines, 1)
    assert routed == 3
    assert parts == [([b'{"message": "a"}', '{"message": "b"}'.encode(), b"{}"], [1, 4, 5])]


def test_route_lines_sends_a_str_with_a_lone_surrogate_as_bytes_json_will_reject() -> None:
    (parts, _) = route_lines(["{\"message\": \"\ud800\"}"], 1)
    assert parts[0][0] == ["{\"message\": \"\ud800\"}".encode("utf-8", "surrogatepass")]


def test_route_lines_declines_lines_that_are_not_text() -> None:
    assert route_lines([b"{}", 42], 2) is None
