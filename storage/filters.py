"""The seed engine's filter dict (DESIGN §7): ``filters_to_node`` turns it into a query tree.

``FILTER_KEYS`` lists the accepted keys; every wrong key or value is a ``BadQuery`` naming the key.
The tree is in ``storage.query``; ``filters['query']`` is parsed with ``storage.querytext``.

Pure Python and no I/O: the coordinator imports this without LMDB.
"""

from __future__ import annotations

from typing import Any, Mapping

from storage.errors import BadQuery
from storage.levels import LEVELS, SEVERITY
from storage.query import (
    Field,
    MinSeverity,
    Node,
    Or,
    Phrase,
    TimeRange,
    Token,
    _normalize_level,
    _show,
    and_nodes,
    simplify,
)
from storage.querytext import _quote_string, parse_query
from storage.timefmt import MAX_TS_NS, parse_time_arg, parse_timestamp
from storage.tokens import tokenize

FILTER_KEYS: tuple[str, ...] = (
    "start_time",
    "end_time",
    "level",
    "source",
    "keyword",
    "keywords",
    "tags",
    "min_severity",
    "request_id",
    "user_id",
    "thread_id",
    "query",
)


def _filter_time(key: str, value: Any, now_ns: int) -> int:
    if isinstance(value, str):  # absolute or relative ('-15m', 'now')
        try:
            return parse_time_arg(value, now_ns=now_ns)
        except BadQuery as err:
            raise BadQuery(f"filters[{key!r}]: {err.message}", key=key) from None
    ts_ns = parse_timestamp(value)  # datetime, date, epoch number
    if ts_ns is None:
        raise BadQuery(
            f"filters[{key!r}] = {_show(value)} is not a time; give a datetime, an epoch number "
            "(s/ms/µs/ns) or a string such as 2024-01-01T00:00:00Z or -15m",
            key=key,
        )
    return ts_ns


def _filter_strings(key: str, value: Any) -> list[str]:
    """A str or a list/tuple/set of str."""
    items = [value] if isinstance(value, str) else value
    if isinstance(items, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in items):
        return sorted(items) if isinstance(items, (set, frozenset)) else list(items)
    raise BadQuery(
        f"filters[{key!r}] = {_show(value)} is not valid; give a string or a list of strings",
        key=key,
    )


def _keyword_node(key: str, text: Any) -> Node:
    if not isinstance(text, str):
        raise BadQuery(f"filters[{key!r}] = {_show(text)} is not valid; give a string", key=key)
    tokens = tokenize(text)
    if not tokens:
        raise BadQuery(
            f"filters[{key!r}] = {_show(text)} has no letters or digits to search for; use "
            f"filters['query'] = {_show('message:' + _quote_string('*' + text + '*'))} "
            "for a substring",
            key=key,
        )
    return Token(tokens[0]) if len(tokens) == 1 else Phrase(tuple(tokens))


def _filter_score(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        level = _normalize_level(value)
        if level in SEVERITY:
            return SEVERITY[level]
    raise BadQuery(
        f"filters['min_severity'] = {_show(value)} is not valid; give a level "
        f"({', '.join(LEVELS)}) or a severity score (0-50)",
        key="min_severity",
    )


def filters_to_node(filters: Mapping[str, Any], *, now_ns: int) -> Node:
    """The seed engine's filter dict as a tree (simplified).

    ``start_time`` and ``end_time`` are both inclusive (datetime, epoch number or string);
    ``level`` / ``source`` take a string or a list (any of); ``keyword`` is all of its tokens as
    a phrase; ``keywords`` a list of such (all must match); ``tags`` a list (the record has any of
    them); ``min_severity`` a level name or score; ``request_id`` / ``user_id`` / ``thread_id``
    strings; ``query`` a query string without pipes, ANDed.  A key whose value is None is ignored;
    an empty list is taken literally ("any of nothing" matches nothing, "all of nothing" everything).
    """
    if not isinstance(filters, Mapping):
        raise BadQuery(f"filters must be a dict, not {type(filters).__name__}")
    unknown = sorted(str(key) for key in filters if key not in FILTER_KEYS)
    if unknown:
        raise BadQuery(
            f"unknown filter key(s) {', '.join(map(repr, unknown))}; the accepted keys are "
            f"{', '.join(FILTER_KEYS)}"
        )
    parts: list[Node] = []
    from_ns: int | None = None
    to_ns: int | None = None
    for key in FILTER_KEYS:
        value = filters.get(key)
        if value is None:
            continue
        if key == "start_time":
            from_ns = _filter_time(key, value, now_ns)
        elif key == "end_time":
            end_ns = _filter_time(key, value, now_ns)
            # inclusive end -> exclusive bound; past the largest timestamp means no bound
            to_ns = end_ns + 1 if end_ns < MAX_TS_NS else None
        elif key == "level":
            levels = _filter_strings(key, value)
            if not all(level.strip() for level in levels):
                raise BadQuery(
                    f"filters['level'] = {_show(value)} has an empty level; give names such as "
                    "'ERROR' or ['WARN', 'ERROR']",
                    key=key,
                )
            parts.append(Or(tuple(Field("level", _normalize_level(v)) for v in levels)))
        elif key == "source":
            parts.append(Or(tuple(Field("source", v) for v in _filter_strings(key, value))))
        elif key == "keyword":
            parts.append(_keyword_node(key, value))
        elif key == "keywords":
            if isinstance(value, str):  # a lone string would otherwise be read character by character
                raise BadQuery(
                    f"filters['keywords'] = {_show(value)} is not valid; give a list of strings "
                    "(or use 'keyword' for one)",
                    key=key,
                )
            parts.extend(_keyword_node(key, v) for v in _filter_strings(key, value))
        elif key == "tags":
            parts.append(Or(tuple(Field("tag", v) for v in _filter_strings(key, value))))
        elif key == "min_severity":
            parts.append(MinSeverity(_filter_score(value)))
        elif key in ("request_id", "user_id", "thread_id"):
            if not isinstance(value, str):
                raise BadQuery(
                    f"filters[{key!r}] = {_show(value)} is not valid; give a string", key=key
                )
            parts.append(Field(key, value))
        else:  # query
            if not isinstance(value, str):
                raise BadQuery(
                    f"filters['query'] = {_show(value)} is not valid; give a query string", key=key
                )
            parsed = parse_query(value, now_ns=now_ns)
            if parsed.pipes:
                raise BadQuery(
                    f"filters['query'] = {_show(value)} has pipes ('|'); a filter cannot hold "
                    "pipes; pass only the filter part and use the aggregation API for the rest",
                    key=key,
                )
            parts.append(parsed.filter)
    if from_ns is not None or to_ns is not None:
        parts.insert(0, TimeRange(from_ns, to_ns))
    return simplify(and_nodes(*parts))
