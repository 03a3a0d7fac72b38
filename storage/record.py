"""One log record: normalizing what a sender sent into the stored shape, and the public JSON shape.

This module owns the record data model of DESIGN §2 and its limits.  ``normalize_record`` turns
any incoming mapping (from JSON lines, Loki, Elasticsearch bulk, syslog, the Python API) into a
dict with exactly ``FIELDS``, and guarantees:

- the types: ``ts_ns`` int (signed 64-bit), ``level``/``message``/``source`` str, ``tags`` a
  deduplicated list of str, ``metadata`` a flat dict of str -> str | int (64-bit) | finite float |
  bool, ``thread_id``/``request_id``/``user_id`` str or None;
- every limit of ``Limits`` holds, and a record that breaks one raises ``BadRecord`` naming the
  field, the value's size, the limit and the limit's name.  ``BadRecord`` is the only exception
  it raises for any input, so one bad record can never break a batch;
- a missing or unparsable timestamp becomes ``now_ns`` with ``metadata._ts_invalid = True`` (and
  the original text in ``metadata._ts_original``); one too far in the future is rejected.

``to_public`` turns a stored record (FIELDS plus ``id``) into the JSON shape users see.

Pure functions, no I/O; this runs for every ingested record, so the common case (flat JSON of
strings and numbers) takes a few dict look-ups and ``type() is`` checks per field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import orjson

from storage.errors import BadRecord
from storage.levels import normalize_level
from storage.timefmt import MIN_TS_NS, NS_PER_S, format_timestamp, parse_timestamp_unbounded, parse_utc_z


@dataclass(frozen=True)
class Limits:
    """Per-record limits (DESIGN §2).  Each bounds the memory and index cost one record can
    impose; every rejection names the field here, so users know which setting to change."""

    #: 256 KiB: a stack trace fits; a whole file sent as one "line" does not.
    max_message_bytes: int = 256 * 1024
    #: every tag becomes an index term; tags are labels, not data.
    max_tags: int = 64
    #: every metadata key becomes a column entry and an index term.
    max_metadata_keys: int = 256
    #: keys are index terms, kept below LMDB's 511-byte key limit together with the value.
    max_key_bytes: int = 128
    max_value_bytes: int = 8 * 1024
    #: deeper JSON is almost always a serialized blob or an attack on recursive code.
    max_json_depth: int = 16
    #: records dated far ahead come from broken clocks and would sit at the head of every query.
    max_future_ns: int = 2 * 86400 * 10**9
    #: source, each tag, thread_id, request_id, user_id, level.
    max_field_bytes: int = 1024

    def __post_init__(self) -> None:
        # All problems at once, so a config file is fixed in one round.
        problems = []
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"limits.{field.name} must be a positive integer, got {value!r}")
        # The depth walk recurses once per level; keep it far from Python's recursion limit and
        # within orjson's own nesting limit (254).
        depth = self.max_json_depth
        if isinstance(depth, int) and depth > 200:
            problems.append(f"limits.max_json_depth must be at most 200, got {depth}")
        if problems:
            raise ValueError("; ".join(problems))


DEFAULT_LIMITS = Limits()

FIELDS: tuple[str, ...] = (
    "ts_ns",
    "level",
    "message",
    "source",
    "tags",
    "metadata",
    "thread_id",
    "request_id",
    "user_id",
)

# Accepted input names, first match wins.  An alias that loses (say "msg" next to "message") is an
# ordinary unknown key and lands in metadata, so nothing a sender sent is dropped silently.
_TS_ALIASES = ("timestamp", "@timestamp", "time", "ts", "_time")
_MESSAGE_ALIASES = ("message", "msg", "_msg")
_LEVEL_ALIASES = ("level", "severity", "log.level")
_SOURCE_ALIASES = ("source", "service")
_ID_FIELDS = ("thread_id", "request_id", "user_id")

#: Where ECS senders (Filebeat, Vector's ES sink) put the level once {"log": {...}} is flattened.
_NESTED_LEVEL_KEY = "log.level"

#: Metadata keys this module writes itself; they do not count against max_metadata_keys.
TS_INVALID_KEY = "_ts_invalid"
TS_ORIGINAL_KEY = "_ts_original"

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_CONTAINERS = (Mapping, list, tuple)
_SCALAR_TYPES = frozenset((str, int, float, bool))
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS
# int() <-> str conversions refuse more than 4300 digits (Python's default limit); ~14,000 bits is
# a little under that.
_MAX_TEXT_INT_BITS = 14_000
_NS_PER_DAY = 86_400 * NS_PER_S


# --- small helpers -------------------------------------------------------------------------------


def _show(text: str) -> str:
    """A name or value quoted for an error message, cut at 40 characters."""
    return f"'{text}'" if len(text) <= 40 else f"'{text[:40]}…'"


def _type_name(value: Any) -> str:
    """The JSON name of a value's type, for messages a sender can act on."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _byte_len(text: str, what: str) -> int:
    """UTF-8 size of ``text``; rejects text that cannot be UTF-8 (lone surrogates, which a lenient
    JSON parser lets through and every encoder downstream would choke on)."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRecord(
            f"{what} is not valid UTF-8 text (it contains an unpaired surrogate); "
            "send text encoded as UTF-8"
        ) from None


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """At most ``max_bytes`` of UTF-8, cut on a character boundary; unpaired surrogates become
    '?' (this is a diagnostic copy, not worth rejecting the record for)."""
    if text.isascii():
        return text[:max_bytes]
    data = text.encode("utf-8", "replace")
    # "ignore" drops a multi-byte character cut in half at the end.
    return data[:max_bytes].decode("utf-8", "ignore")


def _scalar_text(value: Any, what: str) -> str:
    """str() of a scalar, guarded against ints too long for str()."""
    if isinstance(value, str):
        return value if type(value) is str else str.__str__(value)  # plain str for subclasses
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, int) and value.bit_length() > _MAX_TEXT_INT_BITS:
        raise BadRecord(
            f"{what} is an integer of about {int(value.bit_length() * 0.30103)} digits; "
            "send it as a string"
        )
    try:
        return str(value)
    except Exception as exc:  # an exotic object from the Python API; reject only this record
        raise BadRecord(f"{what} cannot be converted to text: {exc}") from None


def _depth_error(what: str, depth: int, limits: Limits) -> BadRecord:
    return BadRecord(
        f"{what} is nested {depth} levels deep; the limit is {limits.max_json_depth} "
        "(limits.max_json_depth)"
    )


def _check_depth(value: Any, depth: int, what: str, limits: Limits) -> None:
    """Raise when a container at ``depth`` (the record itself is depth 1) nests too deep.  The
    walk stops at limit+1, so recursion is bounded and cyclic structures terminate."""
    if depth > limits.max_json_depth:
        raise _depth_error(what, depth, limits)
    children = value.values() if isinstance(value, Mapping) else value
    for child in children:
        if isinstance(child, _CONTAINERS):
            _check_depth(child, depth + 1, what, limits)


def _json_text(value: Any, depth: int, what: str, limits: Limits) -> str:
    """Compact JSON of a list or mapping found at ``depth``, after the depth check."""
    _check_depth(value, depth, what, limits)
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS).decode("utf-8")
    except (orjson.JSONEncodeError, TypeError):
        pass
    # orjson refuses ints wider than 64 bits, Mapping types other than dict and non-JSON leaves;
    # the stdlib encoder is slower but handles those (rare) records.
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError) as exc:
        raise BadRecord(f"{what} cannot be encoded as JSON: {exc}") from None


def _human_duration(duration_ns: int) -> str:
    """Whole days, hours, minutes or seconds, the largest unit that fits ('1500 days')."""
    for unit_ns, name in (
        (_NS_PER_DAY, "day"),
        (3_600 * NS_PER_S, "hour"),
        (60 * NS_PER_S, "minute"),
        (NS_PER_S, "second"),
    ):
        if duration_ns >= unit_ns:
            count = duration_ns // unit_ns
            return f"{count} {name}" + ("" if count == 1 else "s")
    return f"{duration_ns} ns"


# --- fields --------------------------------------------------------------------------------------


def _pick(raw: Mapping[str, Any], aliases: tuple[str, ...]) -> tuple[str | None, Any]:
    """The first alias with a scalar value.  A list or object under an alias is not a usable
    timestamp/level/source; it is left for metadata, where its contents stay queryable."""
    for alias in aliases:
        value = raw.get(alias)
        if value is not None and not isinstance(value, _CONTAINERS):
            return alias, value
    return None, None


def _field_text(value: Any, name: str, limits: Limits) -> str:
    text = value if type(value) is str else _scalar_text(value, name)
    if text.isascii() and len(text) <= limits.max_field_bytes:  # the common case
        return text
    size = _byte_len(text, name)
    if size > limits.max_field_bytes:
        raise BadRecord(
            f"{name} is {size} bytes; the limit is {limits.max_field_bytes} "
            "(limits.max_field_bytes)"
        )
    return text


def _normalize_message(value: Any, limits: Limits) -> str:
    if value is None:
        return ""
    if type(value) is str:
        message = value
    elif isinstance(value, _CONTAINERS):
        message = _json_text(value, 2, "message", limits)
    else:
        message = _scalar_text(value, "message")
    size = _byte_len(message, "message")
    if size > limits.max_message_bytes:
        raise BadRecord(
            f"message is {size} bytes; the limit is {limits.max_message_bytes} "
            "(limits.max_message_bytes)"
        )
    return message


def _normalize_tags(value: Any, limits: Limits) -> list[str]:
    if isinstance(value, str):
        items: Any = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = value
    elif isinstance(value, Mapping):
        raise BadRecord(
            "tags must be a list of strings or a comma-separated string, got an object"
        )
    else:
        items = (value,)  # a lone number or boolean is one tag
    # A dict keeps first-seen order and deduplicates in one step.
    seen: dict[str, None] = {}
    for item in items:
        if item is None:
            continue
        if type(item) is str:
            text = item.strip()
        elif isinstance(item, _CONTAINERS):
            text = _json_text(item, 3, "a tag", limits)
        else:
            text = _scalar_text(item, "a tag").strip()
        if not text or text in seen:
            continue
        size = _byte_len(text, "a tag")
        if size > limits.max_field_bytes:
            raise BadRecord(
                f"tag {_show(text)} is {size} bytes; the limit is {limits.max_field_bytes} "
                "(limits.max_field_bytes)"
            )
        seen[text] = None
    if len(seen) > limits.max_tags:
        raise BadRecord(
            f"record has {len(seen)} tags; the limit is {limits.max_tags} (limits.max_tags)"
        )
    return list(seen)


def _put_metadata(
    metadata: dict[str, Any], key: str, value: Any, depth: int, limits: Limits
) -> None:
    """Store one value under a flattened key; ``depth`` is the depth ``value`` has if it is a
    container.  None is dropped; objects flatten with dots; lists become their JSON text."""
    cls = type(value)
    # The set test keeps the (slower) ABC isinstance check off the common scalar path.
    if cls is dict or (cls not in _SCALAR_TYPES and isinstance(value, Mapping)):
        if depth > limits.max_json_depth:
            raise _depth_error(f"metadata key {_show(key)}", depth, limits)
        for child_key, child in value.items():
            if child is not None:
                name = child_key if type(child_key) is str else _scalar_text(child_key, "a key")
                _put_metadata(metadata, f"{key}.{name}", child, depth + 1, limits)
        return
    # Fast path first: an ASCII key's size is its length, no encoding needed.
    if not (key.isascii() and len(key) <= limits.max_key_bytes):
        key_size = _byte_len(key, "a metadata key")
        if key_size > limits.max_key_bytes:
            raise BadRecord(
                f"metadata key {_show(key)} is {key_size} bytes; the limit is "
                f"{limits.max_key_bytes} (limits.max_key_bytes)"
            )
    if cls is str:
        if value.isascii() and len(value) <= limits.max_value_bytes:
            metadata[key] = value
            return
        text = value
    elif cls is bool:
        metadata[key] = value
        return
    elif cls is int or (isinstance(value, int) and not isinstance(value, bool)):
        # Stored columns and the wire carry 64-bit ints; wider ones are kept exactly, as text.
        if _INT64_MIN <= value <= _INT64_MAX:
            metadata[key] = int(value)
            return
        text = _scalar_text(value, f"metadata value of {_show(key)}")
    elif cls is float or isinstance(value, float):
        # NaN and infinities have no JSON form (orjson would write null); keep them as text.
        if math.isfinite(value):
            metadata[key] = float(value)
            return
        text = str(value)
    elif isinstance(value, (list, tuple)):
        text = _json_text(value, depth, f"metadata key {_show(key)}", limits)
    else:
        text = _scalar_text(value, f"metadata value of {_show(key)}")
    size = _byte_len(text, f"metadata value of {_show(key)}")
    if size > limits.max_value_bytes:
        raise BadRecord(
            f"metadata value of {_show(key)} is {size} bytes; the limit is "
            f"{limits.max_value_bytes} (limits.max_value_bytes)"
        )
    metadata[key] = text


def _flatten_top(
    metadata: dict[str, Any], mapping: Mapping[Any, Any], consumed: set[str], limits: Limits
) -> None:
    """Every top-level key not consumed by a field goes to metadata; a ``metadata`` object is
    merged in without a prefix.  Later keys win when two flatten to the same name."""
    for key, value in mapping.items():
        if value is None or key in consumed:
            continue
        name = key if type(key) is str else _scalar_text(key, "a key")
        if name == "metadata" and isinstance(value, Mapping):
            if limits.max_json_depth < 2:
                raise _depth_error("metadata", 2, limits)
            for child_key, child in value.items():
                if child is not None:
                    child_name = (
                        child_key if type(child_key) is str else _scalar_text(child_key, "a key")
                    )
                    _put_metadata(metadata, child_name, child, 3, limits)
        else:
            _put_metadata(metadata, name, value, 2, limits)


# --- public API ----------------------------------------------------------------------------------


def normalize_record(
    raw: Mapping[str, Any], *, now_ns: int, limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """A new dict with exactly ``FIELDS`` from one incoming record (see the module docstring).

    Raises ``BadRecord`` (and nothing else) when the record is not a mapping, breaks a limit, or
    is dated more than ``limits.max_future_ns`` after ``now_ns``.
    """
    if type(raw) is dict:
        shaped = raw if raw.keys() <= _SIMPLE_KEYS else _extras_to_metadata(raw)
        if shaped is not None:
            record = _normalize_simple(shaped, now_ns, limits)
            if record is not None:
                return record
    return _normalize_general(raw, now_ns, limits)


#: keys of the shape most senders use; records with only these keys may take the fast path
_SIMPLE_KEYS = frozenset(("timestamp", "level", "message", "source", "tags", "metadata", "thread_id",
                          "request_id", "user_id"))


#: top-level names the general path reads as something other than metadata
_RESERVED_KEYS = frozenset(_TS_ALIASES + _MESSAGE_ALIASES + _LEVEL_ALIASES + _SOURCE_ALIASES) - _SIMPLE_KEYS


def _extras_to_metadata(raw: dict[str, Any]) -> dict[str, Any] | None:
    """``raw`` with its other top-level fields moved under ``metadata``, in order — what the general
    path does with them — when they are all plain scalars (ECS documents, jsonline with top-level
    fields); None when any is not (an alias, a nested value, a name also in ``metadata``): then the
    general path decides."""
    shaped: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SIMPLE_KEYS:
            if key != "metadata":
                shaped[key] = value
            elif value is not None:
                if type(value) is not dict:
                    return None
                for child, child_value in value.items():
                    if child in metadata:
                        return None
                    metadata[child] = child_value
        elif key in _RESERVED_KEYS or type(key) is not str:
            return None
        elif value is not None:
            if key in metadata or type(value) not in _SCALAR_TYPES:
                return None
            metadata[key] = value
    shaped["metadata"] = metadata
    return shaped


#: raw level string -> normalized level, for the few spellings senders use (bounded)
_LEVEL_CACHE: dict[str, str] = {}


def _normalize_simple(raw: dict[str, Any], now_ns: int, limits: Limits) -> dict[str, Any] | None:
    """The same result as ``_normalize_general`` for the common shape — canonical keys, ASCII
    strings within the limits, a flat metadata object of scalars — without its general machinery
    (the coordinator runs this for every record, so the checks are inlined).  None means "not that
    shape": take the general path.  ``test_record.py`` checks the two paths agree on generated records."""
    max_field = limits.max_field_bytes
    get = raw.get
    message = get("message", "")
    if type(message) is not str or not message.isascii() or len(message) > limits.max_message_bytes:
        return None
    source = get("source", "")
    if type(source) is not str or not source.isascii() or len(source) > max_field:
        return None
    thread_id = get("thread_id")
    if thread_id is not None and (type(thread_id) is not str or not thread_id.isascii() or len(thread_id) > max_field):
        return None
    request_id = get("request_id")
    if request_id is not None and (type(request_id) is not str or not request_id.isascii()
                                   or len(request_id) > max_field):
        return None
    user_id = get("user_id")
    if user_id is not None and (type(user_id) is not str or not user_id.isascii() or len(user_id) > max_field):
        return None
    tags_value = get("tags")
    tags: list[str] = []
    if tags_value is not None:
        if type(tags_value) is not list:
            return None
        for tag in tags_value:
            if type(tag) is not str or not tag or not tag.isascii() or len(tag) > max_field or tag != tag.strip():
                return None
        tags = list(dict.fromkeys(tags_value))
        if len(tags) > limits.max_tags:
            return None
    metadata: dict[str, Any] = {}
    meta_value = get("metadata")
    if meta_value is not None:
        if type(meta_value) is not dict or len(meta_value) > limits.max_metadata_keys:
            return None
        max_key, max_value = limits.max_key_bytes, limits.max_value_bytes
        for key, value in meta_value.items():
            if type(key) is not str or not key.isascii() or len(key) > max_key:
                return None
            cls = type(value)
            if cls is str:
                if not (value.isascii() and len(value) <= max_value):
                    return None
            elif cls is int:
                if not _INT64_MIN <= value <= _INT64_MAX:
                    return None
            elif cls is float:
                if not math.isfinite(value):
                    return None
            elif cls is not bool:
                if value is None:
                    continue
                return None
            metadata[key] = value
    level_value = get("level")
    if level_value is None:
        if _NESTED_LEVEL_KEY in metadata:
            return None
        level = normalize_level(None)
    elif type(level_value) is not str:
        return None
    else:
        level = _LEVEL_CACHE.get(level_value)
        if level is None:
            level = normalize_level(level_value)
            if len(_LEVEL_CACHE) < 256:
                _LEVEL_CACHE[level_value] = level
    if not level.isascii() or len(level) > max_field:
        return None
    ts_value = get("timestamp")
    if ts_value is None:
        ts_ns = _record_time(None, metadata, now_ns, limits)
    elif type(ts_value) is not str:
        return None
    else:
        # RFC 3339 UTC "...Z" (most senders) straight to its fast parser, which answers only for
        # storable instants; anything else, or a future one, goes the general way (which words it)
        ts_ns = parse_utc_z(ts_value)
        if ts_ns is None or ts_ns - now_ns > limits.max_future_ns:
            ts_ns = _record_time(ts_value, metadata, now_ns, limits)
    return {
        "ts_ns": ts_ns,
        "level": level,
        "message": message,
        "source": source,
        "tags": tags,
        "metadata": metadata,
        "thread_id": thread_id or None,
        "request_id": request_id or None,
        "user_id": user_id or None,
    }


