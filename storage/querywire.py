"""The wire form of a query (DESIGN §7): the tree the coordinator ships to the shards.

- ``to_wire`` / ``from_wire``: a ``Node`` as msgpack-friendly nested lists and back;
- ``query_to_wire`` / ``query_from_wire``: a whole ``Query`` (filter and pipes) as a map.

The decoders check every node and raise ``BadRequest`` (never anything else) on a wrong shape,
because the data came off a socket.  The tree itself is in ``storage.query``.

Pure Python and no I/O: the coordinator imports this without LMDB.
"""

from __future__ import annotations

from typing import Any, Mapping

from storage.errors import BadRequest
from storage.query import (
    MAX_DEPTH,
    MAX_PIPE_COUNT,
    RECORD_FIELDS,
    And,
    Field,
    HistogramPipe,
    LimitPipe,
    MatchAll,
    MinSeverity,
    Node,
    Not,
    Or,
    Phrase,
    Pipe,
    Prefix,
    Query,
    Regex,
    SortPipe,
    StatsPipe,
    Substring,
    TimeRange,
    Token,
    TopPipe,
    _normalize_level,
    _regex_problem,
    _show,
)
from storage.timefmt import MAX_TS_NS, MIN_TS_NS
from storage.tokens import tokenize

# Nested lists whose first item names the node:
#   ["all"]  ["and", [child, ...]]  ["or", [child, ...]]  ["not", child]  ["token", text]
#   ["phrase", [token, ...]]  ["prefix", text]  ["field", name, value]  ["min_severity", score]
#   ["time", from_ns | None, to_ns | None]  ["substring", text]  ["regex", pattern]


def _is_token(text: Any) -> bool:
    return isinstance(text, str) and tokenize(text) == [text]


def _valid_field_name(name: Any) -> bool:
    return isinstance(name, str) and (
        name in RECORD_FIELDS or (name.startswith("meta.") and len(name) > len("meta."))
    )


def to_wire(node: Node) -> list[Any]:
    """``node`` as msgpack-friendly nested lists."""
    if isinstance(node, MatchAll):
        return ["all"]
    if isinstance(node, And):
        return ["and", [to_wire(child) for child in node.children]]
    if isinstance(node, Or):
        return ["or", [to_wire(child) for child in node.children]]
    if isinstance(node, Not):
        return ["not", to_wire(node.child)]
    if isinstance(node, Token):
        return ["token", node.text]
    if isinstance(node, Phrase):
        return ["phrase", list(node.tokens)]
    if isinstance(node, Prefix):
        return ["prefix", node.prefix]
    if isinstance(node, Field):
        return ["field", node.name, node.value]
    if isinstance(node, MinSeverity):
        return ["min_severity", node.score]
    if isinstance(node, TimeRange):
        return ["time", node.from_ns, node.to_ns]
    if isinstance(node, Substring):
        return ["substring", node.text]
    if isinstance(node, Regex):
        return ["regex", node.pattern]
    raise TypeError(f"not a query node: {_show(node)}")


_WIRE_ARITY: dict[str, int] = {
    "all": 1,
    "and": 2,
    "or": 2,
    "not": 2,
    "token": 2,
    "phrase": 2,
    "prefix": 2,
    "field": 3,
    "min_severity": 2,
    "time": 3,
    "substring": 2,
    "regex": 2,
}


def _bad_wire(obj: Any, why: str) -> BadRequest:
    return BadRequest(
        f"query node {_show(obj)} is not valid: {why}; expected a list such as "
        "[\"and\", [[\"token\", \"timeout\"], [\"field\", \"level\", \"ERROR\"]]]"
    )


def _is_int64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and MIN_TS_NS <= value <= MAX_TS_NS


