"""The query model and language (DESIGN §7): parse once in the coordinator, ship the tree, evaluate.

This module owns:

- the filter tree (``Node``): small frozen, hashable dataclasses, so a parsed query can be cached,
  compared and used as a dict key;
- the pipes (``StatsPipe``, ``TopPipe``, ``HistogramPipe``, ``SortPipe``, ``LimitPipe``) and ``Query``;
- ``parse_query``: query text -> ``Query``; every syntax error is a ``BadQuery`` whose message starts
  with ``query column N:`` (1-based) and says what was expected and what was found;
- ``filters_to_node``: the seed engine's filter dict -> ``Node``;
- ``matches``: the plain, obviously-correct evaluator of one record.  It is the oracle the indexed
  engine is tested against, so it favours clarity over speed;
- ``simplify`` / ``format_query``: a canonical form and its text, with
  ``parse_query(format_query(n)).filter == simplify(n)`` and ``matches(simplify(n), r) == matches(n, r)``;
- ``to_wire`` / ``from_wire``: msgpack-friendly nested lists; ``from_wire`` checks every node and
  raises ``BadRequest`` (never anything else) on a wrong shape, because the data came off a socket.

Grammar (precedence NOT > AND > OR)::

    query    := [or_expr] ('|' pipe)*
    or_expr  := and_expr ('OR' and_expr)*
    and_expr := unary (['AND'] unary)*
    unary    := 'NOT' unary | '-' unary | primary        ('-' must touch its term: -word)
    primary  := '(' or_expr ')' | '"phrase"' | '~"regex"' | name ':' value | word

Quoted strings take two escapes, ``\\"`` and ``\\\\``; any other backslash is kept as written, so
``~"\\d+"`` is the regex ``\\d+``.  A bare word is split into tokens (``storage.tokens``): one
token is a ``Token``, several a ``Phrase`` (``10.0.0.1``), ``word*`` a ``Prefix`` and ``*`` alone
matches everything.  ``name`` is ``[A-Za-z_][A-Za-z0-9_.-]*`` or ``meta."any key"``; names other than
the record fields and ``_time`` / ``message`` are metadata keys.

Pure Python and no I/O: the coordinator imports this without LMDB.
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Union

from storage.errors import BadQuery, BadRequest
from storage.layout import meta_value_text
from storage.levels import LEVELS, SEVERITY, normalize_level, severity
from storage.timefmt import (
    MAX_TS_NS,
    MIN_TS_NS,
    format_timestamp,
    parse_duration,
    parse_time_arg,
    parse_timestamp,
)
from storage.tokens import tokenize

#: A longer query string is refused before parsing; real queries are a few hundred characters.
MAX_QUERY_CHARS = 65_536
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
#: Accepted spellings that mean a record field (the seed and `top 5 tags` say "tags").
_FIELD_ALIASES: dict[str, str] = {"tags": "tag"}
#: Names that pipes cannot group or rank by: unique per record, or time (use `histogram`).
_UNGROUPABLE: frozenset[str] = frozenset({"_time", "message", "timestamp", "ts_ns", "id"})

# ASCII only: a field name must not swallow a word such as "été:" typed as text.
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_COUNT_RE = re.compile(r"[0-9]{1,19}")
# Characters that end a bare word or value.  Whitespace ends it too (str.isspace).
_WORD_STOP = frozenset('()"|')
_KEYWORDS = ("OR", "AND", "NOT")

# Severity scores in order; `level:>WARN` is the next one up.
_SCORES: tuple[int, ...] = tuple(sorted(set(SEVERITY.values())))
_LEVEL_BY_SCORE: dict[int, str] = {score: level for level, score in SEVERITY.items()}

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


def _is_token(text: Any) -> bool:
    return isinstance(text, str) and tokenize(text) == [text]


def _next_score_up(score: int) -> int:
    for candidate in _SCORES:
        if candidate > score:
            return candidate
    return score + 1


def _canonical_field(name: str) -> str | None:
    """A term's field name -> the ``Field.name`` it means, or None for the special names."""
    if name in ("_time", "message"):
        return None
    name = _FIELD_ALIASES.get(name, name)
    if name in RECORD_FIELDS or name.startswith("meta."):
        return name
    return "meta." + name


