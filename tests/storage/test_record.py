"""Tests for storage.record: aliases, levels, flattening, every limit at the limit and one past it,
invalid and future timestamps, non-mapping input, unicode, the public shape, and a property test
that arbitrary JSON-like input yields either BadRecord or a record of exactly FIELDS."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.errors import BadRecord
from storage.record import DEFAULT_LIMITS, FIELDS, Limits, normalize_record, to_public

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns(*args: int, extra_ns: int = 0) -> int:
    """Oracle: ns since the epoch of a UTC wall-clock time, by datetime arithmetic."""
    return (datetime(*args, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1) * 1_000 + extra_ns


NOW_NS = ns(2024, 6, 1, 12, 0, 0)
DAY_NS = 86_400 * 10**9


def norm(raw: Any, limits: Limits = DEFAULT_LIMITS, now_ns: int = NOW_NS) -> dict[str, Any]:
    return normalize_record(raw, now_ns=now_ns, limits=limits)


def nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` nested objects around ``leaf``: nested(1) == {"a": 1}."""
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def test_empty_record_gets_every_default() -> None:
    record = norm({})
    assert list(record) == list(FIELDS)
    assert record == {
        "ts_ns": NOW_NS,
        "level": "INFO",
        "message": "",
        "source": "",
        "tags": [],
        "metadata": {"_ts_invalid": True},  # no value, so no _ts_original
        "thread_id": None,
        "request_id": None,
        "user_id": None,
    }


def test_full_record() -> None:
    raw = {
        "timestamp": "2024-01-01T14:02:00.123456789Z",
        "level": "warning",
        "message": "GET /api 500 timeout",
        "source": "api",
        "tags": ["web", "prod"],
        "metadata": {"region": "eu"},
        "thread_id": "t-1",
        "request_id": "r-1",
        "user_id": "u-1",
        "host": "web-1",
    }
    assert norm(raw) == {
        "ts_ns": ns(2024, 1, 1, 14, 2, 0, extra_ns=123_456_789),
        "level": "WARN",
        "message": "GET /api 500 timeout",
        "source": "api",
        "tags": ["web", "prod"],
        "metadata": {"region": "eu", "host": "web-1"},
        "thread_id": "t-1",
        "request_id": "r-1",
        "user_id": "u-1",
    }


def test_input_is_not_modified() -> None:
    raw = {"message": "m", "metadata": {"a": {"b": 1}}, "tags": ["x"]}
    snapshot = json.loads(json.dumps(raw))
    norm(raw)
    assert raw == snapshot


# --- timestamps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["timestamp", "@timestamp", "time", "ts", "_time"])
def test_timestamp_aliases(alias: str) -> None:
    record = norm({alias: "2024-01-01T14:02:00Z"})
    assert record["ts_ns"] == ns(2024, 1, 1, 14, 2)
    assert record["metadata"] == {}


@pytest.mark.parametrize(
    ("value", "expected_ns"),
    [
        ("2024-01-01T14:02:00.5+02:00", ns(2024, 1, 1, 12, 2, 0, 500_000)),
        ("2024-01-01 14:02:00,123", ns(2024, 1, 1, 14, 2, 0, 123_000)),
        ("01/Jan/2024:14:02:00 -0100", ns(2024, 1, 1, 15, 2)),
        (1_704_117_720, ns(2024, 1, 1, 14, 2)),
        (1_704_117_720_123, ns(2024, 1, 1, 14, 2, 0, 123_000)),
        ("1704117720123456", ns(2024, 1, 1, 14, 2, 0, 123_456)),
        (1_704_117_720_123_456_789, ns(2024, 1, 1, 14, 2, 0, extra_ns=123_456_789)),
        (1_704_117_720.25, ns(2024, 1, 1, 14, 2, 0, 250_000)),
    ],
)
def test_timestamp_forms_through_a_record(value: Any, expected_ns: int) -> None:
    record = norm({"timestamp": value})
    assert record["ts_ns"] == expected_ns
    assert "_ts_invalid" not in record["metadata"]


def test_first_timestamp_alias_wins_and_the_other_is_kept() -> None:
    record = norm({"@timestamp": "2024-01-02T00:00:00Z", "timestamp": "2024-01-01T00:00:00Z"})
    assert record["ts_ns"] == ns(2024, 1, 1)
    assert record["metadata"] == {"@timestamp": "2024-01-02T00:00:00Z"}


