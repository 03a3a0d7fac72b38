"""The query language (DESIGN §7): query text -> ``Query`` and back.

This module owns:

- ``parse_query``: query text -> ``Query``; every syntax error is a ``BadQuery`` whose message starts
  with ``query column N:`` (1-based) and says what was expected and what was found;
- ``format_query`` / ``format_full_query``: the canonical text of a filter / a whole query, with
  ``parse_query(format_query(n)).filter == simplify(n)``;
- the helpers the parser and the formatter share: quoting, bare-word checks and field-name
  canonicalization.

The tree, the pipes and ``simplify`` are in ``storage.query``.

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

from storage.errors import BadQuery
from storage.levels import LEVELS, SEVERITY
from storage.query import (
    MAX_DEPTH,
    MAX_PIPE_COUNT,
    RECORD_FIELDS,
    _SCORES,
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
    simplify,
)
from storage.timefmt import MAX_TS_NS, MIN_TS_NS, format_timestamp, parse_duration, parse_time_arg
from storage.tokens import tokenize

#: A longer query string is refused before parsing; real queries are a few hundred characters.
MAX_QUERY_CHARS = 65_536


# --- names and small helpers ---------------------------------------------------------------------

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

_LEVEL_BY_SCORE: dict[int, str] = {score: level for level, score in SEVERITY.items()}


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


def _quote_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bare_ok(text: str) -> bool:
    """Whether ``text`` reads back unchanged as a bare word / value."""
    return bool(text) and not any(ch.isspace() or ch in _WORD_STOP for ch in text)


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


# --- formatting ----------------------------------------------------------------------------------


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
