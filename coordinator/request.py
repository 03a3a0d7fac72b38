"""Turning request parameters (CLI flags, HTTP query/form fields, RPC args) into query plans.

Pure: one place parses ``q``, ``from``/``to``/``since``, the filter flags, paging and aggregation
parameters, for every transport, so the CLI, HTTP and the Python API cannot disagree.  Every error is
a ``BadQuery`` naming the parameter, the value and what is accepted.

Parameters (all optional; values may be strings as HTTP delivers them):
    q               query string (DESIGN §7), may carry pipes
    from, to        absolute timestamp or relative "-15m"; from inclusive, to exclusive
    since           duration: from = now - since
    level, source, tag, keyword, min_severity      filter flags (ANDed with q)
    limit (100), offset, page + page_size, cursor, sort ("desc")
    group_by, histogram, top ("tags:5"), interval ("60s")
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Mapping

from storage import query as q
from storage import querytext
from storage.aggregate import AggSpec
from storage.errors import BadQuery
from storage.levels import LEVELS, SEVERITY, normalize_level
from storage.timefmt import parse_duration, parse_time_arg
from storage.tokens import tokenize

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class SearchRequest:
    node: q.Node
    desc: bool
    offset: int
    limit: int
    after: tuple[int, int] | None


@dataclass(frozen=True)
class AggRequest:
    node: q.Node
    spec: AggSpec


def _text(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        raise BadQuery(f"parameter {name} was given {len(value)} times; give it once")
    return str(value)


def _int(params: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
        if isinstance(value, float) and value != number:
            raise ValueError
    except (TypeError, ValueError):
        raise BadQuery(f"{name} {value!r} is not an integer; give a whole number from {lo} to {hi}") from None
    if not lo <= number <= hi:
        raise BadQuery(f"{name} is {number}; it must be from {lo} to {hi}")
    return number


def keyword_node(text: str) -> q.Node:
    tokens = tokenize(text)
    if not tokens:
        raise BadQuery(f"keyword {text!r} has no letters or digits to search for; use q='message:*{text}*' "
                       "for a substring")
    return q.Token(tokens[0]) if len(tokens) == 1 else q.Phrase(tuple(tokens))


def _level(text: str, name: str) -> str:
    level = normalize_level(text)
    if level not in SEVERITY:
        raise BadQuery(f"{name} {text!r} is not a level; use one of {', '.join(LEVELS)}")
    return level


def parse_filter(params: Mapping[str, Any], now_ns: int) -> tuple[q.Node, tuple[Any, ...]]:
    """The filter tree of a request and the pipes of its query string."""
    nodes: list[q.Node] = []
    pipes: tuple[Any, ...] = ()
    text = _text(params, "q")
    if text is not None:
        parsed = querytext.parse_query(text, now_ns=now_ns)
        nodes.append(parsed.filter)
        pipes = tuple(parsed.pipes)
    lo = hi = None
    since = _text(params, "since")
    if since is not None:
        lo = now_ns - parse_duration(since.lstrip("-"))
    start = _text(params, "from")
    if start is not None:
        value = parse_time_arg(start, now_ns=now_ns)
        lo = value if lo is None else max(lo, value)
    end = _text(params, "to")
    if end is not None:
        hi = parse_time_arg(end, now_ns=now_ns)
    if lo is not None or hi is not None:
        nodes.append(q.TimeRange(lo, hi))
    for name, make in (("source", lambda v: q.Field("source", v)), ("tag", lambda v: q.Field("tag", v)),
                       ("keyword", keyword_node),
                       ("level", lambda v: q.Field("level", _level(v, "level"))),
                       ("min_severity", lambda v: q.MinSeverity(SEVERITY[_level(v, "min_severity")]))):
        value = _text(params, name)
        if value is not None:
            nodes.append(make(value))
    return q.and_nodes(*nodes), pipes


def encode_cursor(ts_ns: int, record_id: int) -> str:
    return base64.urlsafe_b64encode(f"{ts_ns}:{record_id}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        ts_text, id_text = raw.split(":")
        return int(ts_text), int(id_text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadQuery(f"cursor {text!r:.60} is not a cursor this daemon issued; pass the next_cursor value of "
                       "the previous page unchanged") from None


def parse_search(params: Mapping[str, Any], now_ns: int) -> SearchRequest:
    node, pipes = parse_filter(params, now_ns)
    sort = _text(params, "sort")
    limit_default = DEFAULT_LIMIT
    for pipe in pipes:
        if isinstance(pipe, q.SortPipe) and sort is None:
            sort = "desc" if pipe.desc else "asc"
        elif isinstance(pipe, q.LimitPipe):
            limit_default = pipe.n
    sort = sort or "desc"
    if sort not in ("asc", "desc"):
        raise BadQuery(f"sort {sort!r} must be asc or desc")
    if params.get("page") not in (None, "") or params.get("page_size") not in (None, ""):
        page = _int(params, "page", 1, 1, 1_000_000)
        size = _int(params, "page_size", limit_default, 1, MAX_LIMIT)
        offset, limit = (page - 1) * size, size
    else:
        offset = _int(params, "offset", 0, 0, 100_000)
        limit = _int(params, "limit", limit_default, 0, MAX_LIMIT)
    cursor = _text(params, "cursor")
    after = decode_cursor(cursor) if cursor is not None else None
    if after is not None and offset:
        raise BadQuery("give either cursor or offset/page, not both: the cursor already marks where the page starts")
    return SearchRequest(node, sort == "desc", offset, limit, after)


def _parse_top(text: str) -> tuple[tuple[str, int], ...]:
    out = []
    for part in text.split(","):
        name, sep, n_text = part.strip().replace("=", ":").rpartition(":")
        if not sep or not name:
            name, n_text = part.strip(), "10"
        try:
            n = int(n_text)
        except ValueError:
            raise BadQuery(f"top {part!r} must be FIELD:N, e.g. tags:5") from None
        out.append((name, n))
    return tuple(out)


def parse_aggregate(params: Mapping[str, Any], now_ns: int) -> AggRequest:
    node, pipes = parse_filter(params, now_ns)
    group_by = _text(params, "group_by")
    histogram = _text(params, "histogram")
    top_text = _text(params, "top")
    top = _parse_top(top_text) if top_text is not None else ()
    interval_text = _text(params, "interval")
    interval_ns = parse_duration(interval_text) if interval_text is not None else None
    if histogram in ("_time", "timestamp", "time"):
        histogram = None
        interval_ns = interval_ns or 60 * 10**9
    for pipe in pipes:
        if isinstance(pipe, q.StatsPipe) and group_by is None and pipe.by:
            if len(pipe.by) > 1:
                raise BadQuery(f"stats by ({', '.join(pipe.by)}): grouping by more than one field is not supported "
                               "yet; group by one field")
            group_by = pipe.by[0]
        elif isinstance(pipe, q.TopPipe) and not top:
            # the parser calls the field "tag" (as in tag:x); results name it "tags" as --top does
            top = (("tags" if pipe.field == "tag" else pipe.field, pipe.n),)
        elif isinstance(pipe, q.HistogramPipe) and interval_ns is None:
            interval_ns = pipe.interval_ns
    return AggRequest(node, AggSpec(group_by=group_by, histogram=histogram, top=top, interval_ns=interval_ns))