@pytest.mark.parametrize(
    ("value", "original"),
    [("yesterday", "yesterday"), ("2024-02-30T00:00:00Z", "2024-02-30T00:00:00Z"), (True, "True")],
)
def test_unparsable_timestamp_is_flagged(value: Any, original: str) -> None:
    record = norm({"ts": value, "message": "m"})
    assert record["ts_ns"] == NOW_NS
    assert record["metadata"] == {"_ts_invalid": True, "_ts_original": original}


def test_null_timestamp_is_missing() -> None:
    assert norm({"timestamp": None})["metadata"] == {"_ts_invalid": True}


def test_ts_original_is_truncated_on_a_character_boundary() -> None:
    limits = Limits(max_value_bytes=10)
    record = norm({"time": "ééééééé"}, limits)  # 14 bytes; 10 bytes = 5 whole characters
    assert record["metadata"]["_ts_original"] == "ééééé"
    record = norm({"time": "x" + "é" * 6}, limits)  # 1 + 12 bytes; cut inside the 5th é
    assert record["metadata"]["_ts_original"] == "xéééé"


def test_past_timestamps_are_kept() -> None:
    assert norm({"timestamp": "1970-01-01T00:00:00Z"})["ts_ns"] == 0
    assert norm({"timestamp": "1900-01-01T00:00:00Z"})["ts_ns"] == ns(1900, 1, 1)


def test_future_timestamp_at_the_limit_and_past_it() -> None:
    at_limit = NOW_NS + DEFAULT_LIMITS.max_future_ns
    assert norm({"timestamp": at_limit})["ts_ns"] == at_limit
    with pytest.raises(BadRecord) as info:
        norm({"timestamp": at_limit + 1})
    assert "limits.max_future_ns" in str(info.value)
    assert "fix the sender's clock" in str(info.value)


def test_future_rejection_message() -> None:
    now_ns = ns(2031, 1, 1) - 1500 * DAY_NS - 3_600 * 10**9  # 1500 days and an hour before
    with pytest.raises(BadRecord) as info:
        norm({"timestamp": "2031-01-01T00:00:00Z"}, now_ns=now_ns)
    assert str(info.value) == (
        "timestamp 2031-01-01T00:00:00Z is 1500 days in the future; the limit is 2 days "
        "(limits.max_future_ns); fix the sender's clock"
    )


def test_future_limit_in_smaller_units() -> None:
    limits = Limits(max_future_ns=90 * 10**9)
    with pytest.raises(BadRecord) as info:
        norm({"timestamp": NOW_NS + 3 * 3_600 * 10**9}, limits)
    assert "is 3 hours in the future; the limit is 1 minute" in str(info.value)


# --- levels, message, source, ids ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "level"),
    [
        ({"level": "warning"}, "WARN"),
        ({"level": "err"}, "ERROR"),
        ({"level": "CRITICAL"}, "FATAL"),
        ({"level": "notice"}, "INFO"),
        ({"level": " debug "}, "DEBUG"),
        ({"level": 3}, "ERROR"),  # syslog severity number
        ({"level": "custom"}, "CUSTOM"),  # unknown levels are kept upper-cased
        ({"severity": "error"}, "ERROR"),
        ({"log.level": "trace"}, "TRACE"),
        ({"log": {"level": "warn", "logger": "x"}}, "WARN"),  # ECS, nested
        ({"level": "error", "severity": "debug"}, "ERROR"),  # level wins
        ({"level": None, "severity": "debug"}, "DEBUG"),
        ({}, "INFO"),
    ],
)
def test_levels_and_aliases(raw: dict[str, Any], level: str) -> None:
    assert norm(raw)["level"] == level


def test_nested_ecs_level_leaves_metadata() -> None:
    record = norm({"log": {"level": "warn", "logger": "x"}})
    assert record["metadata"] == {"log.logger": "x", "_ts_invalid": True}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"message": "hello"}, "hello"),
        ({"msg": "hello"}, "hello"),
        ({"_msg": "hello"}, "hello"),
        ({"message": 42}, "42"),
        ({"message": 2.5}, "2.5"),
        ({"message": True}, "True"),
        ({"message": None}, ""),
        ({}, ""),
    ],
)
def test_message_forms(raw: dict[str, Any], message: str) -> None:
    assert norm(raw)["message"] == message


