"""Loki push requests (``POST /loki/api/v1/push``) decoded into raw records for ``Service.ingest``.

This module owns the Loki push wire formats and how Loki's stream model maps onto shardlog records.
It is pure: bytes in, raw record dicts out, no I/O.  It guarantees:

- Both bodies Loki accepts are read: JSON (``{"streams": [{"stream": {labels}, "values": [["<ns>",
  "<line>", {structured metadata}?], ...]}]}``, and the legacy ``{"labels": "{a=\\"b\\"}",
  "entries": [{"ts": "<RFC 3339>", "line": "..."}]}`` shape), and protobuf compressed as one raw
  snappy block (no framing), which Promtail and Grafana Alloy send by default with
  ``Content-Type: application/x-protobuf``.
- Any malformed body raises ``storage.errors.BadRequest`` naming the place (``streams[2].values[7][0]``)
  and what was expected; nothing else escapes for any input.  A snappy block that claims to expand
  beyond ``max_decompressed_bytes`` is refused before anything is allocated for it.
- Timestamps are exact: Unix epoch nanoseconds (a decimal string in JSON, ``seconds`` + ``nanos``
  in protobuf) are handed on in a form ``storage.timefmt`` reads back to the same nanosecond (the
  digits when the value is at least 1e17, where "unit by magnitude" means ns; RFC 3339 below that).

Stream labels and structured metadata -> record fields (the same for JSON and protobuf):

==========================  =====================================================================
record field                taken from
==========================  =====================================================================
``source``                  the first label present of ``SOURCE_LABELS``: ``source`` (shardlog's
                            own name wins when a sender sets it), ``service_name`` (what Loki 3
                            and Alloy set), then the labels Loki's own ``service_name`` discovery
                            tries, in its order (``service``, ``app``, ``application``,
                            ``app_kubernetes_io_name``, ``container``, ``container_name``,
                            ``k8s_container_name``, ``component``, ``workload``, ``job``,
                            ``k8s_job_name``).  Empty when none is present.
``level``                   the first of ``LEVEL_LABELS`` (``level``, ``severity``, ``lvl``,
                            ``detected_level``: an explicit level beats Loki's guess), looked up in
                            the entry's structured metadata first (it is per line, so more specific),
                            then in the stream labels.  A value ``unknown`` (what Loki's level
                            detection writes when it found none) or empty counts as absent.
``tags``                    the ``tags`` label, split on commas.
``metadata``                every other stream label under its own name (``job:varlogs`` queries
                            work), ``hostname`` renamed to ``host`` when there is no ``host`` label
                            (``host:`` is the host field of DESIGN §7); then every structured
                            metadata pair of the entry, which wins over a label of the same name.
``message``, ``timestamp``  the log line and its timestamp.
==========================  =====================================================================

A label that became ``source``, ``level`` or ``tags`` is not repeated in metadata: query it as
``source:``, ``level:`` or ``tag:``.  Lines and label text that are not valid UTF-8 are decoded with
U+FFFD replacement characters rather than failing the push (Go senders do not validate UTF-8).

Protobuf: the message types of Loki's ``pkg/push/push.proto`` are built at import time from a
``descriptor_pb2.FileDescriptorProto`` written out below, so there is no protoc step and no generated
file to keep in sync, and parsing runs in protobuf's C implementation (upb) rather than a hand-written
Python wire decoder, which would cost several microseconds per entry on the ingest path.  ``line``,
``labels`` and the label pairs are declared ``bytes`` where Loki says ``string``: the wire encoding is
identical, and it keeps upb from rejecting a whole push over one line of invalid UTF-8 (proto3 string
validation).  ``google.protobuf.Timestamp`` is declared locally with its exact wire layout
(``int64 seconds = 1; int32 nanos = 2``), so the file depends on no other descriptor.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cramjam
import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from storage.errors import BadRequest
from storage.timefmt import MIN_TS_NS, format_timestamp, parse_timestamp

#: Labels that name the record's source, first present wins (see the module docstring).
SOURCE_LABELS: tuple[str, ...] = (
    "source", "service_name", "service", "app", "application", "app_kubernetes_io_name", "container",
    "container_name", "k8s_container_name", "component", "workload", "job", "k8s_job_name",
)
#: Labels / structured metadata keys that carry the level, first present wins.
LEVEL_LABELS: tuple[str, ...] = ("level", "severity", "lvl", "detected_level")
TAGS_LABEL = "tags"

#: At and above this many ns, a digit string is read as ns by storage.timefmt's unit-by-magnitude rule.
_NS_BY_MAGNITUDE = 10**17
_MAX_TS_NS = 2**63 - 1
#: JSON timestamps: Loki sends a decimal string of ns; 20 digits already overflow int64.
_NS_TEXT_RE = re.compile(r"\d{1,20}", re.ASCII)
#: Label sets longer than this are not cached (4096 cached sets of at most this size: < 20 MiB).
_MAX_CACHED_LABELS_CHARS = 4096


# --- protobuf message types ------------------------------------------------------------------------


def _build_messages() -> dict[str, Any]:
    """The PushRequest family of message classes, from a descriptor built here (no protoc)."""
    F = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(name="shardlog/loki_push.proto", package="logproto",
                                                    syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str | None]) -> None:
        proto = file_proto.message_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            field = proto.field.add(name=field_name, number=number, type=field_type, label=label,
                                    json_name=field_name)
            if type_name is not None:
                field.type_name = type_name

    optional, repeated = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("Timestamp", ("seconds", 1, F.TYPE_INT64, optional, None), ("nanos", 2, F.TYPE_INT32, optional, None))
    message("LabelPairAdapter", ("name", 1, F.TYPE_BYTES, optional, None), ("value", 2, F.TYPE_BYTES, optional, None))
    message("EntryAdapter",
            ("timestamp", 1, F.TYPE_MESSAGE, optional, ".logproto.Timestamp"),
            ("line", 2, F.TYPE_BYTES, optional, None),
            ("structuredMetadata", 3, F.TYPE_MESSAGE, repeated, ".logproto.LabelPairAdapter"),
            ("parsed", 4, F.TYPE_MESSAGE, repeated, ".logproto.LabelPairAdapter"))
    message("StreamAdapter",
            ("labels", 1, F.TYPE_BYTES, optional, None),
            ("entries", 2, F.TYPE_MESSAGE, repeated, ".logproto.EntryAdapter"),
            ("hash", 3, F.TYPE_UINT64, optional, None))
    message("PushRequest", ("streams", 1, F.TYPE_MESSAGE, repeated, ".logproto.StreamAdapter"))
    # A private pool: another library registering "logproto" in the default pool cannot clash with us.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"logproto.{name}"))
            for name in ("Timestamp", "LabelPairAdapter", "EntryAdapter", "StreamAdapter", "PushRequest")}


_MESSAGES = _build_messages()
#: Message classes, for senders (tests, the benchmark) that build a push in protobuf.
PushRequest: Any = _MESSAGES["PushRequest"]
StreamAdapter: Any = _MESSAGES["StreamAdapter"]
EntryAdapter: Any = _MESSAGES["EntryAdapter"]
LabelPairAdapter: Any = _MESSAGES["LabelPairAdapter"]
Timestamp: Any = _MESSAGES["Timestamp"]


# --- the result ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LokiPush:
    """Raw records of one push in request order, and where each stream's entries start among them."""

    records: list[dict[str, Any]]
    stream_starts: list[int]
    #: each stream's label text, for error messages
    stream_labels: list[str]

    def locate(self, index: int) -> str:
        """'stream 1 {app="x"} entry 4' for the record at ``index`` (0-based), for error messages."""
        stream = bisect.bisect_right(self.stream_starts, index) - 1
        labels = self.stream_labels[stream] if 0 <= stream < len(self.stream_labels) else ""
        shown = labels if len(labels) <= 80 else labels[:80] + "…"
        return f"stream {stream} {shown} entry {index - self.stream_starts[stream]}"