def _record_time(ts_value: Any, metadata: dict[str, Any], now_ns: int, limits: Limits) -> int:
    """The record's ns timestamp: parsed, or the ingest time with ``_ts_invalid`` (and the original
    text) in metadata when missing or unparsable; BadRecord when too far in the future."""
    ts_ns = None if ts_value is None else parse_timestamp_unbounded(ts_value)
    if ts_ns is not None and ts_ns < MIN_TS_NS:
        ts_ns = None  # before 1677: not storable; kept as the original text, like garbage
    if ts_ns is None:
        metadata[TS_INVALID_KEY] = True
        if ts_value is not None:
            original = _scalar_text(ts_value, "timestamp")
            metadata[TS_ORIGINAL_KEY] = _truncate_utf8(original, limits.max_value_bytes)
        return now_ns
    if ts_ns - now_ns > limits.max_future_ns:
        raise BadRecord(
            f"timestamp {format_timestamp(ts_ns)} is {_human_duration(ts_ns - now_ns)} in the "
            f"future; the limit is {_human_duration(limits.max_future_ns)} "
            "(limits.max_future_ns); fix the sender's clock"
        )
    return ts_ns


def _normalize_general(raw: Any, now_ns: int, limits: Limits) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise BadRecord(f"record must be a JSON object, got {_type_name(raw)}")

    ts_key, ts_value = _pick(raw, _TS_ALIASES)
    level_key, level_value = _pick(raw, _LEVEL_ALIASES)
    source_key, source_value = _pick(raw, _SOURCE_ALIASES)
    # A message may be an object or list: it is kept whole, as its JSON text.
    message_key, message_value = None, None
    for alias in _MESSAGE_ALIASES:
        message_value = raw.get(alias)
        if message_value is not None:
            message_key = alias
            break

    consumed: set[str] = {"tags"}
    for key in (ts_key, level_key, source_key, message_key):
        if key is not None:
            consumed.add(key)
    ids: dict[str, str | None] = {}
    for name in _ID_FIELDS:
        value = raw.get(name)
        if value is None or isinstance(value, _CONTAINERS):
            ids[name] = None  # an object or list under an id name is left for metadata
            continue
        consumed.add(name)
        text = _field_text(value, name, limits)
        ids[name] = text or None  # an empty id is no id

    message = _normalize_message(message_value, limits)
    tags_value = raw.get("tags")
    tags = [] if tags_value is None else _normalize_tags(tags_value, limits)
    source = "" if source_value is None else _field_text(source_value, "source", limits)

    metadata: dict[str, Any] = {}
    _flatten_top(metadata, raw, consumed, limits)

    if level_value is None:
        nested_level = metadata.get(_NESTED_LEVEL_KEY)
        if nested_level is not None:
            del metadata[_NESTED_LEVEL_KEY]
            level_value = nested_level
    level = _field_text(normalize_level(level_value), "level", limits)

    if len(metadata) > limits.max_metadata_keys:
        raise BadRecord(
            f"record has {len(metadata)} metadata keys; the limit is "
            f"{limits.max_metadata_keys} (limits.max_metadata_keys)"
        )

    ts_ns = _record_time(ts_value, metadata, now_ns, limits)

    return {
        "ts_ns": ts_ns,
        "level": level,
        "message": message,
        "source": source,
        "tags": tags,
        "metadata": metadata,
        "thread_id": ids["thread_id"],
        "request_id": ids["request_id"],
        "user_id": ids["user_id"],
    }


def to_public(record: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON shape users see (DESIGN §6) of a stored record (FIELDS plus an int ``id``).
    ``tags`` and ``metadata`` are copies, so a caller editing the result cannot alter a cache."""
    return {
        "id": record.get("id"),
        "timestamp": format_timestamp(record["ts_ns"]),
        "level": record["level"],
        "message": record["message"],
        "source": record["source"],
        "tags": list(record["tags"]),
        "metadata": dict(record["metadata"]),
        "thread_id": record.get("thread_id"),
        "request_id": record.get("request_id"),
        "user_id": record.get("user_id"),
    }