@pytest.mark.parametrize("value", [{"a": [1, {"b": None}], "c": "é"}, [1, "two", None, 3.5]])
def test_structured_message_is_json_text(value: Any) -> None:
    message = norm({"message": value})["message"]
    assert isinstance(message, str)
    assert orjson.loads(message) == value


def test_first_message_alias_wins_and_the_other_goes_to_metadata() -> None:
    record = norm({"msg": "second", "message": "first", "timestamp": 0})
    assert record["message"] == "first"
    assert record["metadata"] == {"msg": "second"}


def test_source_aliases() -> None:
    assert norm({"source": "db"})["source"] == "db"
    assert norm({"service": "db"})["source"] == "db"
    assert norm({"source": "a", "service": "b", "ts": 0})["metadata"] == {"service": "b"}
    assert norm({"source": 7})["source"] == "7"


def test_object_under_a_field_alias_goes_to_metadata() -> None:
    record = norm({"service": {"name": "api"}, "ts": 0})
    assert record["source"] == ""
    assert record["metadata"] == {"service.name": "api"}


def test_ids() -> None:
    record = norm({"thread_id": 12, "request_id": "r", "user_id": ""})
    assert (record["thread_id"], record["request_id"], record["user_id"]) == ("12", "r", None)


# --- tags ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["a", "b"], ["a", "b"]),
        (["b", "a", "b", "c", "a"], ["b", "a", "c"]),  # deduplicated, first-seen order
        ("a,b", ["a", "b"]),
        (" a , b,,a, ", ["a", "b"]),
        ([1, True, 2.5, None, "1"], ["1", "True", "2.5"]),
        (5, ["5"]),
        ("", []),
        ([], []),
        (["ünï", "标签"], ["ünï", "标签"]),
    ],
)
def test_tags(tags: Any, expected: list[str]) -> None:
    assert norm({"tags": tags})["tags"] == expected


def test_tags_object_is_rejected() -> None:
    with pytest.raises(BadRecord, match="tags must be a list"):
        norm({"tags": {"a": 1}})


# --- metadata ------------------------------------------------------------------------------------


def test_flattening() -> None:
    record = norm(
        {
            "ts": 0,
            "host": "web-1",
            "http": {"status": 500, "req": {"method": "GET", "ok": False}, "empty": {}},
            "metadata": {"region": "eu", "k8s": {"pod": "p-1"}, "gone": None},
            "list": [1, "two", {"x": None}],
            "ratio": 0.25,
            "dropped": None,
            7: "int key",
        }
    )
    metadata = record["metadata"]
    assert metadata == {
        "host": "web-1",
        "http.status": 500,
        "http.req.method": "GET",
        "http.req.ok": False,
        "region": "eu",
        "k8s.pod": "p-1",
        "list": metadata["list"],
        "ratio": 0.25,
        "7": "int key",
    }
    assert orjson.loads(metadata["list"]) == [1, "two", {"x": None}]


def test_metadata_not_an_object_is_an_ordinary_key() -> None:
    assert norm({"ts": 0, "metadata": "x"})["metadata"] == {"metadata": "x"}


def test_metadata_value_types() -> None:
    metadata = norm(
        {"ts": 0, "big": 2**64, "neg": -(2**63), "nan": float("nan"), "inf": -math.inf}
    )["metadata"]
    # 64-bit ints stay ints; wider ints and non-finite floats become text
    assert metadata == {"big": str(2**64), "neg": -(2**63), "nan": "nan", "inf": "-inf"}


# --- limits at the limit and one past it ---------------------------------------------------------


def expect_bad(raw: Any, limits: Limits, *fragments: str) -> None:
    with pytest.raises(BadRecord) as info:
        norm(raw, limits)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_message_limit() -> None:
    limit = DEFAULT_LIMITS.max_message_bytes
    assert len(norm({"message": "m" * limit})["message"]) == limit
    expect_bad(
        {"message": "m" * (limit + 1)},
        DEFAULT_LIMITS,
        f"message is {limit + 1} bytes; the limit is {limit} (limits.max_message_bytes)",
    )


def test_message_limit_counts_utf8_bytes() -> None:
    limits = Limits(max_message_bytes=10)
    # é is 2 bytes and 😀 is 4: "ééé😀" is 10 bytes (10 characters would be far fewer)
    assert norm({"message": "ééé😀"}, limits)["message"] == "ééé😀"
    expect_bad({"message": "éé😀😀"}, limits, "message is 12 bytes; the limit is 10")


