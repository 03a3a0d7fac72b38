"""JSON lines -> normalized records (storage.jsonlines): ids from line numbers, rejections by line
with the reason, the limits' wire form, and bad arguments answered with BadRequest."""

from __future__ import annotations

import json

import msgpack
import pytest

from storage.errors import BadRequest
from storage import layout
from storage.jsonlines import (ecs_raws, json_error, limits_from_wire, limits_to_wire, normalize_lines,
                               replay_lines)
from storage.record import DEFAULT_LIMITS, Limits, normalize_record

NOW_NS = 1_800_000_000_000_000_000


def _line(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_each_line_becomes_the_normalized_record_with_id_base_plus_its_line_number() -> None:
    raw = [{"timestamp": "2026-01-02T03:04:05Z", "level": "warn", "message": "disk 91%", "source": "db",
            "tags": ["a", "a"], "metadata": {"host": "h1"}},
           {"message": "no timestamp: stamped with now_ns"}]
    lines = [json.dumps(r).encode() for r in raw]
    records, rejected, texts = normalize_lines(lines, [3, 7], id_base=1000, now_ns=NOW_NS)
    assert rejected == [] and texts == lines
    assert records == [dict(normalize_record(r, now_ns=NOW_NS), id=1000 + n) for r, n in zip(raw, (3, 7))]
    assert records[1]["ts_ns"] == NOW_NS


def test_bad_lines_are_rejected_by_number_with_the_reason_and_the_rest_kept() -> None:
    lines = [_line(message="ok 1"), b"{not json", b"[1, 2]", _line(message="too many tags", tags=["a", "b", "c"]),
             "{\"message\": \"a str line\"}", _line(message="ok 2")]
    records, rejected, texts = normalize_lines(lines, [1, 2, 3, 4, 5, 6], id_base=0, now_ns=NOW_NS,
                                               limits=Limits(max_tags=2))
    assert texts == [lines[0], lines[4], lines[5]]  # what a WAL keeps: the stored records' lines
    assert [r["message"] for r in records] == ["ok 1", "a str line", "ok 2"]
    assert [r["id"] for r in records] == [1, 5, 6]
    assert [r["line"] for r in rejected] == [2, 3, 4]
    assert rejected[0]["reason"].startswith("not valid JSON: ") and "one JSON object per line" in rejected[0]["reason"]
    assert "object" in rejected[1]["reason"]
    assert "max_tags" in rejected[2]["reason"] and "2" in rejected[2]["reason"]


def test_json_error_names_what_to_send() -> None:
    assert json_error(ValueError("unexpected character")) == \
        "not valid JSON: unexpected character; send one JSON object per line"


@pytest.mark.parametrize("lines, numbers, id_base, words", [
    ([b"{}"], [], 0, "1 lines but 0 line numbers"),
    ([b"{}"], [2], (1 << 63) - 2, "64-bit"),
    ([b"{}"], [-5], -(1 << 63) + 1, "64-bit"),
])
def test_arguments_that_do_not_fit_are_a_bad_request(lines: list[bytes], numbers: list[int], id_base: int,
                                                     words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        normalize_lines(lines, numbers, id_base=id_base, now_ns=NOW_NS)


def test_limits_travel_as_a_map_and_come_back_equal() -> None:
    limits = Limits(max_tags=3, max_message_bytes=1000)
    wire = limits_to_wire(limits)
    assert wire["max_tags"] == 3 and set(wire) == set(limits_to_wire(DEFAULT_LIMITS))
    assert limits_from_wire(wire) == limits
    assert limits_from_wire({}) == DEFAULT_LIMITS


@pytest.mark.parametrize("value, words", [
    ([1], "must be a map"),
    ({"max_tagz": 3}, "max_tagz"),
    ({"max_tags": 0}, "max_tags must be a positive integer"),
    ({"max_tags": [1]}, "limit names to integers"),
    ({1: 2, "a": 3}, "limit names to integers"),
])
def test_bad_limits_are_a_bad_request_naming_the_problem(value: object, words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        limits_from_wire(value)


def _wal_entry(lines: list[bytes], numbers: list[int], limits: dict[str, int] | None = None) -> dict:
    value = layout.wal_lines_value(lines, numbers, 500, NOW_NS, limits or {})
    return msgpack.unpackb(value, raw=False, strict_map_key=True)


def test_a_wal_entry_of_lines_replays_to_the_records_they_were_acknowledged_as() -> None:
    lines = [_line(message="a", tags=["x", "y"]), _line(message="b", timestamp="2024-01-01T00:00:00Z")]
    records, _, _ = normalize_lines(lines, [2, 9], id_base=500, now_ns=NOW_NS, limits=Limits(max_tags=2))
    assert replay_lines(_wal_entry(lines, [2, 9], {"max_tags": 2})) == records


def test_a_line_this_code_would_reject_is_kept_at_replay_not_dropped() -> None:
    """Only possible when an upgrade between the ack and the replay changed the rules."""
    lines = [_line(message="fine"), b"{no longer accepted", _line(message="also fine")]
    replayed = replay_lines(_wal_entry(lines, [1, 2, 3]))
    assert [r["id"] for r in replayed] == [501, 502, 503]
    kept = replayed[1]
    assert (kept["message"], kept["level"], kept["ts_ns"]) == ("{no longer accepted", "WARN", NOW_NS)
    assert kept["metadata"]["_replay_rejected"].startswith("not valid JSON")


@pytest.mark.parametrize("entry", [
    [1], {"lines": []}, {"lines": "x", "numbers": [], "id_base": 0, "now_ns": 0, "limits": {}},
    {"lines": [b"{}"], "numbers": ["1"], "id_base": 0, "now_ns": 0, "limits": {}},
    {"lines": [b"{}"], "numbers": [1], "id_base": 0, "now_ns": 0, "limits": {"max_tags": -1}},
])
def test_a_malformed_wal_entry_is_a_value_error(entry: object) -> None:
    with pytest.raises(ValueError):
        replay_lines(entry)


def test_ecs_documents_are_mapped_then_normalized_and_their_wal_texts_replay_alike() -> None:
    docs = [_line(**{"@timestamp": "2024-01-01T00:00:00Z", "message": "GET /", "log": {"level": "warn"},
                     "service": {"name": "nginx"}, "host": {"name": "web-1"}}),
            _line(message="no service: the index is the source"), b"[1]", b"{nope"]
    records, rejected, texts = normalize_lines(docs, [1, 2, 3, 4], id_base=0, now_ns=NOW_NS,
                                               ecs_indexes=["logs-a", "logs-b", "logs-c", "logs-d"])
    assert [(r["level"], r["source"], r["metadata"].get("host")) for r in records] == [
        ("WARN", "nginx", "web-1"), ("INFO", "logs-b", None)]
    assert [r["line"] for r in rejected] == [3, 4]
    assert "JSON object" in rejected[0]["reason"] and rejected[1]["reason"].startswith("not valid JSON")
    # the WAL keeps the mapped documents: plain JSON lines normalize to the same records
    again, _, _ = normalize_lines(texts, [1, 2], id_base=0, now_ns=NOW_NS)
    assert again == records


def test_ecs_raws_parse_and_map_but_leave_normalizing_to_the_caller() -> None:
    raws, numbers, rejected = ecs_raws([_line(**{"log.level": "error", "message": "m"}), b"{x", b"[2]"], ["i"] * 3)
    assert raws == [{"message": "m", "level": "error", "source": "i"}, [2]] and numbers == [1, 3]
    assert rejected[0]["line"] == 2 and rejected[0]["reason"].startswith("not valid JSON")


def test_ecs_indexes_must_match_the_lines() -> None:
    with pytest.raises(BadRequest, match="1 lines but 1 line numbers and 2 indexes"):
        normalize_lines([b"{}"], [1], id_base=0, now_ns=NOW_NS, ecs_indexes=["a", "b"])