def _valid_field_name(name: Any) -> bool:
    return isinstance(name, str) and (
        name in RECORD_FIELDS or (name.startswith("meta.") and len(name) > len("meta."))
    )


def _quote_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bare_ok(text: str) -> bool:
    """Whether ``text`` reads back unchanged as a bare word / value."""
    return bool(text) and not any(ch.isspace() or ch in _WORD_STOP for ch in text)


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


# --- parser --------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over the characters of one query string.

    ``pos`` is a 0-based index into ``text``; error messages report ``pos + 1``.  Lexing is done on
    demand because what a character means depends on where it is (`_time:[a, b)`)."""

    def __init__(self, text: str, now_ns: int) -> None:
        self.text = text
        self.pos = 0
        self.now_ns = now_ns
        self.depth = 0

    # -- scanning helpers --

    def error(self, pos: int, message: str) -> BadQuery:
        return BadQuery(f"query column {pos + 1}: {message}", column=pos + 1)

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_ws(self) -> None:
        text = self.text
        while self.pos < len(text) and text[self.pos].isspace():
            self.pos += 1

    def word_end(self, pos: int) -> int:
        text = self.text
        while pos < len(text) and not text[pos].isspace() and text[pos] not in _WORD_STOP:
            pos += 1
        return pos

    def found(self, pos: int) -> str:
        """What the user wrote at ``pos``, for "expected X, found Y"."""
        if pos >= len(self.text):
            return "end of query"
        char = self.text[pos]
        if char.isspace():
            return "whitespace"
        if char in _WORD_STOP or char in ",[]":
            return repr(char)
        return _show(self.text[pos : self.word_end(pos)])

    def keyword_at(self, pos: int) -> str | None:
        word = self.text[pos : self.word_end(pos)]
        return word if word in _KEYWORDS else None

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(
                pos,
                f"parentheses and NOT nest more than {MAX_DEPTH} levels deep; the limit is "
                f"{MAX_DEPTH}; remove redundant parentheses or negations",
            )

    def read_quoted(self, pos: int) -> tuple[str, int]:
        """The string of the quote opening at ``pos`` and the index just past its closing quote."""
        text = self.text
        out: list[str] = []
        index = pos + 1
        while index < len(text):
            char = text[index]
            if char == "\\" and index + 1 < len(text) and text[index + 1] in '"\\':
                out.append(text[index + 1])
                index += 2
                continue
            if char == '"':
                return "".join(out), index + 1
            out.append(char)
            index += 1
        raise self.error(
            len(text),
            f"expected '\"' to close the quote opened at column {pos + 1}, found end of query",
        )

    # -- filter --

    def parse(self) -> Query:
        self.skip_ws()
        if self.at_end() or self.text[self.pos] == "|":
            node: Node = MatchAll()
        else:
            node = self.parse_or(after=None)
        self.skip_ws()
        if not self.at_end() and self.text[self.pos] == ")":
            raise self.error(
                self.pos, "expected a term, '|' or end of query, found ')' with no '(' open"
            )
        pipes: list[Pipe] = []
        while not self.at_end():
            # parse_or stops only at the end, ')' (handled above) or '|'.
            bar_pos = self.pos
            self.pos += 1
            pipes.append(self.parse_pipe(bar_pos))
            self.skip_ws()
            if not self.at_end() and self.text[self.pos] != "|":
                raise self.error(
                    self.pos, f"expected '|' or end of query, found {self.found(self.pos)}"
                )
        return Query(simplify(node), tuple(pipes))

    def parse_or(self, after: str | None) -> Node:
        children = [self.parse_and(after)]
        while True:
            self.skip_ws()
            if self.keyword_at(self.pos) != "OR":
                break
            self.pos += 2
            children.append(self.parse_and("'OR'"))
        return children[0] if len(children) == 1 else Or(tuple(children))

    def parse_and(self, after: str | None) -> Node:
        children: list[Node] = []
        while True:
            self.skip_ws()
            if self.at_end() or self.text[self.pos] in ")|":
                break
            keyword = self.keyword_at(self.pos)
            if keyword == "OR":
                break
            if keyword == "AND" and children:
                self.pos += 3
                children.append(self.parse_unary("'AND'"))
                continue
            children.append(self.parse_unary(None if children else after))
        if not children:
            what = f"a term after {after}" if after else "a term"
            raise self.error(self.pos, f"expected {what}, found {self.found(self.pos)}")
        return children[0] if len(children) == 1 else And(tuple(children))

    def parse_unary(self, after: str | None) -> Node:
        self.skip_ws()
        start = self.pos
        if self.keyword_at(start) == "NOT":
            self.enter(start)
            self.pos += 3
            child = self.parse_unary("'NOT'")
            self.depth -= 1
            return Not(child)
        if start < len(self.text) and self.text[start] == "-" and self.dash_is_not(start):
            self.pos += 1
            if self.at_end() or self.text[self.pos].isspace():
                raise self.error(
                    self.pos,
                    "expected a term right after '-' (write -word to exclude a word, or quote "
                    f"a literal dash), found {self.found(self.pos)}",
                )
            self.enter(start)
            child = self.parse_unary("'-'")
            self.depth -= 1
            return Not(child)
        return self.parse_primary(after)

    def dash_is_not(self, pos: int) -> bool:
        """Whether the '-' at ``pos`` negates what follows.  A word made only of punctuation such
        as ``---`` is read as a word instead, so its error can suggest a substring search."""
        word = self.text[pos : self.word_end(pos)]
        return word == "-" or self.text[pos + 1] in '("~' or bool(tokenize(word)) or "*" in word

    def parse_primary(self, after: str | None) -> Node:
        self.skip_ws()
        text = self.text
        start = self.pos
        what = f"a term after {after}" if after else "a term"
        if start >= len(text) or text[start] in ")|":
            raise self.error(start, f"expected {what}, found {self.found(start)}")
        char = text[start]
        if char == "(":
            self.enter(start)
            self.pos += 1
            node = self.parse_or("'('")
            self.skip_ws()
            if self.at_end() or text[self.pos] != ")":
                raise self.error(
                    self.pos,
                    f"expected ')' to close '(' opened at column {start + 1}, "
                    f"found {self.found(self.pos)}",
                )
            self.pos += 1
            self.depth -= 1
            return node
        if char == '"':
            value, self.pos = self.read_quoted(start)
            return self.phrase_node(value, start)
        if char == "~":
            if start + 1 >= len(text) or text[start + 1] != '"':
                raise self.error(
                    start + 1,
                    f"expected '\"' after '~' (write ~\"regex\"), found {self.found(start + 1)}",
                )
            pattern, self.pos = self.read_quoted(start + 1)
            problem = _regex_problem(pattern)
            if problem is not None:
                raise self.error(
                    start,
                    f"invalid regex {_show(pattern)}: {problem}; expected a Python regular "
                    "expression such as ~\"time(d )?out\"",
                )
            return Regex(pattern)
        keyword = self.keyword_at(start)
        if keyword is not None:  # NOT is taken by parse_unary, so this is OR or AND
            raise self.error(
                start,
                f"expected {what}, found {keyword!r} (quote it, \"{keyword.lower()}\", to search "
                "for the word)",
            )
        if text.startswith('meta."', start):
            key, end = self.read_quoted(start + len("meta."))
            if end >= len(text) or text[end] != ":":
                raise self.error(
                    end, f"expected ':' after the metadata key {_show(key)}, found {self.found(end)}"
                )
            if not key:
                raise self.error(start, 'metadata key is empty; write meta."key":value')
            self.pos = end + 1
            return self.parse_field(start, "meta." + key)
        match = _NAME_RE.match(text, start)
        if match is not None and match.end() < len(text) and text[match.end()] == ":":
            self.pos = match.end() + 1
            return self.parse_field(start, match.group())
        end = self.word_end(start)
        self.pos = end
        return self.word_node(text[start:end], start)

    def phrase_node(self, value: str, pos: int) -> Node:
        tokens = tokenize(value)
        if not tokens:
            raise self.error(
                pos,
                f"phrase {_quote_string(value)} has no letters or digits to search for; use "
                f"message:{_quote_string('*' + value + '*')} for a substring or ~\"regex\"",
            )
        return Token(tokens[0]) if len(tokens) == 1 else Phrase(tuple(tokens))

    def word_node(self, word: str, pos: int) -> Node:
        if word == "*":
            return MatchAll()
        stem = word.rstrip("*")
        if word.startswith("*"):
            raise self.error(
                pos,
                f"{_show(word)} starts with a wildcard, which is not supported; use "
                f"message:*{stem.lstrip('*')}* for a substring",
            )
        tokens = tokenize(stem)
        if not tokens:
            raise self.error(
                pos,
                f"{_show(word)} has no letters or digits to search for; use message:*{stem}* "
                "for a substring or ~\"regex\"",
            )
        if stem != word:  # word*
            if len(tokens) > 1:
                raise self.error(
                    pos,
                    f"prefix {_show(word)} spans {len(tokens)} words; a prefix is one word of "
                    f"letters and digits such as {tokens[0]}*; use message:*{stem}* for a substring",
                )
            return Prefix(tokens[0])
        return Token(tokens[0]) if len(tokens) == 1 else Phrase(tuple(tokens))

    def read_value(self, name_shown: str) -> tuple[str, bool, int]:
        """A field value: (text, was quoted, its position)."""
        text = self.text
        pos = self.pos
        if pos >= len(text) or text[pos].isspace() or text[pos] in "()|":
            raise self.error(
                pos,
                f"expected a value after '{name_shown}:' (quote it if it has spaces), "
                f"found {self.found(pos)}",
            )
        if text[pos] == '"':
            value, self.pos = self.read_quoted(pos)
            return value, True, pos
        self.pos = self.word_end(pos)
        return text[pos : self.pos], False, pos

    def parse_field(self, start: int, name: str) -> Node:
        if name == "_time":
            return self.parse_time()
        canonical = _canonical_field(name)
        if name.startswith("meta.") and len(name) == len("meta."):
            raise self.error(start, "metadata key is empty; write meta.KEY:value, e.g. meta.host:web-1")
        shown = name if _NAME_RE.fullmatch(name) else "meta." + _quote_string(name[len("meta.") :])
        value, quoted, value_pos = self.read_value(shown)
        if canonical is None:  # message:
            if len(value) >= 2 and value.startswith("*") and value.endswith("*"):
                return Substring(value[1:-1])
            if quoted:
                return self.phrase_node(value, value_pos)
            if value.startswith("*") and value != "*":
                raise self.error(
                    value_pos,
                    f"expected message:*text* with a '*' at both ends (quote it if it has spaces: "
                    f'message:"*two words*"), found {_show(value)}',
                )
            return self.word_node(value, value_pos)
        if canonical == "level":
            if not quoted and value.startswith(">"):
                return self.min_severity(value, value_pos)
            if not value.strip():
                raise self.error(
                    value_pos, f"expected a level after 'level:', e.g. level:ERROR, found {_show(value)}"
                )
            return Field("level", _normalize_level(value))
        return Field(canonical, value)

    def min_severity(self, value: str, pos: int) -> Node:
        operator = ">=" if value.startswith(">=") else ">"
        bound = value[len(operator) :]
        level = _normalize_level(bound) if bound else ""
        if level not in SEVERITY:
            raise self.error(
                pos + len(operator),
                f"expected a level ({', '.join(LEVELS)}) after 'level:{operator}', "
                f"found {self.found(pos + len(operator)) if not bound else _show(bound)}",
            )
        score = SEVERITY[level]
        return MinSeverity(score if operator == ">=" else _next_score_up(score))

    def parse_time(self) -> Node:
        text = self.text
        pos = self.pos
        if pos < len(text) and text[pos] in "[(":
            return self.parse_time_range(pos)
        value, _quoted, value_pos = self.read_value("_time")
        try:
            duration_ns = parse_duration(value)
        except BadQuery as err:
            raise self.error(
                value_pos,
                f"{err.message}; _time takes a duration such as _time:15m or a range such as "
                "_time:[2024-01-01T00:00:00Z, 2024-01-02T00:00:00Z)",
            ) from None
        from_ns = self.now_ns - duration_ns
        # Earlier than any storable timestamp is the same as no lower bound.
        return TimeRange(from_ns if from_ns >= MIN_TS_NS else None, None)

    def read_bound(self, open_pos: int, what: str) -> int | None:
        """One end of ``_time:[A, B)``: None for '*', else ns from ``parse_time_arg``."""
        text = self.text
        self.skip_ws()
        pos = self.pos
        if pos < len(text) and text[pos] == '"':
            value, self.pos = self.read_quoted(pos)
            quoted = True
        else:
            end = pos
            while end < len(text) and text[end] not in ",])":
                end += 1
            value = text[pos:end].strip()
            self.pos = end
            quoted = False
        if not quoted and value == "*":
            return None
        if not quoted and not value:
            raise self.error(
                pos,
                f"expected the {what} of the time range opened at column {open_pos + 1} "
                f"(a time, or * for no bound), found {self.found(pos)}",
            )
        try:
            return parse_time_arg(value, now_ns=self.now_ns)
        except BadQuery as err:
            raise self.error(pos, err.message) from None

    def parse_time_range(self, open_pos: int) -> Node:
        text = self.text
        self.pos = open_pos + 1
        from_ns = self.read_bound(open_pos, "start")
        self.skip_ws()
        if self.at_end() or text[self.pos] != ",":
            raise self.error(
                self.pos,
                f"expected ',' between the start and end of the time range opened at column "
                f"{open_pos + 1}, found {self.found(self.pos)}",
            )
        self.pos += 1
        to_ns = self.read_bound(open_pos, "end")
        self.skip_ws()
        if self.at_end() or text[self.pos] not in "])":
            raise self.error(
                self.pos,
                f"expected ']' or ')' to close the time range opened at column {open_pos + 1}, "
                f"found {self.found(self.pos)}",
            )
        end_inclusive = text[self.pos] == "]"
        self.pos += 1
        # Store the half-open form [from, to).
        if from_ns is not None and text[open_pos] == "(":
            from_ns += 1
        if to_ns is not None and end_inclusive:
            to_ns += 1
            if to_ns > MAX_TS_NS:  # every storable timestamp is below it: no upper bound
                to_ns = None
        if from_ns is not None and (from_ns > MAX_TS_NS or (to_ns is not None and from_ns >= to_ns)):
            raise self.error(
                open_pos,
                f"the time range {_show(text[open_pos : self.pos])} is empty (its start is not "
                "before its end); put the earlier time first",
            )
        return TimeRange(from_ns, to_ns)

    # -- pipes --

    def pipe_word(self) -> tuple[str, int]:
        self.skip_ws()
        pos = self.pos
        end = pos
        text = self.text
        while end < len(text) and not text[end].isspace() and text[end] not in '(),|"':
            end += 1
        self.pos = end
        return text[pos:end], pos

    def expect_word(self, expected: str, context: str) -> None:
        word, pos = self.pipe_word()
        if word != expected:
            raise self.error(pos, f"expected '{expected}' {context}, found {self.found(pos)}")

    def expect_char(self, char: str, context: str) -> None:
        self.skip_ws()
        if self.at_end() or self.text[self.pos] != char:
            raise self.error(self.pos, f"expected '{char}' {context}, found {self.found(self.pos)}")
        self.pos += 1

    def pipe_count(self, context: str) -> int:
        word, pos = self.pipe_word()
        if _COUNT_RE.fullmatch(word) is None or not 0 < int(word) <= MAX_PIPE_COUNT:
            raise self.error(
                pos, f"expected a positive whole number {context}, found {self.found(pos)}"
            )
        return int(word)

    def pipe_field(self, context: str) -> str:
        self.skip_ws()
        pos = self.pos
        text = self.text
        if text.startswith('meta."', pos):
            key, self.pos = self.read_quoted(pos + len("meta."))
            if not key:
                raise self.error(pos, 'metadata key is empty; write meta."key"')
            return "meta." + key
        word, pos = self.pipe_word()
        if _NAME_RE.fullmatch(word) is None or word == "meta.":
            raise self.error(
                pos,
                f"expected a field name {context} (level, source, tag, request_id, user_id, "
                f"thread_id or a metadata key), found {self.found(pos)}",
            )
        if word in _UNGROUPABLE:
            raise self.error(
                pos,
                f"cannot group or rank by {word!r}; use 'histogram 1m' for time buckets, or a "
                "field such as level, source, tag or a metadata key",
            )
        canonical = _canonical_field(word)
        return canonical if canonical is not None else "meta." + word

    def parse_pipe(self, bar_pos: int) -> Pipe:
        name, pos = self.pipe_word()
        if name == "stats":
            self.expect_word("count", "after 'stats' (only count() is supported)")
            self.expect_char("(", "after 'stats count'")
            self.expect_char(")", "after 'stats count('")
            save = self.pos
            word, _ = self.pipe_word()
            if word != "by":
                self.pos = save
                return StatsPipe(())
            self.skip_ws()
            if self.at_end() or self.text[self.pos] != "(":
                return StatsPipe((self.pipe_field("after 'by'"),))
            open_pos = self.pos
            self.pos += 1
            fields = [self.pipe_field("after 'by ('")]
            while True:
                self.skip_ws()
                if not self.at_end() and self.text[self.pos] == ",":
                    self.pos += 1
                    fields.append(self.pipe_field("after ','"))
                    continue
                if not self.at_end() and self.text[self.pos] == ")":
                    self.pos += 1
                    return StatsPipe(tuple(fields))
                raise self.error(
                    self.pos,
                    f"expected ',' or ')' to close '(' opened at column {open_pos + 1}, "
                    f"found {self.found(self.pos)}",
                )
        if name == "top":
            count = self.pipe_count("after 'top' (top 5 tag)")
            return TopPipe(count, self.pipe_field("after 'top N'"))
        if name == "histogram":
            word, word_pos = self.pipe_word()
            try:
                return HistogramPipe(parse_duration(word))
            except BadQuery as err:
                raise self.error(word_pos, f"{err.message} (histogram 1m)") from None
        if name == "sort":
            self.expect_word("by", "after 'sort' (sort by _time desc)")
            self.expect_word("_time", "after 'sort by' (only _time is sortable)")
            word, word_pos = self.pipe_word()
            if word not in ("asc", "desc"):
                raise self.error(
                    word_pos,
                    f"expected 'asc' or 'desc' after 'sort by _time', found {self.found(word_pos)}",
                )
            return SortPipe(word == "desc")
        if name == "limit":
            return LimitPipe(self.pipe_count("after 'limit' (limit 10)"))
        raise self.error(
            pos,
            "expected a pipe (stats, top, histogram, sort or limit) after '|' at column "
            f"{bar_pos + 1}, found {self.found(pos)}",
        )


def parse_query(text: str, *, now_ns: int) -> Query:
    """Parse a query string.  ``now_ns`` anchors relative times (``_time:15m``, ``-1h``).

    Whitespace only is ``MatchAll``.  The filter comes back simplified."""
    if not isinstance(text, str):
        raise BadQuery(f"query must be a string, not {type(text).__name__} {_show(text)}")
    if len(text) > MAX_QUERY_CHARS:
        raise BadQuery(
            f"query is {len(text)} characters; the limit is {MAX_QUERY_CHARS}; shorten it, e.g. "
            "by moving repeated terms into a filter"
        )
    return _Parser(text, now_ns).parse()


# --- building, simplifying, formatting -----------------------------------------------------------


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


def _format_field_name(name: str) -> str:
    if name in RECORD_FIELDS or _NAME_RE.fullmatch(name):
        return name
    return "meta." + _quote_string(name[len("meta.") :])


def _format_value(value: str, *, level: bool = False) -> str:
    # A bare level value starting with '>' would read back as a severity bound.
    if _bare_ok(value) and not (level and value.startswith(">")):
        return value
    return _quote_string(value)


def _format(node: Node, context: str) -> str:
    """``context`` is what encloses the node: 'top' / 'or' (nothing binds looser), 'and', 'not'."""
    if isinstance(node, MatchAll):
        return "*"
    if isinstance(node, And):
        text = " ".join(_format(child, "and") for child in node.children)
        return f"({text})" if context == "not" else text
    if isinstance(node, Or):
        text = " OR ".join(_format(child, "or") for child in node.children)
        return f"({text})" if context in ("and", "not") else text
    if isinstance(node, Not):
        return "NOT " + _format(node.child, "not")
    if isinstance(node, Token):
        return node.text
    if isinstance(node, Phrase):
        return _quote_string(" ".join(node.tokens))
    if isinstance(node, Prefix):
        return node.prefix + "*"
    if isinstance(node, Field):
        value = _format_value(node.value, level=node.name == "level")
        return f"{_format_field_name(node.name)}:{value}"
    if isinstance(node, MinSeverity):
        level = _LEVEL_BY_SCORE.get(node.score)
        if level is None:  # not canonical; format_query simplifies first, so only direct callers
            raise ValueError(f"MinSeverity({node.score}) has no level name; simplify() it first")
        return f"level:>={level}"
    if isinstance(node, TimeRange):
        start = "*" if node.from_ns is None else format_timestamp(node.from_ns)
        end = "*" if node.to_ns is None else format_timestamp(node.to_ns)
        return f"_time:[{start}, {end})"
    if isinstance(node, Substring):
        return "message:" + _format_value("*" + node.text + "*")
    if isinstance(node, Regex):
        return "~" + _quote_string(node.pattern)
    raise TypeError(f"not a query node: {_show(node)}")


def format_query(node: Node) -> str:
    """The canonical query text of ``node``: ``parse_query(format_query(n)).filter == simplify(n)``.
    ``MatchAll`` is ``*``; times are RFC 3339 UTC, so the text does not depend on ``now``."""
    return _format(simplify(node), "top")


_DURATION_UNITS: tuple[tuple[str, int], ...] = (
    ("w", 7 * 86_400 * 10**9),
    ("d", 86_400 * 10**9),
    ("h", 3_600 * 10**9),
    ("m", 60 * 10**9),
    ("s", 10**9),
    ("ms", 10**6),
    ("us", 10**3),
    ("ns", 1),
)


def _format_duration(duration_ns: int) -> str:
    for unit, unit_ns in _DURATION_UNITS:
        if duration_ns % unit_ns == 0:
            return f"{duration_ns // unit_ns}{unit}"
    raise AssertionError("unreachable: every int is a multiple of 1 ns")


def _format_pipe(pipe: Pipe) -> str:
    if isinstance(pipe, StatsPipe):
        by = f" by ({', '.join(map(_format_field_name, pipe.by))})" if pipe.by else ""
        return "stats count()" + by
    if isinstance(pipe, TopPipe):
        return f"top {pipe.n} {_format_field_name(pipe.field)}"
    if isinstance(pipe, HistogramPipe):
        return f"histogram {_format_duration(pipe.interval_ns)}"
    if isinstance(pipe, SortPipe):
        return f"sort by _time {'desc' if pipe.desc else 'asc'}"
    if isinstance(pipe, LimitPipe):
        return f"limit {pipe.n}"
    raise TypeError(f"not a pipe: {_show(pipe)}")


def format_full_query(query: Query) -> str:
    """``format_query`` of the filter followed by the pipes; parses back to the same Query
    (with the filter simplified)."""
    return " | ".join([format_query(query.filter), *map(_format_pipe, query.pipes)])


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


# --- the seed engine's filter dict ---------------------------------------------------------------

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


# --- wire form -----------------------------------------------------------------------------------
# Nested lists whose first item names the node:
#   ["all"]  ["and", [child, ...]]  ["or", [child, ...]]  ["not", child]  ["token", text]
#   ["phrase", [token, ...]]  ["prefix", text]  ["field", name, value]  ["min_severity", score]
#   ["time", from_ns | None, to_ns | None]  ["substring", text]  ["regex", pattern]


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