def test_tags_limit() -> None:
    tags = [f"t{i}" for i in range(DEFAULT_LIMITS.max_tags)]
    assert norm({"tags": tags})["tags"] == tags
    assert norm({"tags": [*tags, "t0"]})["tags"] == tags  # duplicates do not count
    expect_bad(
        {"tags": [*tags, "extra"]},
        DEFAULT_LIMITS,
        "record has 65 tags; the limit is 64 (limits.max_tags)",
    )


def test_metadata_keys_limit() -> None:
    limit = DEFAULT_LIMITS.max_metadata_keys
    raw = {f"k{i}": i for i in range(limit)}
    # the module's own _ts_invalid flag does not count against the limit
    assert len(norm(raw)["metadata"]) == limit + 1
    raw["one_more"] = 1
    expect_bad(
        raw,
        DEFAULT_LIMITS,
        f"record has {limit + 1} metadata keys; the limit is {limit} (limits.max_metadata_keys)",
    )


def test_flattened_keys_count_against_the_limit() -> None:
    limits = Limits(max_metadata_keys=3)
    assert len(norm({"ts": 0, "a": {"b": 1, "c": 2}, "d": 3}, limits)["metadata"]) == 3
    too_many = {"ts": 0, "a": {"b": 1, "c": 2, "e": 4}, "d": 3}
    expect_bad(too_many, limits, "record has 4 metadata keys")


def test_key_limit() -> None:
    limit = DEFAULT_LIMITS.max_key_bytes
    assert norm({"ts": 0, "k" * limit: 1})["metadata"] == {"k" * limit: 1}
    expect_bad(
        {"k" * (limit + 1): 1},
        DEFAULT_LIMITS,
        f"is {limit + 1} bytes; the limit is {limit} (limits.max_key_bytes)",
        "metadata key 'kkk",
    )
    # the flattened name is what is limited
    expect_bad({"a": {"k" * (limit - 1): 1}}, DEFAULT_LIMITS, f"is {limit + 1} bytes")


def test_key_limit_counts_utf8_bytes() -> None:
    assert norm({"ts": 0, "é" * 64: 1})["metadata"] == {"é" * 64: 1}  # 128 bytes
    expect_bad({"é" * 65: 1}, DEFAULT_LIMITS, "is 130 bytes; the limit is 128")


def test_value_limit() -> None:
    limit = DEFAULT_LIMITS.max_value_bytes
    assert norm({"ts": 0, "v": "x" * limit})["metadata"] == {"v": "x" * limit}
    expect_bad(
        {"v": "x" * (limit + 1)},
        DEFAULT_LIMITS,
        f"metadata value of 'v' is {limit + 1} bytes; the limit is {limit} "
        "(limits.max_value_bytes)",
    )


def test_value_limit_applies_to_list_json_text() -> None:
    limits = Limits(max_value_bytes=7)
    assert norm({"ts": 0, "v": [1, 2, 3]}, limits)["metadata"] == {"v": "[1,2,3]"}  # 7 bytes
    expect_bad({"v": [1, 2, 30]}, limits, "is 8 bytes; the limit is 7")


@pytest.mark.parametrize("field", ["source", "thread_id", "request_id", "user_id", "level"])
def test_field_limit(field: str) -> None:
    limit = DEFAULT_LIMITS.max_field_bytes
    assert norm({field: "A" * limit})[field] == "A" * limit
    expect_bad(
        {field: "A" * (limit + 1)},
        DEFAULT_LIMITS,
        f"{field} is {limit + 1} bytes; the limit is {limit} (limits.max_field_bytes)",
    )


