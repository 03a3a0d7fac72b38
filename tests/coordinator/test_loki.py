"""coordinator.loki: Loki push bodies (JSON, snappy protobuf) -> raw records, the label mapping, and
hostile bodies that must end as BadRequest and nothing else."""

from __future__ import annotations

import json
from typing import Any

import cramjam
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import loki
from storage.errors import BadRequest
from storage.record import normalize_record
from storage.timefmt import MAX_TS_NS, MIN_TS_NS, parse_timestamp

NOW_NS = 1_750_000_000 * 10**9
TS_NS = 1_700_000_000_123_456_789


def protobuf_push(streams: list[tuple[str, list[tuple[int | None, bytes, dict[str, str]]]]]) -> bytes:
    """A snappy-compressed PushRequest built with the module's message classes, as Promtail sends it."""
    request = loki.PushRequest()
    for labels, entries in streams:
        stream = request.streams.add(labels=labels.encode())
        for ts_ns, line, structured in entries:
            entry = stream.entries.add(line=line)
            if ts_ns is not None:
                entry.timestamp.seconds, entry.timestamp.nanos = divmod(ts_ns, 10**9)
            for name, value in structured.items():
                entry.structuredMetadata.add(name=name.encode(), value=value.encode())
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def go_quote(value: str) -> str:
    """A label value quoted as Go's strconv.Quote does for the characters JSON also escapes (JSON's
    escapes are a subset of Go's: \\" \\\\ \\n \\t \\uXXXX ...)."""
    return json.dumps(value, ensure_ascii=False)


def normalized(raw: dict[str, Any]) -> dict[str, Any]:
    return normalize_record(raw, now_ns=NOW_NS)


# --- protobuf ------------------------------------------------------------------------------------------


def test_a_protobuf_push_maps_labels_structured_metadata_and_exact_timestamps() -> None:
    body = protobuf_push([
        ('{job="varlogs", app="api", level="warn", host="web-1", tags="a,b"}',
         [(TS_NS, b"first line", {"trace_id": "t-1"}), (TS_NS + 1, b"second line", {"level": "error"})]),
        ('{service_name="db"}', [(TS_NS + 2, b"third", {})]),
    ])
    push = loki.decode_push(body, "application/x-protobuf", max_decompressed_bytes=1 << 20)
    records = [normalized(raw) for raw in push.records]
    assert [r["message"] for r in records] == ["first line", "second line", "third"]
    assert [r["ts_ns"] for r in records] == [TS_NS, TS_NS + 1, TS_NS + 2]
    # app beats job for the source; the job label stays queryable in metadata
    assert [r["source"] for r in records] == ["api", "api", "db"]
    # the entry's structured metadata level beats the stream label
    assert [r["level"] for r in records] == ["WARN", "ERROR", "INFO"]
    assert records[0]["tags"] == ["a", "b"]
    assert records[0]["metadata"] == {"job": "varlogs", "host": "web-1", "trace_id": "t-1"}
    assert records[1]["metadata"] == {"job": "varlogs", "host": "web-1"}
    assert records[2]["metadata"] == {}
    assert push.stream_starts == [0, 2]
    assert push.locate(2).startswith('stream 1 {service_name="db"} entry 0')


def test_an_entry_without_a_timestamp_gets_the_ingest_time_flagged() -> None:
    push = loki.decode_protobuf(protobuf_push([("{}", [(None, b"no time", {})])]), max_decompressed_bytes=1 << 20)
    record = normalized(push.records[0])
    assert record["ts_ns"] == NOW_NS and record["metadata"]["_ts_invalid"] is True


def test_invalid_utf8_in_a_line_is_replaced_not_fatal() -> None:
    push = loki.decode_protobuf(protobuf_push([('{app="x"}', [(TS_NS, b"bad \xff byte", {})])]),
                                max_decompressed_bytes=1 << 20)
    assert push.records[0]["message"] == "bad \ufffd byte"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=MIN_TS_NS, max_value=MAX_TS_NS))
def test_timestamp_text_reads_back_to_the_same_nanosecond(ts_ns: int) -> None:
    # The oracle is the identity: whatever the magnitude, storage.timefmt must read the same ns.
    assert parse_timestamp(loki._timestamp_text(ts_ns)) == ts_ns


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2**62))
def test_protobuf_timestamps_of_any_era_survive_normalization(ts_ns: int) -> None:
    # A small stamp (1970) must not be read as seconds by the unit-by-magnitude rule.
    push = loki.decode_protobuf(protobuf_push([("{}", [(ts_ns, b"x", {})])]), max_decompressed_bytes=1 << 20)
    raw = push.records[0]
    assert parse_timestamp(raw["timestamp"]) == ts_ns


# --- JSON -------------------------------------------------------------------------------------------------