# --- labels ---------------------------------------------------------------------------------------------

_LABEL_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_.\-/]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)', re.DOTALL)
_ESCAPE_RE = re.compile(r"\\(?:x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|([0-7]{3})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
                   "\\": "\\", '"': '"', "'": "'"}


def _unescape_match(match: re.Match[str]) -> str:
    hex2, hex4, hex8, octal, char = match.groups()
    code = hex2 or hex4 or hex8
    if code is not None:
        number = int(code, 16)
        return chr(number) if number <= 0x10FFFF else "\ufffd"
    if octal is not None:
        return chr(int(octal, 8))
    return _SIMPLE_ESCAPES.get(char, char)


def parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """The pairs of a Prometheus label set as Promtail writes it: ``{job="x", app="y\\"z"}`` (values
    quoted Go-style).  Raises BadRequest naming the text when it is not a label set."""
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise BadRequest(f"Loki stream labels {_shown(text)} are not a label set; expected "
                         '{name="value", ...}')
    inner = body[1:-1]
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(inner) and not inner[position:].isspace():
        match = _LABEL_RE.match(inner, position)
        if match is None:
            raise BadRequest(f"Loki stream labels {_shown(text)} are malformed at character {position + 1}; "
                             'expected name="value" pairs separated by commas')
        raw_value = match.group(2)
        value = _ESCAPE_RE.sub(_unescape_match, raw_value) if "\\" in raw_value else raw_value
        pairs.append((match.group(1), value))
        position = match.end()
    return tuple(pairs)


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= 80 else text[:80] + "…")