def test_tag_length_limit() -> None:
    limit = DEFAULT_LIMITS.max_field_bytes
    assert norm({"tags": ["t" * limit]})["tags"] == ["t" * limit]
    expect_bad(
        {"tags": ["t" * (limit + 1)]},
        DEFAULT_LIMITS,
        "tag 'ttt",
        f"is {limit + 1} bytes; the limit is {limit} (limits.max_field_bytes)",
    )


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda inner: {"m": inner}, id="metadata object"),
        pytest.param(lambda inner: {"metadata": inner}, id="inside metadata"),
        pytest.param(lambda inner: {"message": inner}, id="message object"),
        pytest.param(lambda inner: {"list": [inner["a"]]}, id="metadata list"),
        pytest.param(lambda inner: {"tags": [inner["a"]]}, id="tag item"),
    ],
)
def test_depth_limit(wrap: Any) -> None:
    # The record is level 1, so a record of depth 16 holds 15 nested containers.  Each wrapper
    # replaces one object level with another container, keeping the total depth.
    limit = DEFAULT_LIMITS.max_json_depth
    assert max_depth(wrap(nested(limit - 1))) == limit  # the test's own arithmetic
    norm(wrap(nested(limit - 1)))
    expect_bad(
        wrap(nested(limit)),
        DEFAULT_LIMITS,
        f"nested {limit + 1} levels deep; the limit is {limit} (limits.max_json_depth)",
    )


def max_depth(value: Any) -> int:
    """Oracle: container depth of a JSON value (a scalar is 0, {} is 1)."""
    if isinstance(value, dict):
        return 1 + max((max_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((max_depth(v) for v in value), default=0)
    return 0


def test_cyclic_input_is_rejected_not_looped() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    expect_bad({"m": loop}, DEFAULT_LIMITS, "limits.max_json_depth")
    cycle: list[Any] = []
    cycle.append(cycle)
    expect_bad({"message": cycle}, DEFAULT_LIMITS, "limits.max_json_depth")


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "name"),
    [([1, 2], "list"), ("text", "string"), (5, "number"), (None, "null"), (True, "boolean")],
)
def test_non_mapping_record(raw: Any, name: str) -> None:
    with pytest.raises(BadRecord) as info:
        norm(raw)
    assert str(info.value) == f"record must be a JSON object, got {name}"


@pytest.mark.parametrize(
    "raw", [{"message": "a\ud800b"}, {"k\udfff": 1}, {"v": "\ud800"}, {"tags": ["\ud800"]}]
)
def test_lone_surrogates_are_rejected(raw: dict[str, Any]) -> None:
    expect_bad(raw, DEFAULT_LIMITS, "not valid UTF-8")


def test_unicode_is_kept() -> None:
    raw = {"message": "连接超时 ⏱ Zeitüberschreitung 😀", "source": "сервис", "ключ": "знач"}
    record = norm(raw)
    assert record["message"] == raw["message"]
    assert record["source"] == "сервис"
    assert record["metadata"]["ключ"] == "знач"


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError) as info:
        Limits(max_tags=0, max_key_bytes=-1)
    assert "limits.max_tags" in str(info.value) and "limits.max_key_bytes" in str(info.value)


# --- to_public -----------------------------------------------------------------------------------


def test_to_public() -> None:
    raw = {"timestamp": "2024-01-01T14:02:00.120Z", "level": "e", "message": "m", "x": 1}
    stored = norm({**raw, "tags": ["a"]})
    stored["id"] = 42
    public = to_public(stored)
    assert public == {
        "id": 42,
        "timestamp": "2024-01-01T14:02:00.120Z",
        "level": "ERROR",
        "message": "m",
        "source": "",
        "tags": ["a"],
        "metadata": {"x": 1},
        "thread_id": None,
        "request_id": None,
        "user_id": None,
    }
    public["tags"].append("b")
    public["metadata"]["y"] = 2
    assert stored["tags"] == ["a"] and stored["metadata"] == {"x": 1}
    orjson.dumps(public)  # the public shape is JSON-serializable


# --- properties ----------------------------------------------------------------------------------

ALIASES = ["timestamp", "@timestamp", "time", "ts", "_time", "message", "msg", "_msg", "level",
           "severity", "log.level", "source", "service", "tags", "metadata", "thread_id",
           "request_id", "user_id", "host", "log"]  # fmt: skip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["2024-01-01T14:02:00Z", "1700000000", "warn", "a,b,a", ""])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6) | st.sampled_from(ALIASES), children, max_size=4),
    max_leaves=8,
)
records = st.dictionaries(st.sampled_from(ALIASES) | st.text(max_size=8), json_values, max_size=8)
small_limits = st.builds(
    Limits,
    max_message_bytes=st.integers(1, 64),
    max_tags=st.integers(1, 4),
    max_metadata_keys=st.integers(1, 6),
    max_key_bytes=st.integers(1, 16),
    max_value_bytes=st.integers(1, 32),
    max_json_depth=st.integers(1, 5),
    max_future_ns=st.integers(1, 10**18),
    max_field_bytes=st.integers(1, 16),
)


