"""Evaluating a query tree against one sealed block with its indexes.

``candidates(node, view)`` returns ``(bits, exact)``: ``bits`` is a row bitmap (Python int) that
contains every matching row, and ``exact`` says whether it contains only matching rows.  Exact
answers come from posting lists, header counts and the sorted timestamp column; inexact ones
(phrases, prefixes, substrings, regexes, one-row terms that only the bloom filter knows) are
verified row by row with ``storage.query.matches`` — the same evaluator the tests use as oracle —
on records built from just the columns the query needs.

Pure logic: a ``BlockView`` (implemented by the store) supplies postings, bloom answers and
decoded columns; nothing here opens a transaction.
"""

from __future__ import annotations

import functools
from bisect import bisect_left, bisect_right
from typing import Any, Protocol

from storage import layout
from storage import query as q
from storage.header import BlockHeader
from storage.levels import severity
from storage.postings import all_rows, row_range, rows_of

_FIELD_TERM = {
    "level": layout.term_level,
    "source": layout.term_source,
    "tag": layout.term_tag,
    "request_id": layout.term_request,
    "user_id": layout.term_user,
    "thread_id": layout.term_thread,
}


class BlockView(Protocol):
    header: BlockHeader

    def postings(self, term: str) -> int | None:
        """Row bitmap of a term's posting list, or None when the block stores none for it."""

    def may_contain(self, term: str) -> bool:
        """Bloom answer: False means the block certainly lacks the term."""

    def column(self, column: int) -> list[Any]:
        """Decoded values of one column, one per row (cached by the view)."""

    def lowered_messages(self) -> tuple[str, list[str]]:
        """(all messages lower-cased and joined by newlines, the lower-cased messages)."""


@functools.lru_cache(maxsize=4096)
def field_term(name: str, value: str) -> str:
    """The index term of ``name:value`` (cached: a query asks once per block it visits)."""
    if name.startswith("meta."):
        return layout.term_meta(name[5:], value)
    return _FIELD_TERM[name](value)


def _term(term: str, view: BlockView, header_counts: dict[str, int] | None = None,
          value: str | None = None) -> tuple[int, bool]:
    exact_term = layout.term_bytes(term)[1]
    n = view.header.count
    if header_counts is not None:
        # level / source / tag: the header knows every value, and each has a posting list
        if value not in header_counts:
            return 0, True
    elif not view.may_contain(term):
        return 0, True
    bits = view.postings(term)
    if bits is not None:
        return bits, exact_term
    if header_counts is None:
        # a term of one row only (or a bloom false positive): verify the rows
        return all_rows(n), False
    return 0, True


def candidates(node: q.Node, view: BlockView) -> tuple[int, bool]:
    header = view.header
    n = header.count
    if isinstance(node, q.MatchAll):
        return all_rows(n), True
    if isinstance(node, q.Token):
        return _term(layout.term_token(node.text), view)
    if isinstance(node, q.Field):
        term = field_term(node.name, node.value)
        counts = header.field_counts(node.name)
        return _term(term, view, counts, node.value)
    if isinstance(node, q.And):
        bits, exact = all_rows(n), True
        for child in node.children:  # ordered cheapest first by prepare()
            child_bits, child_exact = candidates(child, view)
            bits &= child_bits
            exact = exact and child_exact
            if not bits:
                return 0, True
        return bits, exact
    if isinstance(node, q.Or):
        bits, exact = 0, True
        for child in node.children:
            child_bits, child_exact = candidates(child, view)
            bits |= child_bits
            exact = exact and child_exact
        return bits, exact
    if isinstance(node, q.Not):
        child_bits, child_exact = candidates(node.child, view)
        if child_exact:
            return all_rows(n) & ~child_bits, True
        return all_rows(n), False
    if isinstance(node, q.MinSeverity):
        bits = 0
        exact = True
        for level in header.levels:
            if severity(level) >= node.score:
                level_bits, level_exact = _term(layout.term_level(level), view, header.levels, level)
                bits |= level_bits
                exact = exact and level_exact
        return bits, exact
    if isinstance(node, q.TimeRange):
        lo_ts, hi_ts = node.from_ns, node.to_ns
        if (lo_ts is None or header.min_ts >= lo_ts) and (hi_ts is None or header.max_ts < hi_ts):
            return all_rows(n), True
        if (lo_ts is not None and header.max_ts < lo_ts) or (hi_ts is not None and header.min_ts >= hi_ts):
            return 0, True
        ts = view.column(layout.COL_TS)
        lo = 0 if lo_ts is None else bisect_left(ts, lo_ts)
        hi = n if hi_ts is None else bisect_left(ts, hi_ts)
        return row_range(lo, hi), True
    if isinstance(node, q.Phrase):
        bits, _ = candidates(q.And(tuple(q.Token(t) for t in node.tokens)), view)
        return bits, not bits  # adjacency is verified on the message
    if isinstance(node, (q.Prefix, q.Substring, q.Regex)):
        return all_rows(n), False
    raise TypeError(f"unknown query node {node!r}")


def prepare(node: q.Node) -> q.Node:
    """The tree to evaluate on every block of one query: AND children ordered so selective,
    index-answered terms come first (done once per query, not once per block)."""
    if isinstance(node, q.And):
        return q.And(tuple(sorted((prepare(c) for c in node.children), key=_cost)))
    if isinstance(node, q.Or):
        return q.Or(tuple(prepare(c) for c in node.children))
    if isinstance(node, q.Not):
        return q.Not(prepare(node.child))
    return node