def _from_wire(obj: Any, depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise BadRequest(f"query tree nests more than {MAX_DEPTH} levels deep; the limit is {MAX_DEPTH}")
    if not isinstance(obj, (list, tuple)) or not obj or not isinstance(obj[0], str):
        raise _bad_wire(obj, "a node is a list starting with its kind")
    kind = obj[0]
    arity = _WIRE_ARITY.get(kind)
    if arity is None:
        raise _bad_wire(obj, f"unknown kind {_show(kind)}; known kinds are {', '.join(_WIRE_ARITY)}")
    if len(obj) != arity:
        raise _bad_wire(obj, f"a {kind!r} node has {arity} items, not {len(obj)}")
    if kind == "all":
        return MatchAll()
    if kind in ("and", "or"):
        if not isinstance(obj[1], (list, tuple)):
            raise _bad_wire(obj, f"the children of {kind!r} are a list")
        children = tuple(_from_wire(child, depth + 1) for child in obj[1])
        return And(children) if kind == "and" else Or(children)
    if kind == "not":
        return Not(_from_wire(obj[1], depth + 1))
    if kind in ("token", "prefix"):
        if not _is_token(obj[1]):
            raise _bad_wire(obj, "the text must be one lower-case token (letters and digits)")
        return Token(obj[1]) if kind == "token" else Prefix(obj[1])
    if kind == "phrase":
        if not isinstance(obj[1], (list, tuple)) or not all(map(_is_token, obj[1])):
            raise _bad_wire(obj, "a phrase is a list of lower-case tokens")
        return Phrase(tuple(obj[1]))
    if kind == "field":
        name, value = obj[1], obj[2]
        if not _valid_field_name(name):
            raise _bad_wire(
                obj, f"the field name must be one of {', '.join(RECORD_FIELDS)} or meta.<key>"
            )
        if not isinstance(value, str):
            raise _bad_wire(obj, "the field value must be a string")
        if name == "level" and _normalize_level(value) != value:
            raise _bad_wire(obj, "a level value must be normalized (normalize_level)")
        return Field(name, value)
    if kind == "min_severity":
        if not _is_int64(obj[1]):
            raise _bad_wire(obj, "the score must be an integer")
        return MinSeverity(obj[1])
    if kind == "time":
        if not all(bound is None or _is_int64(bound) for bound in obj[1:]):
            raise _bad_wire(obj, "the bounds must be int64 ns or None")
        return TimeRange(obj[1], obj[2])
    # substring / regex
    if not isinstance(obj[1], str):
        raise _bad_wire(obj, "the text must be a string")
    if kind == "substring":
        return Substring(obj[1])
    problem = _regex_problem(obj[1])
    if problem is not None:
        raise _bad_wire(obj, f"the regex does not compile: {problem}")
    return Regex(obj[1])


def from_wire(obj: Any) -> Node:
    """The node ``to_wire`` produced; raises BadRequest (only) when ``obj`` has any other shape."""
    return _from_wire(obj, 0)


def _pipe_to_wire(pipe: Pipe) -> list[Any]:
    if isinstance(pipe, StatsPipe):
        return ["stats", list(pipe.by)]
    if isinstance(pipe, TopPipe):
        return ["top", pipe.n, pipe.field]
    if isinstance(pipe, HistogramPipe):
        return ["histogram", pipe.interval_ns]
    if isinstance(pipe, SortPipe):
        return ["sort", pipe.desc]
    if isinstance(pipe, LimitPipe):
        return ["limit", pipe.n]
    raise TypeError(f"not a pipe: {_show(pipe)}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_PIPE_COUNT


def _pipe_from_wire(obj: Any) -> Pipe:
    if not isinstance(obj, (list, tuple)) or not obj:
        raise BadRequest(f"pipe {_show(obj)} is not valid; expected a list such as [\"limit\", 10]")
    kind = obj[0]
    if kind == "stats" and len(obj) == 2 and isinstance(obj[1], (list, tuple)):
        if all(_valid_field_name(name) for name in obj[1]):
            return StatsPipe(tuple(obj[1]))
    elif kind == "top" and len(obj) == 3 and _is_count(obj[1]) and _valid_field_name(obj[2]):
        return TopPipe(obj[1], obj[2])
    elif kind == "histogram" and len(obj) == 2 and _is_count(obj[1]):
        return HistogramPipe(obj[1])
    elif kind == "sort" and len(obj) == 2 and isinstance(obj[1], bool):
        return SortPipe(obj[1])
    elif kind == "limit" and len(obj) == 2 and _is_count(obj[1]):
        return LimitPipe(obj[1])
    raise BadRequest(
        f"pipe {_show(obj)} is not valid; expected [\"stats\", [field, ...]], [\"top\", n, field], "
        "[\"histogram\", interval_ns], [\"sort\", desc] or [\"limit\", n] with positive n and "
        "field one of level, source, tag, request_id, user_id, thread_id, meta.<key>"
    )


def query_to_wire(query: Query) -> dict[str, Any]:
    return {"filter": to_wire(query.filter), "pipes": [_pipe_to_wire(pipe) for pipe in query.pipes]}


def query_from_wire(obj: Any) -> Query:
    """The Query ``query_to_wire`` produced; BadRequest (only) on any other shape."""
    if not isinstance(obj, Mapping) or set(obj) != {"filter", "pipes"}:
        raise BadRequest(
            f"query {_show(obj)} is not valid; expected a map with exactly the keys 'filter' and 'pipes'"
        )
    pipes = obj["pipes"]
    if not isinstance(pipes, (list, tuple)):
        raise BadRequest(f"query pipes {_show(pipes)} are not valid; expected a list")
    return Query(from_wire(obj["filter"]), tuple(_pipe_from_wire(pipe) for pipe in pipes))