def check_shape(record: dict[str, Any], limits: Limits) -> None:
    assert list(record) == list(FIELDS)
    assert type(record["ts_ns"]) is int and -(2**63) <= record["ts_ns"] < 2**63
    assert record["ts_ns"] - NOW_NS <= limits.max_future_ns
    for name in ("level", "message", "source"):
        assert type(record[name]) is str
    assert len(record["message"].encode()) <= limits.max_message_bytes
    assert record["level"] and len(record["level"].encode()) <= limits.max_field_bytes
    assert len(record["source"].encode()) <= limits.max_field_bytes
    tags = record["tags"]
    assert type(tags) is list and len(tags) <= limits.max_tags and len(set(tags)) == len(tags)
    for tag in tags:
        assert type(tag) is str and tag and len(tag.encode()) <= limits.max_field_bytes
    metadata = record["metadata"]
    assert type(metadata) is dict
    assert len(metadata.keys() - {"_ts_invalid", "_ts_original"}) <= limits.max_metadata_keys
    for key, value in metadata.items():
        assert type(key) is str
        if key not in ("_ts_invalid", "_ts_original"):
            assert len(key.encode()) <= limits.max_key_bytes
        assert type(value) in (str, int, float, bool)
        if type(value) is int:
            assert -(2**63) <= value < 2**63
        if type(value) is float:
            assert math.isfinite(value)
        if type(value) is str:
            assert len(value.encode()) <= limits.max_value_bytes
    for name in ("thread_id", "request_id", "user_id"):
        value = record[name]
        if value is not None:
            assert type(value) is str and value
            assert len(value.encode()) <= limits.max_field_bytes
    orjson.dumps(to_public({**record, "id": 1}))


@settings(max_examples=150)
@given(records)
def test_arbitrary_records_default_limits(raw: dict[Any, Any]) -> None:
    try:
        record = norm(raw)
    except BadRecord:
        return
    check_shape(record, DEFAULT_LIMITS)


@settings(max_examples=200)
@given(st.one_of(records, json_values), small_limits)
def test_arbitrary_input_small_limits(raw: Any, limits: Limits) -> None:
    # Small limits make every rejection path reachable; nothing but BadRecord may escape.
    try:
        record = norm(raw, limits)
    except BadRecord:
        return
    check_shape(record, limits)


plain_keys = st.text(alphabet="abcxyz", min_size=1, max_size=4).map(lambda k: "k" + k)
leaf_values = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False)
)
tree = st.recursive(leaf_values, lambda c: st.dictionaries(plain_keys, c, max_size=3), max_leaves=8)