@dataclass(frozen=True)
class StreamFields:
    """What one stream's labels contribute to each of its records."""

    source: str | None
    level: str | None
    tags: str | None
    metadata: Mapping[str, str]


def _level_value(value: str) -> str | None:
    stripped = value.strip()
    return None if not stripped or stripped.lower() == "unknown" else value


def stream_fields(pairs: tuple[tuple[str, str], ...] | Mapping[str, str]) -> StreamFields:
    """Map stream labels onto record fields as the module docstring's table says."""
    labels = dict(pairs)
    source = level = tags = None
    for name in SOURCE_LABELS:
        if name in labels:
            source = labels.pop(name)
            break
    for name in LEVEL_LABELS:
        value = labels.get(name)
        if value is not None and _level_value(value) is not None:
            level = labels.pop(name)
            break
    if TAGS_LABEL in labels:
        tags = labels.pop(TAGS_LABEL)
    if "hostname" in labels and "host" not in labels:
        labels["host"] = labels.pop("hostname")
    return StreamFields(source, level, tags, labels)


@lru_cache(maxsize=4096)
def _cached_stream_fields(text: str) -> StreamFields:
    return stream_fields(parse_labels(text))


def _stream_fields_of_text(text: str) -> StreamFields:
    """Cached for label sets of ordinary size: a sender pushes the same few streams over and over.
    Huge ones are parsed each time, so a hostile sender cannot pin memory in the cache."""
    if len(text) <= _MAX_CACHED_LABELS_CHARS:
        return _cached_stream_fields(text)
    return stream_fields(parse_labels(text))


def _record(fields: StreamFields, ts_text: str | None, line: str, structured: dict[str, str] | None,
            ) -> dict[str, Any]:
    """One raw record.  The metadata dict is a fresh copy: hooks and normalization may edit a record's
    dicts, and a stream's labels are shared by all of its entries.  ``structured`` is a dict the
    caller made for this entry; it is consumed (its level key popped)."""
    metadata = dict(fields.metadata)
    level = fields.level
    if structured:
        for name in LEVEL_LABELS:
            value = structured.get(name)
            if value is not None and _level_value(value) is not None:
                level = structured.pop(name)
                break
        metadata.update(structured)
    record: dict[str, Any] = {"message": line, "metadata": metadata}
    if ts_text is not None:
        record["timestamp"] = ts_text
    if fields.source is not None:
        record["source"] = fields.source
    if level is not None:
        record["level"] = level
    if fields.tags is not None:
        record["tags"] = fields.tags
    return record


def _timestamp_text(ts_ns: int) -> str:
    """Text that storage.timefmt parses back to exactly ``ts_ns``."""
    if _NS_BY_MAGNITUDE <= ts_ns <= _MAX_TS_NS:
        return str(ts_ns)
    if MIN_TS_NS <= ts_ns < _NS_BY_MAGNITUDE:
        return format_timestamp(ts_ns)
    return str(ts_ns)  # outside int64 ns: normalization rejects it (future) or flags it (past)


# --- JSON ------------------------------------------------------------------------------------------------


def _json_ns(value: Any, where: str) -> str:
    """The record timestamp text of a JSON push timestamp (a string of epoch ns; a number is accepted)."""
    if type(value) is str:
        if _NS_TEXT_RE.fullmatch(value):
            ts_ns = int(value)
            if _NS_BY_MAGNITUDE <= ts_ns <= _MAX_TS_NS:
                return value
            return _timestamp_text(ts_ns)
        stripped = value.strip()
        if stripped != value and _NS_TEXT_RE.fullmatch(stripped):
            return _timestamp_text(int(stripped))
    elif type(value) is int and value >= 0:
        return _timestamp_text(value)
    raise BadRequest(f"Loki push: {where} is {_shown(value)}; a timestamp must be a string of Unix epoch "
                     'nanoseconds, e.g. "1700000000000000000"')


