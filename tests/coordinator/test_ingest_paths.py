"""The two ingest paths for JSON lines agree.

A JSON-lines request is routed to the shards unparsed and each shard parses and normalizes its share
(coordinator.router.route_lines + storage.jsonlines.normalize_lines); requests that need the
records in the coordinator (daemon-side hooks, text) take the general path
(``Service.parse_lines`` + ``Service.normalize``).  For any lines — records, broken JSON, other JSON
values, blank lines, limit breaks, str or bytes — both must store the same records and reject the
same lines with the same reasons."""

from __future__ import annotations

import json
import types
from typing import Any
from unittest import mock

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from coordinator.config import Config
from coordinator.metrics import Metrics
from coordinator.router import route_lines
from coordinator.ingest import _json_texts
from coordinator.service import Service
from storage.jsonlines import normalize_lines
from storage.record import Limits

NOW_NS = 1_800_000_000_000_000_000
LIMITS = Limits(max_tags=3, max_message_bytes=40, max_metadata_keys=3, max_field_bytes=12, max_value_bytes=16)

_text = st.text(max_size=16)
#: what JSON can hold: no NaN or Infinity (integers past 64 bits are JSON, but orjson writes none)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 64), 1 << 64),
                    st.floats(allow_nan=False, allow_infinity=False), _text)
_record = st.fixed_dictionaries({}, optional={
    "timestamp": st.one_of(st.sampled_from(["2026-11-27T10:00:00Z", "2026-11-27T10:00:00.123456Z",
                                            "2031-01-01T00:00:00Z", "yesterday", "1795823663", ""]), st.integers()),
    "level": st.one_of(st.sampled_from(["info", "WARN", "error", "Fatal", "7"]), _scalar),
    "message": st.one_of(_text, st.text(min_size=38, max_size=44), _scalar),
    "source": st.one_of(_text, _scalar),
    "tags": st.one_of(st.lists(_text, max_size=5), _scalar),
    "metadata": st.one_of(st.dictionaries(_text, _scalar, max_size=4), _scalar,
                          st.dictionaries(_text, st.dictionaries(_text, _scalar, max_size=2), max_size=2)),
    "user_id": _scalar,
    "host": _scalar,  # a top-level extra field: moved under metadata
    "msg": _text,  # an alias of message
})


@st.composite
def _line(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["record", "record", "record", "garbage", "blank", "other json"]))
    if kind == "record":
        text = json.dumps(draw(_record), ensure_ascii=draw(st.booleans()))
    elif kind == "garbage":
        return draw(st.one_of(st.binary(max_size=20), st.text(max_size=20)))
    elif kind == "blank":
        return draw(st.sampled_from([b"", b"  ", "\t", "\r"]))
    else:
        text = json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(), _text)))
    padded = draw(st.sampled_from(["{}", " {} ", "{}\r", "\u3000{}\x1c"])).replace("{}", text)
    return padded.encode() if draw(st.booleans()) else padded


def _general(lines: list[Any], first_line: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    service = Service(Config(limits=LIMITS), types.SimpleNamespace(slots=[]), Metrics(), data_dir="/nonexistent")
    with mock.patch("time.time_ns", return_value=NOW_NS):
        raws, numbers, rejected = service.intake.parse_lines(lines, "jsonl", first_line)
        records, more = service.intake.normalize(raws, first_line, numbers)
    return records, sorted(rejected + more, key=lambda r: r["line"])


def _routed(lines: list[Any], first_line: int, n_shards: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    parts, _ = route_lines(lines, n_shards, first_line)
    records: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for part_lines, numbers in parts:
        stored, refused, _ = normalize_lines(part_lines, numbers, id_base=10_000, now_ns=NOW_NS, limits=LIMITS)
        records += stored
        rejected += refused
    records.sort(key=lambda r: r["id"])
    for record in records:
        del record["id"]
    return records, sorted(rejected, key=lambda r: r["line"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_line(), max_size=30), st.integers(1, 1000), st.integers(1, 4))
def test_routed_lines_store_and_reject_exactly_what_the_general_path_does(lines: list[Any], first_line: int,
                                                                          n_shards: int) -> None:
    assert _routed(lines, first_line, n_shards) == _general(lines, first_line)


def test_the_generated_lines_reach_every_outcome() -> None:
    """The strategy is not vacuous: stored records, JSON errors and limit rejections all occur."""
    lines = [json.dumps({"message": "fine", "tags": ["a"]}), b"{oops", json.dumps({"message": "x" * 41}), b" "]
    records, rejected = _routed(lines, 1, 2)
    assert [r["message"] for r in records] == ["fine"]
    assert [r["line"] for r in rejected] == [2, 3]
    assert (records, rejected) == _general(lines, 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(_record, max_size=10))
def test_records_parsed_from_json_normalize_alike_after_a_trip_through_json_text(raws: list[dict[str, Any]]) -> None:
    """Shippers (Loki, ES bulk, syslog, text) hand the service records parsed from JSON or text; with
    parse_in = shards they travel to the shards as JSON text again (``_json_texts``)."""
    texts = _json_texts(raws)
    assume(texts is not None)  # else the coordinator normalizes them: nothing travels
    expected_records, expected_rejected = _general([json.dumps(r) for r in raws], 1)
    parts, _ = route_lines(texts, 3, numbers=list(range(1, len(raws) + 1)))
    records, rejected = [], []
    for part_lines, numbers in parts:
        stored, refused, _ = normalize_lines(part_lines, numbers, id_base=0, now_ns=NOW_NS, limits=LIMITS)
        records += stored
        rejected += refused
    records.sort(key=lambda r: r.pop("id"))
    assert (records, sorted(rejected, key=lambda r: r["line"])) == (expected_records, expected_rejected)


def test_records_json_cannot_hold_stay_with_the_coordinator() -> None:
    assert _json_texts([{"message": "ok"}]) == [b'{"message":"ok"}']
    assert _json_texts([{"message": "ok"}, {"metadata": {"blob": b"\x00"}}]) is None
    assert _json_texts([{"metadata": {"n": 1 << 70}}]) is None
    assert _json_texts([{1: "a non-str key"}]) is None