def flatten_oracle(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, child in value.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(child, dict):
            out.update(flatten_oracle(child, name))
        else:
            out[name] = child
    return out


@settings(max_examples=100)
@given(st.dictionaries(plain_keys, tree, max_size=5))
def test_flattening_matches_oracle(raw: dict[str, Any]) -> None:
    # Keys start with "k" and hold no dots, so flattened names cannot collide or hit an alias.
    record = norm({"ts": 0, **raw})
    assert record["metadata"] == flatten_oracle(raw)


# --- the fast path for the common shape agrees with the general path --------------------------------

from storage.record import _normalize_general, _normalize_simple  # noqa: E402

_ascii = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
_simple_scalar = st.one_of(_ascii, st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                           st.booleans(), st.none())
_simple_raw = st.fixed_dictionaries({}, optional={
    "timestamp": st.one_of(st.none(), st.sampled_from([
        "2024-01-01T00:00:00Z", "2024-01-01 12:00:00.5", "1700000000", "garbage", "", "3000-01-01T00:00:00Z",
        # the "...Z" fast parser's edges: padding, near and far future, bad fields, long fractions
        " 2024-01-01T00:00:00Z", "2024-01-01T00:00:00.25Z ", "2024-03-11T00:00:00.123456Z",
        "2024-03-12T00:00:00Z", "2024-13-01T00:00:00Z", "2024-01-01T00:00:00.1234567890Z",
        "1677-09-21T00:12:43Z", "2024-01-01T00:00:00.Z", "2024-01-01T24:00:00Z"])),
    "level": st.one_of(st.none(), st.sampled_from(["info", "WARNING", "err", "custom", " debug ", "", "5"])),
    "message": st.one_of(_ascii, st.none(), st.integers()),
    "source": st.one_of(_ascii, st.none()),
    "tags": st.one_of(st.none(), st.lists(st.one_of(_ascii, st.sampled_from([" a", "b ", ""])), max_size=4)),
    "metadata": st.one_of(st.none(), st.dictionaries(st.one_of(_ascii, st.just("log.level")), _simple_scalar,
                                                     max_size=4)),
    "thread_id": st.one_of(_ascii, st.none()),
    "request_id": st.one_of(_ascii, st.none()),
    "user_id": st.one_of(_ascii, st.none()),
})


@given(_simple_raw)
@settings(max_examples=400, deadline=None)
def test_the_fast_path_agrees_with_the_general_path(raw: dict) -> None:
    now_ns = 1_710_000_000 * 10**9  # 2024-03: some sampled timestamps are past, one is far ahead
    try:
        general = _normalize_general(raw, now_ns, DEFAULT_LIMITS)
    except BadRecord:
        general = "rejected"
    try:
        fast = _normalize_simple(raw, now_ns, DEFAULT_LIMITS)
    except BadRecord:
        fast = "rejected"
    if fast is not None:  # None: the fast path declined, the general path decides
        assert fast == general, raw


_extra_key = st.one_of(_ascii, st.sampled_from(["host", "status", "msg", "service", "@timestamp", "log.level", "time",
                                                  "severity", "metadata", "tags", "_ts_invalid", "ключ"]))
_extra_value = st.one_of(_simple_scalar, st.dictionaries(_ascii, _simple_scalar, max_size=2),
                         st.lists(_ascii, max_size=2), st.just("значение"))


@given(_simple_raw, st.dictionaries(_extra_key, _extra_value, max_size=4))
@settings(max_examples=400, deadline=None)
def test_top_level_extras_take_the_fast_path_only_when_it_agrees(raw: dict, extras: dict) -> None:
    """Fields beyond the canonical ones (ECS documents, jsonline with top-level fields) are moved under
    metadata for the fast path; normalize_record's answer is always the general path's."""
    from storage.record import normalize_record

    raw = {**extras, **raw} if extras.keys() & {"metadata", "tags"} else {**raw, **extras}
    now_ns = 1_710_000_000 * 10**9
    try:
        general = _normalize_general(raw, now_ns, DEFAULT_LIMITS)
    except BadRecord as exc:
        general = f"rejected: {exc.message}"
    try:
        got = normalize_record(raw, now_ns=now_ns, limits=DEFAULT_LIMITS)
    except BadRecord as exc:
        got = f"rejected: {exc.message}"
    assert got == general, raw


def test_an_ecs_document_takes_the_fast_path() -> None:
    from storage.record import _extras_to_metadata

    raw = {"timestamp": "2024-01-01T00:00:00Z", "message": "m", "level": "info", "source": "api",
           "host": "web-1", "status": 200, "metadata": {"k": "v"}, "duration_ms": 1.5}
    shaped = _extras_to_metadata(raw)
    assert shaped is not None and shaped["metadata"] == {"host": "web-1", "status": 200, "k": "v", "duration_ms": 1.5}
    assert _normalize_simple(shaped, 1_710_000_000 * 10**9, DEFAULT_LIMITS) == _normalize_general(
        raw, 1_710_000_000 * 10**9, DEFAULT_LIMITS)
    assert _extras_to_metadata({**raw, "msg": "alias"}) is None
    assert _extras_to_metadata({**raw, "nested": {"a": 1}}) is None


def test_the_fast_path_takes_the_common_shape() -> None:
    raw = {"timestamp": "2024-01-01T00:00:00Z", "level": "error", "message": "db timeout", "source": "api",
           "tags": ["a", "b", "a"], "metadata": {"host": "web-1", "ms": 12, "ok": True}, "request_id": "r1"}
    fast = _normalize_simple(raw, 1_710_000_000 * 10**9, DEFAULT_LIMITS)
    assert fast is not None
    assert fast == _normalize_general(raw, 1_710_000_000 * 10**9, DEFAULT_LIMITS)
    assert fast["tags"] == ["a", "b"] and fast["level"] == "ERROR"
