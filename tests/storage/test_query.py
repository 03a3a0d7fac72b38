"""Tests of storage.query and its other forms (storage.querytext, storage.querywire,
storage.filters): the language (table tests for every construct and error, with columns),
the seed filter dict, the plain evaluator on hand-built records, and hypothesis properties:
wire round trip, format/parse round trip, semantics kept by simplify, and "only BadQuery /
BadRequest" on arbitrary input.  Hypothesis prints the falsifying example on failure.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.errors import BadQuery, BadRequest
from storage.filters import filters_to_node
from storage.levels import LEVELS
from storage.query import (
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
    Prefix,
    Query,
    Regex,
    SortPipe,
    StatsPipe,
    Substring,
    TimeRange,
    Token,
    TopPipe,
    and_nodes,
    matches,
    simplify,
    time_bounds,
)
from storage.querytext import format_full_query, format_query, parse_query
from storage.querywire import from_wire, query_from_wire, query_to_wire, to_wire
from storage.tokens import tokenize

S = 1_000_000_000
# 2024-01-01T00:00:00Z: 19723 days since the epoch * 86400 s.
T0 = 1_704_067_200 * S
DAY = 86_400 * S
NOW = T0 + 3_600 * S  # 2024-01-01T01:00:00Z

NOTHING = Not(MatchAll())


def parse(text: str) -> Node:
    return parse_query(text, now_ns=NOW).filter


def tok(*words: str) -> tuple[Token, ...]:
    return tuple(Token(word) for word in words)


# --- language: constructs ------------------------------------------------------------------------

CONSTRUCTS: list[tuple[str, Node]] = [
    ("", MatchAll()),
    ("   \t\n", MatchAll()),
    ("*", MatchAll()),
    ("timeout", Token("timeout")),
    ("Timeout", Token("timeout")),  # tokens are lower-cased
    ("Ünïcode", Token("ünïcode")),
    ("a b", And(tok("a", "b"))),
    ("a AND b", And(tok("a", "b"))),
    ("a OR b", Or(tok("a", "b"))),
    ("a or b", And(tok("a", "or", "b"))),  # keywords are upper-case only
    ("NOT a", Not(Token("a"))),
    ("-a", Not(Token("a"))),
    ("--a", Token("a")),  # double negation simplifies away
    ("-(a OR b)", Not(Or(tok("a", "b")))),
    ('-"x y"', Not(Phrase(("x", "y")))),
    ("-level:ERROR", Not(Field("level", "ERROR"))),
    ("-*", NOTHING),
    ("NOTE", Token("note")),
    ("ORACLE", Token("oracle")),
    ("(a)", Token("a")),
    ("((a b) c)", And(tok("a", "b", "c"))),  # flattened
    ('"connection refused"', Phrase(("connection", "refused"))),
    ('"Connection, REFUSED!"', Phrase(("connection", "refused"))),
    ('"one"', Token("one")),
    ("10.0.0.1", Phrase(("10", "0", "0", "1"))),
    ("connection-refused", Phrase(("connection", "refused"))),
    ("snake_case", Phrase(("snake", "case"))),  # '_' splits tokens (DESIGN §2)
    ("time*", Prefix("time")),
    ("Time**", Prefix("time")),
    ("level:ERROR", Field("level", "ERROR")),
    ("level:error", Field("level", "ERROR")),
    ("level:warning", Field("level", "WARN")),
    ("level:crit", Field("level", "FATAL")),
    ("level:custom", Field("level", "CUSTOM")),  # unknown levels are kept upper-cased
    ('level:">=WARN"', Field("level", ">=WARN")),  # quoted: a literal value, not a bound
    ("level:>=WARN", MinSeverity(30)),
    ("level:>=warning", MinSeverity(30)),
    ("level:>WARN", MinSeverity(40)),  # the next score up
    ("level:>=DEBUG", MinSeverity(10)),
    ("level:>=TRACE", MatchAll()),  # every level scores >= 0
    ("level:>FATAL", NOTHING),  # nothing scores above 50
    ("source:db", Field("source", "db")),
    ('source:"my app"', Field("source", "my app")),
    ('source:""', Field("source", "")),
    ("source:Db", Field("source", "Db")),  # field values are case-sensitive
    ("tag:api", Field("tag", "api")),
    ("tags:api", Field("tag", "api")),
    ("request_id:abc-1", Field("request_id", "abc-1")),
    ("user_id:u1", Field("user_id", "u1")),
    ("thread_id:t", Field("thread_id", "t")),
    ("host:web-1", Field("meta.host", "web-1")),
    ("meta.host:web-1", Field("meta.host", "web-1")),
    ("meta.level:x", Field("meta.level", "x")),
    ("http.status:500", Field("meta.http.status", "500")),
    ("url:http://x/y?a=b", Field("meta.url", "http://x/y?a=b")),  # only the first ':' splits
    ('meta."odd key: yes":v', Field("meta.odd key: yes", "v")),
    ('k:"a \\"b\\" c"', Field("meta.k", 'a "b" c')),
    ("10:30:00", Phrase(("10", "30", "00"))),  # a name starts with a letter or '_'
    ("message:*refus*", Substring("refus")),
    ('message:"*connection refused*"', Substring("connection refused")),
    ("message:***", Substring("*")),
    ("message:**", MatchAll()),  # the empty substring is in every message
    ("message:timeout", Token("timeout")),
    ('message:"a b"', Phrase(("a", "b"))),
    ("message:time*", Prefix("time")),
    ('~"time(d )?out"', Regex("time(d )?out")),
    ('~"\\d+"', Regex("\\d+")),  # unknown escapes are kept for regexes
    ('~"a\\\\b"', Regex("a\\b")),
    ('~"say \\"hi\\""', Regex('say "hi"')),
    ("_time:15m", TimeRange(NOW - 15 * 60 * S, None)),
    ("_time:1h30m", TimeRange(NOW - 90 * 60 * S, None)),
    ("_time:[2024-01-01T00:00:00Z, 2024-01-02T00:00:00Z)", TimeRange(T0, T0 + DAY)),
    ("_time:[2024-01-01T00:00:00Z, 2024-01-02T00:00:00Z]", TimeRange(T0, T0 + DAY + 1)),
    ("_time:(2024-01-01T00:00:00Z, 2024-01-02T00:00:00Z)", TimeRange(T0 + 1, T0 + DAY)),
    ("_time:(2024-01-01T00:00:00Z,2024-01-02T00:00:00Z]", TimeRange(T0 + 1, T0 + DAY + 1)),
    ("_time:[ 2024-01-01 , * )", TimeRange(T0, None)),
    ("_time:[*, 2024-01-02)", TimeRange(None, T0 + DAY)),
    ("_time:[*, *]", MatchAll()),
    ("_time:[-30m, now)", TimeRange(NOW - 30 * 60 * S, NOW)),
    ('_time:["2024-01-01 00:00:00,5", *)', TimeRange(T0 + S // 2, None)),  # quoted: ',' inside
    ("_time:[1704067200, 1704153600)", TimeRange(T0, T0 + DAY)),  # epoch seconds
]


@pytest.mark.parametrize(("text", "expected"), CONSTRUCTS, ids=[repr(c[0]) for c in CONSTRUCTS])
def test_construct(text: str, expected: Node) -> None:
    assert parse(text) == expected


PRECEDENCE: list[tuple[str, Node]] = [
    # AND binds tighter than OR
    ("a b OR c", Or((And(tok("a", "b")), Token("c")))),
    ("a OR b c", Or((Token("a"), And(tok("b", "c"))))),
    ("a AND b OR c AND d", Or((And(tok("a", "b")), And(tok("c", "d"))))),
    # NOT binds tighter than AND and OR: it takes one term
    ("NOT a b", And((Not(Token("a")), Token("b")))),
    ("NOT a OR b", Or((Not(Token("a")), Token("b")))),
    ("NOT (a b)", Not(And(tok("a", "b")))),
    ("NOT NOT NOT a", Not(Token("a"))),
    ("a (b OR c)", And((Token("a"), Or(tok("b", "c"))))),
    ("(a OR b) (c OR d)", And((Or(tok("a", "b")), Or(tok("c", "d"))))),
    ("a OR (b OR c)", Or(tok("a", "b", "c"))),  # flattened
    ("a OR b OR c", Or(tok("a", "b", "c"))),
    ("(a OR *) b", Token("b")),  # OR with match-all matches all, AND drops it
]


@pytest.mark.parametrize(("text", "expected"), PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
def test_precedence(text: str, expected: Node) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"a\\"b"', Phrase(("a", "b"))),
        ('source:"a\\"b"', Field("source", 'a"b')),
        ('source:"a\\\\b"', Field("source", "a\\b")),
        ('source:"a\\nb"', Field("source", "a\\nb")),  # no \n escape: backslash kept
        ('source:"a\\\\"', Field("source", "a\\")),
        ('source:"(x) | y"', Field("source", "(x) | y")),
        ('source:"OR"', Field("source", "OR")),
        ('"OR"', Token("or")),  # quoting makes a keyword a word
    ],
)
def test_quoting_and_escapes(text: str, expected: Node) -> None:
    assert parse(text) == expected


PIPES: list[tuple[str, Query]] = [
    ("| limit 10", Query(MatchAll(), (LimitPipe(10),))),
    ("* | limit 10", Query(MatchAll(), (LimitPipe(10),))),
    ("a|limit 3", Query(Token("a"), (LimitPipe(3),))),
    ("a | stats count()", Query(Token("a"), (StatsPipe(()),))),
    ("a | stats count() by (source)", Query(Token("a"), (StatsPipe(("source",)),))),
    ("a | stats count() by source", Query(Token("a"), (StatsPipe(("source",)),))),
    (
        "a | stats count() by (level, host, tags, meta.\"x y\")",
        Query(Token("a"), (StatsPipe(("level", "meta.host", "tag", "meta.x y")),)),
    ),
    ("| top 5 tags", Query(MatchAll(), (TopPipe(5, "tag"),))),
    ("| top 3 meta.host", Query(MatchAll(), (TopPipe(3, "meta.host"),))),
    ("| histogram 1m", Query(MatchAll(), (HistogramPipe(60 * S),))),
    ("| histogram 500ms", Query(MatchAll(), (HistogramPipe(S // 2),))),
    ("| sort by _time asc", Query(MatchAll(), (SortPipe(False),))),
    ("| sort by _time desc", Query(MatchAll(), (SortPipe(True),))),
    (
        "level:ERROR | stats count() by (source) | sort by _time desc | limit 5",
        Query(Field("level", "ERROR"), (StatsPipe(("source",)), SortPipe(True), LimitPipe(5))),
    ),
]


@pytest.mark.parametrize(("text", "expected"), PIPES, ids=[p[0] for p in PIPES])
def test_pipes(text: str, expected: Query) -> None:
    query = parse_query(text, now_ns=NOW)
    assert query == expected
    # The full text form reads back to the same query.
    assert parse_query(format_full_query(query), now_ns=NOW) == query


# (query, 1-based column, a fragment the message must contain)
ERRORS: list[tuple[str, int, str]] = [
    ("(level:ERROR ", 14, "expected ')' to close '(' opened at column 1, found end of query"),
    ("a (b (c) d", 11, "expected ')' to close '(' opened at column 3, found end of query"),
    ("(a | limit 1", 4, "expected ')' to close '(' opened at column 1, found '|'"),
    ("a)", 2, "found ')' with no '(' open"),
    ("()", 2, "expected a term after '(', found ')'"),
    ("a OR", 5, "expected a term after 'OR', found end of query"),
    ("a OR OR b", 6, "expected a term after 'OR', found 'OR'"),
    ("OR a", 1, "expected a term, found 'OR'"),
    ("AND a", 1, "expected a term, found 'AND'"),
    ("a AND", 6, "expected a term after 'AND', found end of query"),
    ("NOT", 4, "expected a term after 'NOT', found end of query"),
    ("a NOT )", 7, "expected a term after 'NOT', found ')'"),
    ("- a", 2, "expected a term right after '-'"),
    ("a -", 4, "expected a term right after '-'"),
    ("---", 1, "message:*---*"),
    ("a ---", 3, "message:*---*"),
    ('"---"', 1, 'message:"*---*"'),
    ('""', 1, "no letters or digits"),
    ("*foo", 1, "message:*foo*"),
    ("foo-bar*", 1, "message:*foo-bar*"),
    ('"abc', 5, "expected '\"' to close the quote opened at column 1, found end of query"),
    ('a "b\\"', 7, "to close the quote opened at column 3"),
    ('source:"x', 10, "to close the quote opened at column 8"),
    ("~foo", 2, "expected '\"' after '~'"),
    ('a ~"("', 3, "invalid regex '('"),
    ('~"a{99999999999}"', 1, "invalid regex"),
    ("source:", 8, "expected a value after 'source:'"),
    ("source: x", 8, "(quote it if it has spaces), found whitespace"),
    ("(source:)", 9, "(quote it if it has spaces), found ')'"),
    ("meta.:x", 1, "metadata key is empty"),
    ('meta."":x', 1, "metadata key is empty"),
    ('meta."k" x', 9, "expected ':' after the metadata key"),
    ('level:""', 7, "expected a level after 'level:'"),
    ("level:>=BOGUS", 9, "expected a level (TRACE, DEBUG, INFO, WARN, ERROR, FATAL) after 'level:>='"),
    ("level:>=", 9, "after 'level:>=', found end of query"),
    ("level:>", 8, "after 'level:>', found end of query"),
    ("message:*foo bar*", 9, "message:\"*two words*\""),
    ("_time:", 7, "expected a value after '_time:'"),
    ("_time:xx", 7, "duration 'xx' is not valid"),
    ("_time:0s", 7, "greater than zero"),
    ("_time:[a b)", 8, "time 'a b' is not valid"),
    ("_time:[2024-01-01, bogus)", 20, "time 'bogus' is not valid"),
    ("_time:[2024-01-01 2024-01-02)", 8, "time '2024-01-01 2024-01-02' is not valid"),
    ("_time:[2024-01-01)", 18, "expected ',' between the start and end of the time range opened at column 7"),
    ("_time:[, 2024-01-01)", 8, "expected the start of the time range opened at column 7"),
    ("_time:[2024-01-01, )", 20, "expected the end of the time range opened at column 7"),
    ("_time:[2024-01-01, 2024-01-02", 30, "expected ']' or ')' to close the time range opened at column 7"),
    ("_time:[2024-01-02, 2024-01-01)", 7, "is empty"),
    ("_time:[2024-01-01, 2024-01-01)", 7, "is empty"),
    ("|", 2, "expected a pipe (stats, top, histogram, sort or limit) after '|' at column 1, found end"),
    ("a | nope", 5, "found 'nope'"),
    ("a | limit 5 x", 13, "expected '|' or end of query, found 'x'"),
    ("| limit 0", 9, "expected a positive whole number after 'limit'"),
    ("| limit -1", 9, "expected a positive whole number"),
    ("| limit 99999999999999999999", 9, "expected a positive whole number"),
    ("| top x tag", 7, "expected a positive whole number after 'top'"),
    ("| top 5", 8, "expected a field name after 'top N'"),
    ("| top 5 message", 9, "cannot group or rank by 'message'"),
    ("| stats", 8, "expected 'count' after 'stats'"),
    ("| stats count", 14, "expected '(' after 'stats count'"),
    ("| stats count() by", 19, "expected a field name after 'by'"),
    ("| stats count() by (a,", 23, "expected a field name after ','"),
    ("| stats count() by (a b)", 23, "expected ',' or ')' to close '(' opened at column 20"),
    ("| stats count() by (_time)", 21, "cannot group or rank by '_time'"),
    ("| histogram", 12, "duration '' is not valid"),
    ("| histogram x", 13, "duration 'x' is not valid"),
    ("| sort _time", 8, "expected 'by' after 'sort'"),
    ("| sort by ts asc", 11, "expected '_time' after 'sort by'"),
    ("| sort by _time", 16, "expected 'asc' or 'desc' after 'sort by _time', found end of query"),
    ("(" * 101 + "a" + ")" * 101, 101, "the limit is 100"),
    ("NOT " * 101 + "a", 401, "the limit is 100"),
]


@pytest.mark.parametrize(("text", "column", "fragment"), ERRORS, ids=[e[0][:40] for e in ERRORS])
def test_syntax_error(text: str, column: int, fragment: str) -> None:
    with pytest.raises(BadQuery) as info:
        parse_query(text, now_ns=NOW)
    message = info.value.message
    assert message.startswith(f"query column {column}: "), message
    assert fragment in message, message
    assert info.value.details["column"] == column


def test_too_long_query_is_refused() -> None:
    with pytest.raises(BadQuery, match="the limit is 65536"):
        parse_query("a " * 40_000, now_ns=NOW)


def test_query_must_be_a_string() -> None:
    with pytest.raises(BadQuery, match="must be a string"):
        parse_query(b"timeout", now_ns=NOW)  # type: ignore[arg-type]


def test_deep_but_allowed_nesting_parses() -> None:
    assert parse("(" * 100 + "a" + ")" * 100) == Token("a")


# --- matches on hand-built records -------------------------------------------------------------


def record(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ts_ns": T0,
        "level": "INFO",
        "message": "",
        "source": "app",
        "tags": [],
        "metadata": {},
        "thread_id": None,
        "request_id": None,
        "user_id": None,
        "id": 1,
    }
    base.update(fields)
    return base


REC = record(
    ts_ns=T0 + 5 * S,
    level="ERROR",
    message="Connection refused by db-1: Timeout after 30s",
    source="api",
    tags=["prod", "edge"],
    metadata={"host": "web-1", "port": 8080, "ratio": 0.5, "ok": True, "bad": False, "nothing": None},
    thread_id="t-9",
    request_id="req-1",
    id=7,
)

# (query, whether REC matches): each expectation reasoned from the message and fields above;
# its tokens are connection refused by db 1 timeout after 30s.
MATCH_CASES: list[tuple[str, bool]] = [
    ("*", True),
    ("timeout", True),
    ("TIMEOUT", True),
    ("timeouts", False),  # a token, not a substring
    ("time", False),
    ("time*", True),
    ("30s", True),
    ("30", False),
    ('"connection refused"', True),
    ('"refused connection"', False),  # order matters
    ('"connection by"', False),  # consecutive only
    ("db-1", True),  # phrase db 1
    ("db-2", False),
    ('message:"*USED BY DB*"', True),  # substring is case-insensitive
    ("message:*refusal*", False),
    ('~"db-\\d"', True),
    ('~"^Connection"', True),
    ('~"^connection"', False),  # regex is case-sensitive
    ('~"(?i)^connection"', True),
    ("level:ERROR", True),
    ("level:err", True),
    ("level:WARN", False),
    ("level:>=WARN", True),
    ("level:>=ERROR", True),
    ("level:>ERROR", False),
    ("source:api", True),
    ("source:API", False),
    ("tag:prod", True),
    ("tag:edge", True),
    ("tag:dev", False),
    ("thread_id:t-9", True),
    ("request_id:req-1", True),
    ("request_id:req-2", False),
    ('user_id:""', False),  # None is not the empty string
    ("host:web-1", True),
    ("host:WEB-1", False),
    ("port:8080", True),
    ("port:8080.0", False),
    ("ratio:0.5", True),
    ("ok:true", True),
    ("ok:True", False),
    ("bad:false", True),
    ("nothing:None", False),  # a None metadata value counts as absent
    ("missing:x", False),
    ("_time:[2024-01-01T00:00:05Z, 2024-01-01T00:00:06Z)", True),
    ("_time:(2024-01-01T00:00:05Z, *)", False),  # start is exclusive
    ("_time:[*, 2024-01-01T00:00:05Z)", False),  # end is exclusive
    ("_time:[*, 2024-01-01T00:00:05Z]", True),
    ("_time:2h", True),  # NOW is 1 h after T0
    ("_time:30m", False),
    ("timeout -tag:dev", True),
    ("timeout -tag:prod", False),
    ("nope OR tag:edge", True),
    ("nope OR tag:dev", False),
    ("NOT (level:ERROR source:api)", False),
    ("-*", False),
]


@pytest.mark.parametrize(("text", "expected"), MATCH_CASES, ids=[m[0] for m in MATCH_CASES])
def test_matches_hand_built_record(text: str, expected: bool) -> None:
    assert matches(parse(text), REC) is expected


def test_matches_unknown_level_scores_like_info() -> None:
    custom = record(level="CUSTOM")
    assert matches(MinSeverity(20), custom)
    assert not matches(MinSeverity(30), custom)
    assert matches(Field("level", "CUSTOM"), custom)


def test_matches_empty_message_and_tags() -> None:
    blank = record(message="", tags=[])
    assert not matches(Token("a"), blank)
    assert not matches(Prefix("a"), blank)
    assert not matches(Field("tag", ""), blank)
    assert matches(Substring(""), blank)
    assert matches(Phrase(()), blank)
    assert matches(Not(Or(())), blank)  # Or() matches nothing


def test_matches_phrase_repeated_tokens() -> None:
    rec = record(message="a a b")
    assert matches(Phrase(("a", "b")), rec)
    assert matches(Phrase(("a", "a", "b")), rec)
    assert not matches(Phrase(("a", "a", "a")), rec)


# --- filters_to_node (the seed engine's keys) --------------------------------------------------

FILTERS: list[tuple[dict[str, Any], Node]] = [
    ({}, MatchAll()),
    ({"level": None, "source": None}, MatchAll()),  # None means "not set"
    ({"start_time": "2024-01-01T00:00:00Z"}, TimeRange(T0, None)),
    # end_time is inclusive: the bound becomes end + 1 ns
    ({"end_time": "2024-01-02T00:00:00Z"}, TimeRange(None, T0 + DAY + 1)),
    (
        {"start_time": datetime(2024, 1, 1, tzinfo=timezone.utc), "end_time": datetime(2024, 1, 2)},
        TimeRange(T0, T0 + DAY + 1),  # naive datetime = UTC
    ),
    (
        {"start_time": datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))},
        TimeRange(T0, None),
    ),
    ({"start_time": 1_704_067_200}, TimeRange(T0, None)),  # epoch seconds
    ({"start_time": 1_704_067_200_000}, TimeRange(T0, None)),  # epoch ms
    ({"start_time": 1_704_067_200.5}, TimeRange(T0 + S // 2, None)),
    ({"start_time": "-15m"}, TimeRange(NOW - 15 * 60 * S, None)),
    ({"level": "error"}, Field("level", "ERROR")),
    ({"level": ["WARN", "error"]}, Or((Field("level", "WARN"), Field("level", "ERROR")))),
    ({"level": []}, NOTHING),  # any of nothing
    ({"source": "db"}, Field("source", "db")),
    ({"source": ["db", "api"]}, Or((Field("source", "db"), Field("source", "api")))),
    ({"keyword": "Timeout"}, Token("timeout")),
    ({"keyword": "connection refused"}, Phrase(("connection", "refused"))),
    ({"keywords": ["a", "b c"]}, And((Token("a"), Phrase(("b", "c"))))),
    ({"keywords": []}, MatchAll()),  # all of nothing
    ({"tags": ["x", "y"]}, Or((Field("tag", "x"), Field("tag", "y")))),
    ({"tags": "x"}, Field("tag", "x")),
    ({"min_severity": "WARN"}, MinSeverity(30)),
    ({"min_severity": "warning"}, MinSeverity(30)),
    ({"min_severity": 40}, MinSeverity(40)),
    ({"min_severity": 35}, MinSeverity(40)),  # same records as >= 35
    ({"request_id": "r1", "user_id": "u1", "thread_id": "t1"},
     And((Field("request_id", "r1"), Field("user_id", "u1"), Field("thread_id", "t1")))),
    ({"query": "a OR b"}, Or(tok("a", "b"))),
    ({"query": ""}, MatchAll()),
    (
        {"level": "ERROR", "keyword": "db", "start_time": T0, "query": "host:web-1"},
        And((TimeRange(T0, None), Field("level", "ERROR"), Token("db"), Field("meta.host", "web-1"))),
    ),
]


@pytest.mark.parametrize(("filters", "expected"), FILTERS, ids=[repr(f[0])[:60] for f in FILTERS])
def test_filters_to_node(filters: dict[str, Any], expected: Node) -> None:
    assert filters_to_node(filters, now_ns=NOW) == expected


@pytest.mark.parametrize(
    ("filters", "fragment"),
    [
        ({"levle": "ERROR"}, "unknown filter key(s) 'levle'; the accepted keys are start_time, end_time"),
        ({"start_time": "yesterday"}, "filters['start_time']: time 'yesterday' is not valid"),
        ({"end_time": True}, "filters['end_time'] = True is not a time"),
        ({"level": 5}, "filters['level'] = 5 is not valid; give a string or a list of strings"),
        ({"level": ""}, "has an empty level"),
        ({"source": ["a", 1]}, "filters['source']"),
        ({"keyword": "---"}, "message:"),
        ({"keyword": 3}, "filters['keyword'] = 3"),
        ({"keywords": "ab"}, "give a list of strings"),
        ({"min_severity": "LOUD"}, "filters['min_severity'] = 'LOUD' is not valid"),
        ({"min_severity": True}, "filters['min_severity'] = True"),
        ({"user_id": 5}, "filters['user_id'] = 5"),
        ({"query": "a | limit 5"}, "has pipes"),
        ({"query": "(a"}, "query column 3"),
    ],
)
def test_filters_errors(filters: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadQuery) as info:
        filters_to_node(filters, now_ns=NOW)
    assert fragment in info.value.message, info.value.message


def test_filters_time_window_is_inclusive_at_both_ends() -> None:
    node = filters_to_node({"start_time": T0, "end_time": T0 + 10 * S}, now_ns=NOW)
    assert matches(node, record(ts_ns=T0))
    assert matches(node, record(ts_ns=T0 + 10 * S))
    assert not matches(node, record(ts_ns=T0 + 10 * S + 1))
    assert not matches(node, record(ts_ns=T0 - 1))


def test_filters_tags_any_of() -> None:
    node = filters_to_node({"tags": ["x", "y"]}, now_ns=NOW)
    assert matches(node, record(tags=["y"]))
    assert not matches(node, record(tags=["z"]))


# --- helpers: and_nodes, simplify, time_bounds -------------------------------------------------


def test_and_nodes() -> None:
    a, b, c = tok("a", "b", "c")
    assert and_nodes() == MatchAll()
    assert and_nodes(MatchAll(), MatchAll()) == MatchAll()
    assert and_nodes(a) == a
    assert and_nodes(a, MatchAll(), And((b, c))) == And((a, b, c))
    assert and_nodes(Or((a, b)), c) == And((Or((a, b)), c))


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (And(()), MatchAll()),
        (Or(()), NOTHING),
        (And((Token("a"),)), Token("a")),
        (And((And((Token("a"), MatchAll())), And((Token("b"),)))), And(tok("a", "b"))),
        (Or((Token("a"), Or((Token("b"), Token("c"))))), Or(tok("a", "b", "c"))),
        (Or((Token("a"), MatchAll())), MatchAll()),
        (Not(Not(Token("a"))), Token("a")),
        (Not(Not(Not(Token("a")))), Not(Token("a"))),
        (Phrase(()), MatchAll()),
        (Phrase(("a",)), Token("a")),
        (Substring(""), MatchAll()),
        (TimeRange(None, None), MatchAll()),
        (TimeRange(5, 5), NOTHING),
        (TimeRange(5, 6), TimeRange(5, 6)),
        (MinSeverity(-3), MatchAll()),
        (MinSeverity(0), MatchAll()),
        (MinSeverity(11), MinSeverity(20)),
        (MinSeverity(50), MinSeverity(50)),
        (MinSeverity(51), NOTHING),
        (And((Token("a"), Or(()))), And((Token("a"), NOTHING))),
    ],
)
def test_simplify(node: Node, expected: Node) -> None:
    assert simplify(node) == expected
    assert simplify(expected) == expected


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (MatchAll(), (None, None)),
        (TimeRange(10, 20), (10, 20)),
        (And((TimeRange(10, 20), TimeRange(15, None), Token("a"))), (15, 20)),
        (And((TimeRange(None, 20), TimeRange(None, 12))), (None, 12)),
        (Or((TimeRange(10, 20), TimeRange(30, 40))), (10, 40)),
        (Or((TimeRange(10, 20), Token("a"))), (None, None)),  # Token is unbounded in time
        (Not(TimeRange(10, 20)), (None, None)),
        (And((Or((TimeRange(10, 20), TimeRange(0, 5))), TimeRange(3, None))), (3, 20)),
        (And((TimeRange(30, 40), TimeRange(0, 10))), (30, 10)),  # empty: nothing can match
    ],
)
def test_time_bounds(node: Node, expected: tuple[int | None, int | None]) -> None:
    assert time_bounds(node) == expected


# --- format --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "text"),
    [
        (MatchAll(), "*"),
        (NOTHING, "NOT *"),
        (And((Token("a"), Or(tok("b", "c")))), "a (b OR c)"),
        (Or((And(tok("a", "b")), Token("c"))), "a b OR c"),
        (Not(And(tok("a", "b"))), "NOT (a b)"),
        (Not(Or(tok("a", "b"))), "NOT (a OR b)"),
        (Phrase(("a", "b")), '"a b"'),
        (Prefix("ti"), "ti*"),
        (Field("source", "my app"), 'source:"my app"'),
        (Field("level", ">=X"), 'level:">=X"'),
        (Field("meta.a:b", 'q"'), 'meta."a:b":"q\\""'),
        (MinSeverity(35), "level:>=ERROR"),
        (TimeRange(T0, None), "_time:[2024-01-01T00:00:00Z, *)"),
        (TimeRange(None, T0 + 1), "_time:[*, 2024-01-01T00:00:00.000000001Z)"),
        (Substring("x y"), 'message:"*x y*"'),
        (Substring("xy"), "message:*xy*"),
        (Regex('\\d"'), '~"\\\\d\\""'),
    ],
)
def test_format_query(node: Node, text: str) -> None:
    assert format_query(node) == text
    assert parse(text) == simplify(node)


# --- wire ----------------------------------------------------------------------------------------


def test_wire_examples() -> None:
    node = And((Token("x"), Not(Field("level", "ERROR")), TimeRange(1, None)))
    assert to_wire(node) == [
        "and",
        [["token", "x"], ["not", ["field", "level", "ERROR"]], ["time", 1, None]],
    ]
    assert from_wire(to_wire(node)) == node
    # msgpack with use_list=False hands back tuples
    assert from_wire(("or", (("token", "a"), ("phrase", ("b", "c"))))) == Or(
        (Token("a"), Phrase(("b", "c")))
    )


def test_query_wire_round_trip() -> None:
    query = parse_query("a | stats count() by (source, host) | top 3 tag | histogram 1m | "
                        "sort by _time asc | limit 7", now_ns=NOW)
    wire = query_to_wire(query)
    assert wire["pipes"][0] == ["stats", ["source", "meta.host"]]
    assert query_from_wire(wire) == query


BAD_WIRE: list[Any] = [
    None,
    5,
    "token",
    [],
    [5],
    ["nope"],
    ["all", 1],
    ["and"],
    ["and", "x"],
    ["and", [["token", "A"]]],  # not lower-case
    ["token", "two words"],
    ["token", ""],
    ["token", 5],
    ["prefix", ""],
    ["phrase", "ab"],
    ["phrase", ["a", "b c"]],
    ["field", "colour", "x"],
    ["field", "meta.", "x"],
    ["field", "source", 5],
    ["field", "level", "warning"],  # not normalized
    ["min_severity", "30"],
    ["min_severity", True],
    ["min_severity", 2**70],
    ["time", 1.5, None],
    ["time", None, True],
    ["time", 2**64, None],
    ["substring", b"x"],
    ["regex", "("],
    ["regex", "a{99999999999}"],
    ["not", ["not"]],
    ["not", "x"],
]


@pytest.mark.parametrize("obj", BAD_WIRE, ids=[repr(b)[:40] for b in BAD_WIRE])
def test_from_wire_rejects(obj: Any) -> None:
    with pytest.raises(BadRequest):
        from_wire(obj)


def test_from_wire_rejects_deep_nesting() -> None:
    obj: Any = ["token", "a"]
    for _ in range(5_000):
        obj = ["not", obj]
    with pytest.raises(BadRequest, match="the limit is 100"):
        from_wire(obj)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        {"filter": ["all"]},
        {"filter": ["all"], "pipes": [], "extra": 1},
        {"filter": ["all"], "pipes": "x"},
        {"filter": ["all"], "pipes": [["limit", 0]]},
        {"filter": ["all"], "pipes": [["top", 5, "nope"]]},
        {"filter": ["all"], "pipes": [["sort", 1]]},
        {"filter": ["all"], "pipes": [["stats", ["level", 3]]]},
        {"filter": ["all"], "pipes": [["histogram", -1]]},
        {"filter": ["bad"], "pipes": []},
    ],
)
def test_query_from_wire_rejects(obj: Any) -> None:
    with pytest.raises(BadRequest):
        query_from_wire(obj)


# --- hypothesis properties ---------------------------------------------------------------------

# Valid tokens: drawn from text, kept only when they read back as exactly themselves.
token_text = st.text(min_size=1, max_size=8).map(tokenize).filter(bool).map(lambda ts: ts[0]).filter(
    lambda t: tokenize(t) == [t]
)
ascii_token = st.text(alphabet="abcxyz019", min_size=1, max_size=4)
any_token = st.one_of(ascii_token, token_text)
field_value = st.text(max_size=12)
meta_name = st.one_of(
    st.sampled_from(["host", "http.status", "a-b", "level", "_time", "x y", 'q"', "a:b", "\\"]),
    st.text(min_size=1, max_size=8),
).map(lambda key: "meta." + key)
level_value = st.sampled_from([*LEVELS, "CUSTOM", "MY LEVEL", ">=X", "A\\B"])
timestamp = st.integers(min_value=-(2**63), max_value=2**63 - 1)
regex_pattern = st.sampled_from(["a", "^x", "\\d+", "(?i)ab", 'say "hi"', "a|b", "\\\\", "[)]"])

leaves = st.one_of(
    st.just(MatchAll()),
    any_token.map(Token),
    st.lists(any_token, max_size=4).map(lambda ts: Phrase(tuple(ts))),
    any_token.map(Prefix),
    st.builds(Field, st.sampled_from(["source", "tag", "request_id", "user_id", "thread_id"]), field_value),
    st.builds(Field, st.just("level"), level_value),
    st.builds(Field, meta_name, field_value),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(MinSeverity),
    st.builds(TimeRange, st.none() | timestamp, st.none() | timestamp),
    st.text(max_size=10).map(Substring),
    regex_pattern.map(Regex),
)


def _compound(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.one_of(
        st.lists(children, max_size=4).map(lambda cs: And(tuple(cs))),
        st.lists(children, max_size=4).map(lambda cs: Or(tuple(cs))),
        children.map(Not),
    )


trees = st.recursive(leaves, _compound, max_leaves=12)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(trees)
def test_property_wire_round_trip(node: Node) -> None:
    assert from_wire(to_wire(node)) == node


@FAST
@given(trees)
def test_property_format_parse_round_trip(node: Node) -> None:
    text = format_query(node)
    assert parse_query(text, now_ns=NOW).filter == simplify(node), text


@FAST
@given(trees)
def test_property_simplify_is_idempotent(node: Node) -> None:
    once = simplify(node)
    assert simplify(once) == once


# Semantics: a small vocabulary so that generated queries hit generated records often.
WORDS = ["a", "b", "c", "ab"]
small_leaves = st.one_of(
    st.just(MatchAll()),
    st.sampled_from(WORDS).map(Token),
    st.lists(st.sampled_from(WORDS), max_size=3).map(lambda ts: Phrase(tuple(ts))),
    st.sampled_from(["a", "b"]).map(Prefix),
    st.builds(Field, st.sampled_from(["source", "tag"]), st.sampled_from(["x", "y"])),
    st.builds(Field, st.just("level"), st.sampled_from(["INFO", "ERROR", "CUSTOM"])),
    st.builds(Field, st.just("meta.k"), st.sampled_from(["1", "true", "x"])),
    st.integers(min_value=-5, max_value=60).map(MinSeverity),
    st.builds(TimeRange, st.none() | st.integers(0, 10), st.none() | st.integers(0, 10)),
    st.sampled_from(["", "a b", "B"]).map(Substring),
    st.sampled_from(["a b", "^b", "c$"]).map(Regex),
)
small_trees = st.recursive(small_leaves, _compound, max_leaves=10)
records = st.builds(
    record,
    ts_ns=st.integers(0, 10),
    level=st.sampled_from(["TRACE", "INFO", "WARN", "ERROR", "FATAL", "CUSTOM"]),
    message=st.lists(st.sampled_from([*WORDS, "A", "-", " "]), max_size=6).map(" ".join),
    source=st.sampled_from(["x", "y"]),
    tags=st.lists(st.sampled_from(["x", "y", "z"]), max_size=2),
    metadata=st.dictionaries(st.just("k"), st.sampled_from([1, True, "x", 1.0, None])),
)


@FAST
@given(small_trees, records)
def test_property_simplify_and_format_keep_matches(node: Node, rec: dict[str, Any]) -> None:
    expected = matches(node, rec)
    assert matches(simplify(node), rec) == expected
    assert matches(parse(format_query(node)), rec) == expected


@FAST
@given(small_trees, records)
def test_property_time_bounds_is_conservative(node: Node, rec: dict[str, Any]) -> None:
    from_ns, to_ns = time_bounds(node)
    if matches(node, rec):
        assert from_ns is None or rec["ts_ns"] >= from_ns
        assert to_ns is None or rec["ts_ns"] < to_ns


@FAST
@given(small_trees)
def test_property_not_is_complement(node: Node) -> None:
    rec = record(message="a b c", tags=["x"], level="ERROR", metadata={"k": 1}, ts_ns=5)
    assert matches(Not(node), rec) != matches(node, rec)


wire_junk = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True),
        st.text(max_size=6),
        st.sampled_from(list(["all", "and", "or", "not", "token", "phrase", "prefix", "field",
                              "min_severity", "time", "substring", "regex", "level", "meta.k"])),
        st.binary(max_size=4),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from(["filter", "pipes", "x"]), children, max_size=3),
    ),
    max_leaves=16,
)


@FAST
@given(wire_junk)
def test_property_from_wire_raises_only_bad_request(obj: Any) -> None:
    try:
        node = from_wire(obj)
    except BadRequest:
        return
    assert from_wire(to_wire(node)) == node


@FAST
@given(wire_junk)
def test_property_query_from_wire_raises_only_bad_request(obj: Any) -> None:
    try:
        query_from_wire(obj)
    except BadRequest:
        pass


QUERY_ALPHABET = st.sampled_from(
    list(" ()\"\\|~*-:,[]>=.") + ["OR", "AND", "NOT", "level", "_time", "message", "meta.",
                                 "15m", "2024-01-01", "stats count() by", "top 5", "limit",
                                 "sort by _time", "histogram", "a", "é", "²", "\t"]
)


@FAST
@given(st.one_of(st.text(max_size=40), st.lists(QUERY_ALPHABET, max_size=20).map("".join)))
def test_property_parse_raises_only_bad_query(text: str) -> None:
    try:
        query = parse_query(text, now_ns=NOW)
    except BadQuery as err:
        assert err.message.startswith("query column "), err.message
        return
    # What parses formats back to text that parses to the same query.
    assert parse_query(format_full_query(query), now_ns=NOW) == query