def header_answerable(node: q.Node) -> bool:
    """Whether ``search.header_count`` can ever answer for this tree (no message terms etc.)."""
    if isinstance(node, (q.MatchAll, q.MinSeverity, q.TimeRange)):
        return True
    if isinstance(node, q.Field):
        return node.name in ("level", "source", "tag")
    if isinstance(node, q.Not):
        return header_answerable(node.child)
    if isinstance(node, q.And):
        return all(header_answerable(c) for c in node.children)
    return False


def _cost(node: q.Node) -> int:
    """Evaluate selective, index-answered children of an AND first."""
    if isinstance(node, (q.Field, q.Token)):
        return 0
    if isinstance(node, (q.MinSeverity, q.Phrase)):
        return 1
    if isinstance(node, q.TimeRange):
        return 2
    if isinstance(node, (q.And, q.Or, q.Not)):
        return 3
    return 4


def block_filter(node: q.Node) -> tuple[list[str], list[tuple[str, str]]]:
    """What every matching block must hold, checkable without reading it: bloom terms, and
    (field, value) pairs the header counts.  Only terms ANDed at the top are required."""
    terms: list[str] = []
    fields: list[tuple[str, str]] = []
    nodes = node.children if isinstance(node, q.And) else (node,)
    for child in nodes:
        if isinstance(child, q.Token):
            terms.append(layout.term_token(child.text))
        elif isinstance(child, q.Phrase):
            terms.extend(layout.term_token(t) for t in child.tokens)
        elif isinstance(child, q.Field):
            if child.name in ("level", "source", "tag"):
                fields.append((child.name, child.value))
            else:
                terms.append(field_term(child.name, child.value))
    return terms, fields


# --- verification -------------------------------------------------------------------------------


def needed_columns(node: q.Node) -> set[int]:
    """Columns that ``storage.query.matches`` reads for ``node``."""
    cols: set[int] = set()
    _collect(node, cols)
    return cols


def _collect(node: q.Node, cols: set[int]) -> None:
    if isinstance(node, (q.And, q.Or)):
        for child in node.children:
            _collect(child, cols)
    elif isinstance(node, q.Not):
        _collect(node.child, cols)
    elif isinstance(node, (q.Token, q.Phrase, q.Prefix, q.Substring, q.Regex)):
        cols.add(layout.COL_MESSAGE)
    elif isinstance(node, q.Field):
        if node.name.startswith("meta."):
            cols.add(layout.COL_METADATA)
        else:
            column_of = {"tag": "tags"}.get(node.name, node.name)
            cols.add(layout.FIELD_COLUMN[column_of])
    elif isinstance(node, q.MinSeverity):
        cols.add(layout.COL_LEVEL)
    elif isinstance(node, q.TimeRange):
        cols.add(layout.COL_TS)


def required_substrings(node: q.Node) -> set[str]:
    """Lower-case strings every matching message must contain (a cheap pre-check before tokenizing)."""
    if isinstance(node, q.Token):
        return {node.text}
    if isinstance(node, q.Phrase):
        return set(node.tokens)
    if isinstance(node, q.Prefix):
        return {node.prefix}
    if isinstance(node, q.Substring):
        return {node.text.lower()}
    if isinstance(node, q.And):
        found: set[str] = set()
        for child in node.children:
            found |= required_substrings(child)
        return found
    return set()


_COLUMN_FIELD = {col: name for name, col in layout.FIELD_COLUMN.items()}


def _rows_containing(joined: str, starts: list[int], needle: str) -> int:
    """Bitmap of rows whose (lower-cased) message contains ``needle``, by str.find over the joined text."""
    bits = 0
    find = joined.find
    pos = find(needle)
    while pos != -1:
        row = bisect_right(starts, pos) - 1
        bits |= 1 << row
        # continue from the next row: one hit per row is enough
        next_start = starts[row + 1] if row + 1 < len(starts) else len(joined)
        pos = find(needle, next_start)
    return bits


def verify(node: q.Node, view: BlockView, bits: int) -> int:
    """Keep only the candidate rows that really match."""
    cols = needed_columns(node)
    decoded = {_COLUMN_FIELD[c]: view.column(c) for c in cols}
    if "message" in decoded:
        needles = required_substrings(node)
        if needles:
            # a row whose message lacks a required substring cannot match; a needle holding a newline
            # could span two rows of the joined text, so it is left to the row check below
            joined, starts = view.lowered_messages()
            for needle in needles:
                if "\n" in needle:
                    continue
                bits &= _rows_containing(joined, starts, needle)
                if not bits:
                    return 0
    defaults: dict[str, Any] = {"ts_ns": 0, "id": 0, "level": "", "source": "", "tags": [], "message": "",
                                "metadata": {}, "thread_id": None, "request_id": None, "user_id": None}
    out = 0
    matches = q.matches
    for row in rows_of(bits):
        record = dict(defaults)
        for name, values in decoded.items():
            record[name] = values[row]
        if matches(node, record):
            out |= 1 << row
    return out


def matching_rows(node: q.Node, view: BlockView) -> int:
    """The exact bitmap of rows of the block that match ``node``."""
    bits, exact = candidates(node, view)
    if exact or not bits:
        return bits
    return verify(node, view, bits)