def test_a_json_push_with_structured_metadata_and_the_legacy_shape() -> None:
    body = orjson.dumps({"streams": [
        {"stream": {"service_name": "checkout", "detected_level": "unknown", "env": "prod"},
         "values": [[str(TS_NS), "paid"], [str(TS_NS + 5), "refund", {"trace_id": "abc", "detected_level": "warn"}]]},
        {"labels": '{job="legacy", level="error"}', "entries": [{"ts": "2024-01-01T00:00:00.5Z", "line": "old api"}]},
    ]})
    push = loki.decode_push(body, "application/json", max_decompressed_bytes=1 << 20)
    records = [normalized(raw) for raw in push.records]
    assert [(r["message"], r["source"], r["level"]) for r in records] == [
        ("paid", "checkout", "INFO"),  # detected_level=unknown counts as absent -> default INFO
        ("refund", "checkout", "WARN"),
        ("old api", "legacy", "ERROR"),
    ]
    assert records[0]["metadata"] == {"detected_level": "unknown", "env": "prod"}
    # the entry's detected_level became the level; the stream's label (not the winner) stays
    assert records[1]["metadata"] == {"detected_level": "unknown", "env": "prod", "trace_id": "abc"}
    assert [r["ts_ns"] for r in records] == [TS_NS, TS_NS + 5, 1_704_067_200_500_000_000]


def test_a_json_push_without_content_type_is_sniffed() -> None:
    body = orjson.dumps({"streams": [{"stream": {"app": "x"}, "values": [[str(TS_NS), "line"]]}]})
    assert loki.decode_push(body, "", max_decompressed_bytes=1 << 20).records[0]["message"] == "line"
    proto = protobuf_push([('{app="x"}', [(TS_NS, b"line", {})])])
    assert loki.decode_push(proto, "application/octet-stream", max_decompressed_bytes=1 << 20).records[0][
        "message"] == "line"


def test_an_empty_push_has_no_records() -> None:
    assert loki.decode_json(b'{"streams": []}').records == []
    assert loki.decode_json(b"{}").records == []


# --- the label mapping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("labels", "source"), [
    ({"job": "j", "app": "a", "service_name": "s", "source": "src"}, "src"),
    ({"job": "j", "app": "a", "service_name": "s"}, "s"),
    ({"job": "j", "app": "a", "container": "c"}, "a"),
    ({"job": "j", "container": "c"}, "c"),
    ({"job": "j"}, "j"),
    ({"env": "prod"}, None),
])
def test_the_source_is_the_first_label_of_the_documented_order(labels: dict[str, str], source: str | None) -> None:
    fields = loki.stream_fields(labels)
    assert fields.source == source
    # the winner is not repeated in metadata; every other label is kept
    assert set(fields.metadata) == set(labels) - ({next(n for n in loki.SOURCE_LABELS if n in labels)}
                                                  if source else set())


def test_level_labels_hostname_and_tags() -> None:
    fields = loki.stream_fields({"severity": "err", "detected_level": "info", "hostname": "h", "tags": "x, y"})
    assert (fields.level, fields.tags) == ("err", "x, y")
    assert fields.metadata == {"detected_level": "info", "host": "h"}
    # hostname is not renamed over a host label
    assert loki.stream_fields({"host": "a", "hostname": "b"}).metadata == {"host": "a", "hostname": "b"}


def test_labels_parse_go_escapes() -> None:
    text = r'{a="x\"y", b="back\\slash", c="new\nline", d="\u00e9\x41", e="", f="comma, inside"}'
    assert loki.parse_labels(text) == (("a", 'x"y'), ("b", "back\\slash"), ("c", "new\nline"), ("d", "éA"),
                                       ("e", ""), ("f", "comma, inside"))
    assert loki.parse_labels("{}") == ()
    assert loki.parse_labels('{a="1",}') == (("a", "1"),)


label_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
label_values = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(label_names, label_values, max_size=6))
def test_labels_round_trip_through_their_text_form(labels: dict[str, str]) -> None:
    text = "{" + ", ".join(f"{name}={go_quote(value)}" for name, value in labels.items()) + "}"
    assert dict(loki.parse_labels(text)) == labels