def _json_text(value: Any, where: str, what: str) -> str:
    if type(value) is str:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise BadRequest(f"Loki push: {where} is {_type_name(value)}; {what} must be a string")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _json_labels(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise BadRequest(f"Loki push: {where} is {_type_name(value)}; stream labels must be an object of "
                         "label name -> string value")
    labels: dict[str, str] = {}
    for name, label_value in value.items():
        if label_value is None:
            continue
        labels[name] = _json_text(label_value, f"{where}.{name}", "a label value")
    return labels


def decode_json(body: bytes | str) -> LokiPush:
    """A JSON push body -> raw records.  BadRequest names the first problem."""
    try:
        push = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Loki push body is not valid JSON: {exc}; send {{\"streams\": [...]}} or protobuf "
                         "with Content-Type: application/x-protobuf") from None
    if not isinstance(push, dict):
        raise BadRequest(f"Loki push body is {_type_name(push)}; expected an object {{\"streams\": [...]}}")
    streams = push.get("streams")
    if streams is None:
        streams = []
    if not isinstance(streams, list):
        raise BadRequest(f"Loki push: streams is {_type_name(streams)}; expected a list of streams")
    records: list[dict[str, Any]] = []
    starts: list[int] = []
    label_texts: list[str] = []
    for stream_index, stream in enumerate(streams):
        where = f"streams[{stream_index}]"
        if not isinstance(stream, dict):
            raise BadRequest(f"Loki push: {where} is {_type_name(stream)}; expected an object with "
                             '"stream" and "values"')
        starts.append(len(records))
        if "stream" in stream or "values" in stream:
            labels_value = stream.get("stream")
            labels = _json_labels({} if labels_value is None else labels_value, f"{where}.stream")
            fields = stream_fields(labels)
            label_texts.append(_label_text(labels))
            _json_values(stream.get("values"), where, fields, records)
        elif "labels" in stream or "entries" in stream:  # the pre-2.0 shape, still accepted by Loki
            labels_text = _json_text(stream.get("labels", "{}"), f"{where}.labels", "labels")
            label_texts.append(labels_text)
            try:
                fields = _stream_fields_of_text(labels_text)
            except BadRequest as exc:
                raise BadRequest(f"Loki push: {where}.labels: {exc.message}") from None
            _json_entries(stream.get("entries"), where, fields, records)
        else:
            raise BadRequest(f"Loki push: {where} has neither \"stream\"/\"values\" nor \"labels\"/\"entries\"")
    return LokiPush(records, starts, label_texts)


def _label_text(labels: Mapping[str, str]) -> str:
    return "{" + ", ".join(f'{name}="{value}"' for name, value in labels.items()) + "}"


def _json_values(values: Any, where: str, fields: StreamFields, records: list[dict[str, Any]]) -> None:
    if values is None:
        return
    if not isinstance(values, list):
        raise BadRequest(f"Loki push: {where}.values is {_type_name(values)}; expected a list of "
                         '["<ns timestamp>", "<line>"] pairs')
    for index, value in enumerate(values):
        if type(value) is not list or not 2 <= len(value) <= 3:
            raise BadRequest(f"Loki push: {where}.values[{index}] is {_shown(value)}; expected "
                             '["<ns timestamp>", "<line>"] or ["<ns>", "<line>", {structured metadata}]')
        # the common shapes are checked inline; the wording helpers (and their f-strings) run only
        # for the rest: this loop runs once per shipped log line
        ts_value = value[0]
        if type(ts_value) is str and len(ts_value) == 19 and ts_value.isascii() and ts_value.isdigit() \
                and ts_value[0] != "0":
            ts_text = ts_value  # 19 digits: ns since 1973, inside int64 (read as ns by magnitude)
        else:
            ts_text = _json_ns(ts_value, f"{where}.values[{index}][0]")
        line = value[1]
        if type(line) is not str:
            line = _json_text(line, f"{where}.values[{index}][1]", "a log line")
        structured = None
        if len(value) == 3:
            pairs = value[2]
            if type(pairs) is dict and all(type(v) is str for v in pairs.values()):
                structured = dict(pairs)
            elif pairs is not None:
                structured = _json_labels(pairs, f"{where}.values[{index}][2]")
        records.append(_record(fields, ts_text, line, structured))


def _json_entries(entries: Any, where: str, fields: StreamFields, records: list[dict[str, Any]]) -> None:
    if entries is None:
        return
    if not isinstance(entries, list):
        raise BadRequest(f"Loki push: {where}.entries is {_type_name(entries)}; expected a list of "
                         '{"ts": ..., "line": ...}')
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BadRequest(f"Loki push: {where}.entries[{index}] is {_type_name(entry)}; expected "
                             '{"ts": "<RFC 3339>", "line": "..."}')
        ts_value = entry.get("ts", entry.get("timestamp"))
        ts_ns = parse_timestamp(ts_value) if ts_value is not None else None
        if ts_value is not None and ts_ns is None:
            raise BadRequest(f"Loki push: {where}.entries[{index}].ts is {_shown(ts_value)}; expected an "
                             "RFC 3339 timestamp")
        line = _json_text(entry.get("line", ""), f"{where}.entries[{index}].line", "a log line")
        records.append(_record(fields, None if ts_ns is None else _timestamp_text(ts_ns), line, None))


# --- protobuf + snappy ----------------------------------------------------------------------------------


def snappy_decompress(body: bytes, *, max_decompressed_bytes: int) -> bytes:
    """One raw snappy block (Go's ``snappy.Encode``), refusing blocks that claim more than
    ``max_decompressed_bytes`` before decompressing them."""
    try:
        size = int(cramjam.snappy.decompress_raw_len(body))
    except Exception as exc:  # cramjam raises its own error types for a bad preamble
        raise BadRequest(f"Loki push body is not a snappy block ({exc}); protobuf pushes must be compressed "
                         "with snappy (block format), as Promtail and Alloy send them") from None
    if size > max_decompressed_bytes:
        raise BadRequest(f"Loki push body expands to {size} bytes; the limit is {max_decompressed_bytes} "
                         "(max_body_bytes); send smaller batches")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as exc:
        raise BadRequest(f"Loki push body is not a valid snappy block ({exc}); protobuf pushes must be "
                         "compressed with snappy (block format), as Promtail and Alloy send them") from None


def _text(data: bytes) -> str:
    # "replace" costs nothing on valid UTF-8; the handler runs only at an invalid byte
    return data.decode("utf-8", "replace")


def decode_protobuf(body: bytes, *, max_decompressed_bytes: int) -> LokiPush:
    """A snappy-compressed protobuf ``PushRequest`` -> raw records.  BadRequest names the problem."""
    data = snappy_decompress(body, max_decompressed_bytes=max_decompressed_bytes)
    try:
        push = PushRequest.FromString(data)
    except DecodeError as exc:
        raise BadRequest(f"Loki push body is not a protobuf PushRequest after snappy decompression ({exc}); "
                         "send Loki's push.proto PushRequest, or JSON with Content-Type: application/json") \
            from None
    records: list[dict[str, Any]] = []
    starts: list[int] = []
    label_texts: list[str] = []
    append = records.append
    for stream_index, stream in enumerate(push.streams):
        starts.append(len(records))
        labels_text = _text(stream.labels)
        label_texts.append(labels_text)
        try:
            fields = _stream_fields_of_text(labels_text)
        except BadRequest as exc:
            raise BadRequest(f"Loki push: streams[{stream_index}]: {exc.message}") from None
        for entry_index, entry in enumerate(stream.entries):
            ts_text = None
            if entry.HasField("timestamp"):
                stamp = entry.timestamp
                nanos = stamp.nanos
                if not 0 <= nanos < 1_000_000_000:
                    raise BadRequest(f"Loki push: streams[{stream_index}].entries[{entry_index}].timestamp.nanos "
                                     f"is {nanos}; it must be in [0, 999999999]")
                ts_text = _timestamp_text(stamp.seconds * 1_000_000_000 + nanos)
            structured = None
            if entry.structuredMetadata:
                structured = {pair.name.decode("utf-8", "replace"): pair.value.decode("utf-8", "replace")
                              for pair in entry.structuredMetadata}
            append(_record(fields, ts_text, entry.line.decode("utf-8", "replace"), structured))
    return LokiPush(records, starts, label_texts)


# --- dispatch ---------------------------------------------------------------------------------------------


def decode_push(body: bytes, content_type: str, *, max_decompressed_bytes: int) -> LokiPush:
    """Decode a push by its Content-Type as Loki does: ``application/json`` is JSON,
    ``application/x-protobuf`` is snappy protobuf; with any other type the body is tried as JSON
    when it starts with ``{`` and as protobuf otherwise (a snappy block can also start with ``{``,
    which is why a declared type is never second-guessed)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json":
        return decode_json(body)
    if kind in ("application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf"):
        return decode_protobuf(body, max_decompressed_bytes=max_decompressed_bytes)
    if body.lstrip()[:1] != b"{":
        return decode_protobuf(body, max_decompressed_bytes=max_decompressed_bytes)
    try:
        return decode_json(body)
    except BadRequest as json_error:
        # it may be a snappy block whose length byte happens to be '{'; if not, the JSON error is the
        # one that helps the sender
        try:
            return decode_protobuf(body, max_decompressed_bytes=max_decompressed_bytes)
        except BadRequest:
            raise json_error from None
