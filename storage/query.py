"""The query model (DESIGN §7): parse once in the coordinator, ship the tree, evaluate.

This module owns:

- the filter tree (``Node``): small frozen, hashable dataclasses, so a parsed query can be cached,
  compared and used as a dict key;
- the pipes (``StatsPipe``, ``TopPipe``, ``HistogramPipe``, ``SortPipe``, ``LimitPipe``) and ``Query``;
- ``and_nodes`` / ``simplify``: building a tree and its canonical form, with
  ``matches(simplify(n), r) == matches(n, r)``;
- ``matches``: the plain, obviously-correct evaluator of one record.  It is the oracle the indexed
  engine is tested against, so it favours clarity over speed;
- ``time_bounds``: the time window a tree can match.

The other forms of a query live in their own modules, which import from this one (never the
reverse): ``storage.querytext`` (the query language: ``parse_query`` and ``format_query``),
``storage.querywire`` (``to_wire`` / ``from_wire``, msgpack-friendly nested lists) and
``storage.filters`` (``filters_to_node``: the seed engine's filter dict).

Pure Python and no I/O: the coordinator imports this without LMDB.
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Union

from storage.layout import meta_value_text
from storage.levels import SEVERITY, normalize_level, severity
from storage.tokens import tokenize

#: Nesting of parentheses / NOT / '-' in a query, and of and/or/not in a wire tree.  The parser,
#: the evaluator and the wire decoder recurse, and Python's stack is ~1000 frames.
MAX_DEPTH = 100
#: Counts in pipes (``top N``, ``limit N``) must fit the int64 that msgpack carries.
MAX_PIPE_COUNT = 2**63 - 1


# --- the filter tree -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatchAll:
    """Every record.  The empty query and ``*``."""


@dataclass(frozen=True, slots=True)
class And:
    """All children match.  ``And(())`` matches every record."""

    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """Any child matches.  ``Or(())`` matches no record."""

    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


@dataclass(frozen=True, slots=True)
class Token:
    """The message has this token; ``text`` is one lower-cased token (``tokenize(text) == [text]``)."""

    text: str


@dataclass(frozen=True, slots=True)
class Phrase:
    """The message has these tokens consecutively."""

    tokens: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Prefix:
    """Some message token starts with ``prefix`` (itself one lower-cased token)."""

    prefix: str


@dataclass(frozen=True, slots=True)
class Field:
    """A structured field equals ``value``.

    ``name`` is ``level``, ``source``, ``tag`` (the record's tags contain ``value``), ``request_id``,
    ``user_id``, ``thread_id`` or ``meta.<key>`` (the metadata value rendered as text by
    ``storage.layout.meta_value_text`` equals ``value``; case-sensitive).  A ``level`` value is
    normalized (``normalize_level``)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class MinSeverity:
    """``severity(record level) >= score``."""

    score: int


@dataclass(frozen=True, slots=True)
class TimeRange:
    """``from_ns <= ts_ns < to_ns``; None is unbounded on that side."""

    from_ns: int | None
    to_ns: int | None


@dataclass(frozen=True, slots=True)
class Substring:
    """``text`` occurs in the message, case-insensitively (scans)."""

    text: str


@dataclass(frozen=True, slots=True)
class Regex:
    """``re.search(pattern, message)`` (case-sensitive unless the pattern says ``(?i)``; scans)."""

    pattern: str


Node = Union[
    MatchAll, And, Or, Not, Token, Phrase, Prefix, Field, MinSeverity, TimeRange, Substring, Regex
]


# --- pipes and the whole query -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatsPipe:
    """``stats count() by (f1, f2)``: counts per combination of field values."""

    by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TopPipe:
    """``top N field``: the N most frequent values of a field."""

    n: int
    field: str


@dataclass(frozen=True, slots=True)
class HistogramPipe:
    """``histogram 1m``: counts per time bucket, buckets aligned to multiples of the interval."""

    interval_ns: int


@dataclass(frozen=True, slots=True)
class SortPipe:
    """``sort by _time asc|desc``."""

    desc: bool


@dataclass(frozen=True, slots=True)
class LimitPipe:
    """``limit N``."""

    n: int


Pipe = Union[StatsPipe, TopPipe, HistogramPipe, SortPipe, LimitPipe]


@dataclass(frozen=True, slots=True)
class Query:
    filter: Node
    pipes: tuple[Pipe, ...] = ()


# --- names and small helpers ---------------------------------------------------------------------

#: Field names that are record columns; everything else before a ':' is a metadata key.
RECORD_FIELDS: tuple[str, ...] = ("level", "source", "tag", "request_id", "user_id", "thread_id")

# Severity scores in order; `level:>WARN` is the next one up.
_SCORES: tuple[int, ...] = tuple(sorted(set(SEVERITY.values())))

_SHOW = reprlib.Repr()
_SHOW.maxstring = 60
_SHOW.maxother = 60
_SHOW.maxlist = 6
_SHOW.maxtuple = 6
_SHOW.maxdict = 6
_SHOW.maxlevel = 3


def _show(value: Any) -> str:
    """A bounded repr for error messages, so a huge value cannot flood a log line."""
    return _SHOW.repr(value)


def _normalize_level(text: str) -> str:
    # normalize_level calls int() after str.isdigit(), which is also true for '²'; such a level
    # is kept upper-cased like any other unknown level instead of crashing the parser.
    try:
        return normalize_level(text)
    except ValueError:
        return text.strip().upper()


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` does not compile, or None.  re raises more than re.error on hostile input."""
    try:
        _compiled(pattern)
    except re.error as err:
        return str(err)
    except (OverflowError, RecursionError, ValueError) as err:  # e.g. a{99999999999}
        return f"{type(err).__name__}: {err}"
    return None


# --- building and simplifying --------------------------------------------------------------------


def and_nodes(*nodes: Node) -> Node:
    """AND of ``nodes``, flattening top-level Ands and dropping MatchAll."""
    children: list[Node] = []
    for node in nodes:
        if isinstance(node, MatchAll):
            continue
        if isinstance(node, And):
            children.extend(child for child in node.children if not isinstance(child, MatchAll))
        else:
            children.append(node)
    if not children:
        return MatchAll()
    return children[0] if len(children) == 1 else And(tuple(children))


_NOTHING = Not(MatchAll())


def simplify(node: Node) -> Node:
    """The canonical form: same matches, fewer nodes.

    Flattens nested And/Or, drops MatchAll under And, collapses an Or holding MatchAll, unwraps
    one-child And/Or and double negation, turns a one-token Phrase into a Token, and maps
    always-true leaves (empty phrase or substring, unbounded time) to MatchAll and never-true ones
    (empty time range, severity above FATAL) to ``Not(MatchAll())``.  A MinSeverity score is
    raised to the next level score, which matches the same records (every level scores one of
    them).  Idempotent."""
    if isinstance(node, And):
        children: list[Node] = []
        for child in map(simplify, node.children):
            if isinstance(child, And):
                children.extend(child.children)
            elif not isinstance(child, MatchAll):
                children.append(child)
        if not children:
            return MatchAll()
        return children[0] if len(children) == 1 else And(tuple(children))
    if isinstance(node, Or):
        children = []
        for child in map(simplify, node.children):
            if isinstance(child, MatchAll):
                return MatchAll()
            if isinstance(child, Or):
                children.extend(child.children)
            else:
                children.append(child)
        if not children:
            return _NOTHING
        return children[0] if len(children) == 1 else Or(tuple(children))
    if isinstance(node, Not):
        child = simplify(node.child)
        return child.child if isinstance(child, Not) else Not(child)
    if isinstance(node, Phrase):
        if not node.tokens:
            return MatchAll()
        return Token(node.tokens[0]) if len(node.tokens) == 1 else node
    if isinstance(node, Substring) and not node.text:
        return MatchAll()
    if isinstance(node, TimeRange):
        if node.from_ns is None and node.to_ns is None:
            return MatchAll()
        if node.from_ns is not None and node.to_ns is not None and node.from_ns >= node.to_ns:
            return _NOTHING
        return node
    if isinstance(node, MinSeverity):
        if node.score <= _SCORES[0]:
            return MatchAll()
        for score in _SCORES:
            if score >= node.score:
                return MinSeverity(score)
        return _NOTHING
    return node


# --- evaluation ----------------------------------------------------------------------------------


class _RecordView:
    """One record plus its message tokens, computed at most once per ``matches`` call."""

    __slots__ = ("record", "_tokens", "_token_set")

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record
        self._tokens: list[str] | None = None
        self._token_set: frozenset[str] | None = None

    @property
    def message(self) -> str:
        return self.record.get("message") or ""

    def tokens(self) -> list[str]:
        if self._tokens is None:
            self._tokens = tokenize(self.message)
        return self._tokens

    def token_set(self) -> frozenset[str]:
        if self._token_set is None:
            self._token_set = frozenset(self.tokens())
        return self._token_set


def _has_phrase(tokens: list[str], phrase: tuple[str, ...]) -> bool:
    width = len(phrase)
    wanted = list(phrase)
    return any(tokens[i : i + width] == wanted for i in range(len(tokens) - width + 1))


def _field_matches(name: str, value: str, record: Mapping[str, Any]) -> bool:
    if name == "tag":
        return value in (record.get("tags") or ())
    if name.startswith("meta."):
        stored = (record.get("metadata") or {}).get(name[len("meta.") :])
        # A None metadata value counts as absent, as in storage.aggregate.
        return stored is not None and meta_value_text(stored) == value
    return record.get(name) == value


def _eval(node: Node, view: _RecordView) -> bool:
    if isinstance(node, MatchAll):
        return True
    if isinstance(node, And):
        return all(_eval(child, view) for child in node.children)
    if isinstance(node, Or):
        return any(_eval(child, view) for child in node.children)
    if isinstance(node, Not):
        return not _eval(node.child, view)
    if isinstance(node, Token):
        return node.text in view.token_set()
    if isinstance(node, Phrase):
        return _has_phrase(view.tokens(), node.tokens)
    if isinstance(node, Prefix):
        return any(token.startswith(node.prefix) for token in view.token_set())
    if isinstance(node, Field):
        return _field_matches(node.name, node.value, view.record)
    if isinstance(node, MinSeverity):
        return severity(view.record.get("level") or "") >= node.score
    if isinstance(node, TimeRange):
        ts_ns = view.record["ts_ns"]
        return (node.from_ns is None or ts_ns >= node.from_ns) and (
            node.to_ns is None or ts_ns < node.to_ns
        )
    if isinstance(node, Substring):
        return node.text.lower() in view.message.lower()
    if isinstance(node, Regex):
        return _compiled(node.pattern).search(view.message) is not None
    raise TypeError(f"not a query node: {_show(node)}")


def matches(node: Node, record: Mapping[str, Any]) -> bool:
    """Whether ``record`` (the dict of storage records: ts_ns, level, message, source, tags,
    metadata, thread_id, request_id, user_id, id) matches ``node``.  The plain oracle."""
    return _eval(node, _RecordView(record))


def time_bounds(node: Node) -> tuple[int | None, int | None]:
    """A conservative ``[from_ns, to_ns)`` holding every record ``node`` can match (None = open).

    TimeRanges ANDed at the top narrow it; an Or takes the hull of its children.  The result may
    be empty (from >= to), which means nothing can match."""
    if isinstance(node, TimeRange):
        return node.from_ns, node.to_ns
    if isinstance(node, And):
        from_ns: int | None = None
        to_ns: int | None = None
        for child in node.children:
            child_from, child_to = time_bounds(child)
            if child_from is not None:
                from_ns = child_from if from_ns is None else max(from_ns, child_from)
            if child_to is not None:
                to_ns = child_to if to_ns is None else min(to_ns, child_to)
        return from_ns, to_ns
    if isinstance(node, Or) and node.children:
        bounds = [time_bounds(child) for child in node.children]
        # The hull; one child unbounded on a side leaves the whole Or unbounded there.
        lows = [low for low, _ in bounds if low is not None]
        highs = [high for _, high in bounds if high is not None]
        return (
            min(lows) if len(lows) == len(bounds) else None,
            max(highs) if len(highs) == len(bounds) else None,
        )
    return None, None