# --- hostile bodies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    (b"{not json", "not valid JSON"),
    (b"[]", "expected an object"),
    (b'{"streams": {}}', "streams is an object"),
    (b'{"streams": [1]}', "streams[0] is a number"),
    (b'{"streams": [{"other": 1}]}', "streams[0] has neither"),
    (b'{"streams": [{"stream": [], "values": []}]}', "streams[0].stream is a list"),
    (b'{"streams": [{"stream": {"a": {}}, "values": []}]}', "streams[0].stream.a is an object"),
    (b'{"streams": [{"stream": {}, "values": 5}]}', "streams[0].values is a number"),
    (b'{"streams": [{"stream": {}, "values": [["1"]]}]}', "streams[0].values[0] is"),
    (b'{"streams": [{"stream": {}, "values": [["abc", "x"]]}]}', "streams[0].values[0][0] is 'abc'"),
    (b'{"streams": [{"stream": {}, "values": [["1.5", "x"]]}]}', "epoch nanoseconds"),
    (b'{"streams": [{"stream": {}, "values": [["123456789012345678901", "x"]]}]}', "values[0][0]"),
    (b'{"streams": [{"stream": {}, "values": [["1", {"a": 1}]]}]}', "values[0][1] is an object"),
    (b'{"streams": [{"stream": {}, "values": [["1", "x", 7]]}]}', "values[0][2] is a number"),
    (b'{"streams": [{"labels": "job=x", "entries": []}]}', "not a label set"),
    (b'{"streams": [{"labels": "{job=x}", "entries": []}]}', "malformed"),
    (b'{"streams": [{"labels": "{}", "entries": [{"ts": "yesterday", "line": "x"}]}]}', "RFC 3339"),
])
def test_malformed_json_pushes_name_the_problem(body: bytes, expected: str) -> None:
    with pytest.raises(BadRequest) as caught:
        loki.decode_push(body, "application/json", max_decompressed_bytes=1 << 20)
    assert expected in caught.value.message


def test_a_snappy_block_claiming_too_much_is_refused_before_decompressing() -> None:
    big = bytes(cramjam.snappy.compress_raw(b"\0" * 100_000))
    with pytest.raises(BadRequest, match="expands to 100000 bytes; the limit is 1000"):
        loki.decode_protobuf(big, max_decompressed_bytes=1000)
    # a preamble claiming 4 GiB with no data behind it
    with pytest.raises(BadRequest, match="limit"):
        loki.decode_protobuf(b"\xff\xff\xff\xff\x0f", max_decompressed_bytes=1 << 20)


@pytest.mark.parametrize(("body", "expected"), [
    (b"", "snappy"),
    (b"\x05garbage", "snappy"),
    (bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff\xff")), "not a protobuf PushRequest"),
])
def test_malformed_protobuf_pushes_name_the_problem(body: bytes, expected: str) -> None:
    with pytest.raises(BadRequest) as caught:
        loki.decode_push(body, "application/x-protobuf", max_decompressed_bytes=1 << 20)
    assert expected in caught.value.message


def test_protobuf_nanos_out_of_range_and_bad_labels_are_named() -> None:
    request = loki.PushRequest()
    entry = request.streams.add(labels=b"{}").entries.add(line=b"x")
    entry.timestamp.seconds, entry.timestamp.nanos = 1, -5
    with pytest.raises(BadRequest, match=r"streams\[0\].entries\[0\].timestamp.nanos is -5"):
        loki.decode_protobuf(bytes(cramjam.snappy.compress_raw(request.SerializeToString())),
                             max_decompressed_bytes=1 << 20)
    with pytest.raises(BadRequest, match=r"streams\[0\]: Loki stream labels"):
        loki.decode_protobuf(protobuf_push([("not labels", [])]), max_decompressed_bytes=1 << 20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["application/json", "application/x-protobuf", ""]))
def test_arbitrary_bytes_decode_or_raise_bad_request_only(body: bytes, content_type: str) -> None:
    try:
        push = loki.decode_push(body, content_type, max_decompressed_bytes=1 << 16)
    except BadRequest as exc:
        assert exc.message
        return
    assert all(isinstance(raw, dict) and isinstance(raw["message"], str) for raw in push.records)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["streams", "stream", "values", "labels", "entries", "ts", "line", "a"]),
                        inner, max_size=4), max_leaves=20))
def test_arbitrary_json_shapes_decode_or_raise_bad_request_only(value: Any) -> None:
    try:
        push = loki.decode_json(orjson.dumps(value))
    except BadRequest as exc:
        assert exc.message
        return
    for raw in push.records:
        normalized(raw)  # every decoded record is one normalization accepts or rejects itself


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789\u0661 ", min_size=17, max_size=21),
       st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "trace_id"]),
                                            st.one_of(st.text(max_size=4), st.integers(-(1 << 63), (1 << 63) - 1),
                                                      st.none(), st.booleans()),
                                            max_size=3)))
def test_the_inline_json_checks_agree_with_the_wording_helpers(ts: str, structured: dict[str, Any] | None) -> None:
    """The per-line fast checks of decode_json (19-digit ns text, all-string structured metadata) take
    exactly what the helpers take, and leave everything else to them."""
    body = orjson.dumps({"streams": [{"stream": {"app": "x"}, "values": [[ts, "line", structured]]}]})
    try:
        want_ts = loki._json_ns(ts, "streams[0].values[0][0]")
        want_meta = None if structured is None else loki._json_labels(structured, "streams[0].values[0][2]")
    except BadRequest as exc:
        with pytest.raises(BadRequest) as caught:
            loki.decode_json(body)
        assert caught.value.message == exc.message
        return
    record = loki.decode_json(body).records[0]
    assert record["timestamp"] == want_ts
    assert {k: v for k, v in record["metadata"].items() if k != "app"} == {
        k: v for k, v in (want_meta or {}).items() if k not in loki.LEVEL_LABELS}
