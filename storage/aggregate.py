"""Aggregations as mergeable partial states: update on a shard, merge at the coordinator, finalize once.

A partial state is a plain dict that travels over the wire::

    {"total": int,
     "group_by": {value: count},          # when spec.group_by
     "histogram": {value: count},         # when spec.histogram (numeric values bucketed by width)
     "top": {field: {value: count}},      # full per-shard counts, so the merged top-N is exact ...
     "top_truncated": bool,               # ... unless a shard had more than TOP_SHARD_LIMIT values
     "time_histogram": [[bucket_start_ns, count], ...]}   # when spec.interval_ns

Counts merge by sum.  ``finalize`` sorts top-N (count desc, value asc) and the time histogram
(bucket ascending; only non-empty buckets; buckets aligned to multiples of the interval since the epoch).
Group values are strings: metadata numbers and booleans are rendered as a user would type them.
A record lacking the field does not count toward group_by / histogram / top (like a terms
aggregation); ``total`` counts every matching record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from bisect import bisect_left
from typing import Any, Iterable, Mapping, Sequence

from storage.errors import BadQuery, BadRequest
from storage.header import MINUTE_NS
from storage.layout import meta_value_text

#: per shard, top-N sends at most this many values per field; beyond it the merged top-N is approximate
TOP_SHARD_LIMIT = 10_000
#: a histogram or group-by over a field with more distinct values than this is refused, not OOMed
MAX_GROUPS = 100_000

_DIRECT_FIELDS = ("level", "source", "request_id", "user_id", "thread_id")


def resolve_field(name: str) -> tuple[str, str]:
    """A user's field name -> (kind, key): kind is 'level', 'source', 'tags', 'request_id',
    'user_id', 'thread_id' or 'meta' (key = the metadata key)."""
    if not isinstance(name, str) or not name:
        raise BadQuery(f"field name {name!r} is empty; name a field such as level, source, tags or a metadata key")
    if name in _DIRECT_FIELDS:
        return name, name
    if name in ("tags", "tag"):
        return "tags", "tags"
    if name.startswith("meta."):
        key = name[5:]
        if not key:
            raise BadQuery(f"field name {name!r} has no metadata key after 'meta.'; e.g. meta.host")
        return "meta", key
    if name in ("timestamp", "_time", "message", "id", "ts_ns"):
        raise BadQuery(f"cannot group by {name!r}; use --interval for time buckets, or a field such as "
                       "level, source, tags or a metadata key")
    return "meta", name


def record_values(record: Mapping[str, Any], kind: str, key: str) -> list[str]:
    if kind == "tags":
        return record["tags"]
    if kind == "meta":
        value = record["metadata"].get(key)
        return [] if value is None else [meta_value_text(value)]
    value = record[kind]
    return [] if value is None else [value]


def _parse_histogram(text: str) -> tuple[str, float | None]:
    name, sep, width_text = text.rpartition(":")
    if not sep:
        return text, None
    try:
        width = float(width_text)
    except ValueError:
        return text, None  # a metadata key containing ':' — no width
    if not width > 0:
        raise BadQuery(f"histogram bucket width {width_text!r} must be > 0, e.g. duration_ms:100")
    return name, width


@dataclass(frozen=True)
class AggSpec:
    """What to aggregate.  ``histogram`` is ``field`` or ``field:width`` (numeric buckets)."""

    group_by: str | None = None
    histogram: str | None = None
    top: tuple[tuple[str, int], ...] = ()
    interval_ns: int | None = None
    _resolved: dict[str, tuple[str, str]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.group_by is not None:
            self._resolved["group_by"] = resolve_field(self.group_by)
        if self.histogram is not None:
            name, _ = _parse_histogram(self.histogram)
            self._resolved["histogram"] = resolve_field(name)
        for name, n in self.top:
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10_000:
                raise BadQuery(f"top {name}={n!r}: N must be an integer from 1 to 10000, e.g. tags=5")
            self._resolved["top:" + name] = resolve_field(name)
        if self.interval_ns is not None and (not isinstance(self.interval_ns, int) or self.interval_ns <= 0):
            raise BadQuery(f"interval {self.interval_ns!r} must be a positive duration, e.g. 60s or 1m")

    @property
    def histogram_width(self) -> float | None:
        return None if self.histogram is None else _parse_histogram(self.histogram)[1]

    def resolved(self, part: str) -> tuple[str, str]:
        return self._resolved[part]

    @property
    def header_only(self) -> bool:
        """True when header counts answer everything but the time histogram."""
        kinds = {kind for kind, _ in self._resolved.values()}
        return kinds <= {"level", "source", "tags"} and self.histogram is None

    def to_wire(self) -> dict[str, Any]:
        return {"group_by": self.group_by, "histogram": self.histogram,
                "top": [[name, n] for name, n in self.top], "interval_ns": self.interval_ns}

    @staticmethod
    def from_wire(obj: Any) -> "AggSpec":
        if not isinstance(obj, dict):
            raise BadRequest(f"aggregation spec must be a map, got {type(obj).__name__}")
        try:
            top = tuple((str(name), n) for name, n in obj.get("top") or ())
            return AggSpec(group_by=obj.get("group_by"), histogram=obj.get("histogram"),
                           top=top, interval_ns=obj.get("interval_ns"))
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"aggregation spec has the wrong shape: {exc}") from exc


def new_partial(spec: AggSpec) -> dict[str, Any]:
    partial: dict[str, Any] = {"total": 0}
    if spec.group_by is not None:
        partial["group_by"] = {}
    if spec.histogram is not None:
        partial["histogram"] = {}
    if spec.top:
        partial["top"] = {name: {} for name, _ in spec.top}
        partial["top_truncated"] = False
    if spec.interval_ns is not None:
        partial["time_histogram"] = {}
    return partial


def _bump(counts: dict[str, int], values: Iterable[str], by: int = 1) -> None:
    for value in values:
        counts[value] = counts.get(value, 0) + by


def _bucket(value: str, width: float) -> str | None:
    try:
        number = float(value)
    except ValueError:
        return None
    bucket = (number // width) * width
    return str(int(bucket)) if bucket == int(bucket) else repr(bucket)


class Aggregator:
    """Accumulates one partial state.  Pure: fed records or header counts, never touches storage."""

    def __init__(self, spec: AggSpec) -> None:
        self.spec = spec
        self.partial = new_partial(spec)
        self._group = spec.resolved("group_by") if spec.group_by is not None else None
        self._hist = spec.resolved("histogram") if spec.histogram is not None else None
        self._width = spec.histogram_width
        self._tops = [(name, spec.resolved("top:" + name)) for name, _ in spec.top]

    def add_record(self, record: Mapping[str, Any]) -> None:
        partial = self.partial
        partial["total"] += 1
        if self._group is not None:
            _bump(partial["group_by"], record_values(record, *self._group))
        if self._hist is not None:
            values = record_values(record, *self._hist)
            if self._width is not None:
                values = [b for b in (_bucket(v, self._width) for v in values) if b is not None]
            _bump(partial["histogram"], values)
        for name, resolved in self._tops:
            _bump(partial["top"][name], record_values(record, *resolved))
        if self.spec.interval_ns is not None:
            interval = self.spec.interval_ns
            bucket = record["ts_ns"] // interval * interval
            th = partial["time_histogram"]
            th[bucket] = th.get(bucket, 0) + 1

    @property
    def time_only(self) -> bool:
        """Only a time histogram (and the total) is asked for: row ranges answer it."""
        return self._group is None and self._hist is None and not self._tops

    def add_time_buckets(self, bits: int, timestamps: Sequence[int]) -> None:
        """Count the rows set in ``bits`` per time bucket.  ``timestamps`` are the block's, ascending,
        so each bucket is a contiguous row range: one bisect and one popcount per bucket."""
        interval = self.spec.interval_ns
        if interval is None:
            raise ValueError("add_time_buckets needs spec.interval_ns")
        th = self.partial["time_histogram"]
        self.partial["total"] += bits.bit_count()
        n = len(timestamps)
        lo = 0
        while lo < n and bits >> lo:
            bucket = timestamps[lo] // interval * interval
            hi = bisect_left(timestamps, bucket + interval, lo)
            count = (bits & (((1 << hi) - 1) ^ ((1 << lo) - 1))).bit_count()
            if count:
                th[bucket] = th.get(bucket, 0) + count
            lo = hi

    def add_minute_counts(self, counts: Mapping[int, int], *, count_total: bool = True) -> None:
        """Matches per minute start (ns), from a block header's minute counts; only for intervals that
        are whole minutes (every minute then lies in exactly one bucket)."""
        interval = self.spec.interval_ns
        if interval is None or interval % MINUTE_NS:
            raise ValueError(f"minute counts cannot answer an interval of {interval} ns")
        th = self.partial["time_histogram"]
        total = 0
        for minute_ns, n in counts.items():
            bucket = minute_ns // interval * interval
            th[bucket] = th.get(bucket, 0) + n
            total += n
        if count_total:
            self.partial["total"] += total

    def add_header_counts(self, count: int, header_counts: Mapping[str, Mapping[str, int]],
                          timestamps: Sequence[int] | None, minutes: Mapping[int, int] | None = None) -> None:
        """A whole block matched: use its header counts (only valid when ``spec.header_only``); the
        time histogram from ``minutes`` (``BlockHeader.minute_counts``) or else ``timestamps``."""
        partial = self.partial
        partial["total"] += count
        if self._group is not None:
            counts = partial["group_by"]
            for value, n in header_counts[self._group[0]].items():
                counts[value] = counts.get(value, 0) + n
        for name, (kind, _) in self._tops:
            counts = partial["top"][name]
            for value, n in header_counts[kind].items():
                counts[value] = counts.get(value, 0) + n
        if self.spec.interval_ns is not None and minutes is not None:
            self.add_minute_counts(minutes, count_total=False)
        elif self.spec.interval_ns is not None:
            if timestamps is None:
                raise ValueError("time histogram needs the block's timestamps")
            total = partial["total"]
            self.add_time_buckets((1 << count) - 1, timestamps)
            partial["total"] = total  # already counted above

    def check_size(self) -> None:
        for part in ("group_by", "histogram"):
            if part in self.partial and len(self.partial[part]) > MAX_GROUPS:
                raise BadQuery(f"{part} over {getattr(self.spec, part)!r} has more than {MAX_GROUPS} distinct "
                               "values; narrow the query or use top N instead")


def to_wire(partial: Mapping[str, Any]) -> dict[str, Any]:
    """Make a partial msgpack-safe (string map keys) and cap top-N maps at TOP_SHARD_LIMIT."""
    out = dict(partial)
    if "time_histogram" in out:
        out["time_histogram"] = sorted([b, c] for b, c in partial["time_histogram"].items())
    if "top" in out:
        top = {}
        truncated = bool(partial.get("top_truncated"))
        for name, counts in partial["top"].items():
            if len(counts) > TOP_SHARD_LIMIT:
                truncated = True
                kept = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SHARD_LIMIT]
                counts = dict(kept)
            top[name] = counts
        out["top"] = top
        out["top_truncated"] = truncated
    return out


def from_wire(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("total"), int):
        raise BadRequest(f"aggregation partial has the wrong shape: {obj!r:.200}")
    out = dict(obj)
    if "time_histogram" in out:
        try:
            out["time_histogram"] = {int(b): int(c) for b, c in obj["time_histogram"]}
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"time_histogram has the wrong shape: {exc}") from exc
    return out


def merge(into: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """Sum ``other`` into ``into`` (both in the in-memory form, see from_wire)."""
    into["total"] += other["total"]
    for part in ("group_by", "histogram", "time_histogram"):
        if part in other:
            counts = into.setdefault(part, {})
            for key, n in other[part].items():
                counts[key] = counts.get(key, 0) + n
    if "top" in other:
        top = into.setdefault("top", {})
        for name, counts in other["top"].items():
            target = top.setdefault(name, {})
            for key, n in counts.items():
                target[key] = target.get(key, 0) + n
        into["top_truncated"] = bool(into.get("top_truncated")) or bool(other.get("top_truncated"))
    return into


def finalize(partial: Mapping[str, Any], spec: AggSpec) -> dict[str, Any]:
    """The answer users see (timestamps still as ns; the edge renders them)."""
    result: dict[str, Any] = {"total": partial["total"]}
    if spec.group_by is not None:
        result["group_by"] = dict(sorted(partial.get("group_by", {}).items(), key=lambda kv: (-kv[1], kv[0])))
    if spec.histogram is not None:
        result["histogram"] = dict(sorted(partial.get("histogram", {}).items(), key=lambda kv: (-kv[1], kv[0])))
    if spec.top:
        top = {}
        for name, n in spec.top:
            counts = partial.get("top", {}).get(name, {})
            top[name] = [[v, c] for v, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
        result["top"] = top
        if partial.get("top_truncated"):
            result["top_approximate"] = True
    if spec.interval_ns is not None:
        result["time_histogram"] = [[b, c] for b, c in sorted(partial.get("time_histogram", {}).items()) if c]
    return result
