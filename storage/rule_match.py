"""Counting alert-rule matches in an ingest batch, per second of event time (DESIGN §5).

A shard runs ``RuleSet.count(records)`` on every batch it commits; the per-second counts ride back on
the ingest acknowledgement and the coordinator sums windows centrally.  Evaluating every rule on
every record would cost rules × records calls of ``storage.query.matches``.  Instead the batch is
indexed once — as row bitmaps (Python ints), only for the fields, values and message tokens some
rule mentions — and each rule's tree is evaluated on those bitmaps the way ``storage.planner``
evaluates a query on a block: AND/OR/NOT of exact bitmaps is the answer; only rules with inexact
parts (phrases, prefixes, substrings, regexes) check their candidate rows with ``matches``, the same
evaluator queries use.

Pure: records in, counts out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping

from storage import query as q
from storage import querywire
from storage.aggregate import record_values, resolve_field
from storage.layout import meta_value_text
from storage.levels import severity
from storage.postings import rows_of
from storage.tokens import ascii_token_set, token_set

#: newest matching records kept per rule and batch, as alert evidence
SAMPLES_PER_RULE = 5
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class RuleSpec:
    """One rule as shards see it: an id, its filter, and the field to group by (or None)."""

    rule_id: str
    node: q.Node
    group_by: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.rule_id, "filter": querywire.to_wire(self.node), "group_by": self.group_by}

    @staticmethod
    def from_wire(obj: Any) -> "RuleSpec":
        from storage.errors import BadRequest

        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise BadRequest(f"a rule must be a map with a string id, got {obj!r:.100}")
        group_by = obj.get("group_by")
        if group_by is not None and not isinstance(group_by, str):
            raise BadRequest(f"rule {obj['id']!r}: group_by must be a string or null")
        return RuleSpec(obj["id"], querywire.from_wire(obj.get("filter")), group_by)


def _fields_and_tokens(node: q.Node, fields: set[str], tokens: set[str]) -> None:
    """Collect what the batch index must cover for ``node``."""
    if isinstance(node, (q.And, q.Or)):
        for child in node.children:
            _fields_and_tokens(child, fields, tokens)
    elif isinstance(node, q.Not):
        _fields_and_tokens(node.child, fields, tokens)
    elif isinstance(node, q.Field):
        fields.add(node.name)
    elif isinstance(node, q.MinSeverity):
        fields.add("level")
    elif isinstance(node, q.Token):
        tokens.add(node.text)
    elif isinstance(node, q.Phrase):
        tokens.update(node.tokens)


def _bits(rows: list[int]) -> int:
    """A row bitmap from ascending row numbers, built once (OR-ing into a growing int per row
    would copy the int every time)."""
    if not rows:
        return 0
    mask = bytearray(rows[-1] // 8 + 1)
    for row in rows:
        mask[row >> 3] |= 1 << (row & 7)
    return int.from_bytes(mask, "little")


class _BatchIndex:
    """Rows of one batch by the field values and tokens the rules use, built once per batch as
    row lists; a value's bitmap is made only when a rule asks for that value."""

    def __init__(self, records: list[Mapping[str, Any]], fields: set[str], tokens: frozenset[str],
                 ascii_tokens: dict[bytes, str]) -> None:
        self.records = records
        self.n = len(records)
        self.all = (1 << self.n) - 1
        self.values: dict[str, dict[str, list[int]]] = {}
        for name in fields:
            by_value: defaultdict[str, list[int]] = defaultdict(list)
            if name == "tag":
                for i, record in enumerate(records):
                    for tag in record["tags"]:
                        by_value[tag].append(i)
            elif name.startswith("meta."):
                key = name[5:]
                for i, record in enumerate(records):
                    value = record["metadata"].get(key)
                    if value is not None:
                        by_value[meta_value_text(value)].append(i)
            elif name in ("level", "source", "request_id", "user_id", "thread_id"):
                for i, record in enumerate(records):
                    value = record[name]
                    if value is not None:
                        by_value[value].append(i)
            self.values[name] = by_value
        self.tokens: defaultdict[str, list[int]] = defaultdict(list)
        if tokens:
            # ASCII messages (nearly all) are tokenized as bytes and intersected with the rules'
            # tokens in C; the others take the regex
            wanted = ascii_tokens.keys()
            for i, record in enumerate(records):
                message = record["message"]
                if message.isascii():
                    for found in ascii_token_set(message) & wanted:
                        self.tokens[ascii_tokens[found]].append(i)
                else:
                    for token in token_set(message) & tokens:
                        self.tokens[token].append(i)
        self._cache: dict[tuple[str, str], int] = {}
        self._seconds: list[int] | None = None
        self._second_bits: list[tuple[int, int]] | None = None

    @property
    def seconds(self) -> list[int]:
        """The second of event time of every row."""
        if self._seconds is None:
            self._seconds = [record["ts_ns"] // NS_PER_S for record in self.records]
        return self._seconds

    @property
    def second_bits(self) -> list[tuple[int, int]]:
        """(second, bitmap of the rows in it), newest second first."""
        if self._second_bits is None:
            rows: defaultdict[int, list[int]] = defaultdict(list)
            for i, second in enumerate(self.seconds):
                rows[second].append(i)
            self._second_bits = [(second, _bits(rows[second])) for second in sorted(rows, reverse=True)]
        return self._second_bits

    def counts_per_second(self, bits: int) -> dict[tuple[int, str], int]:
        """{(second, ""): matches} for the rows in ``bits``: one AND and popcount per second of the
        batch when many rows match, else a pass over the matching rows."""
        second_bits = self.second_bits
        if bits.bit_count() > 2 * len(second_bits):
            counts = {}
            for second, sbits in second_bits:
                n = (bits & sbits).bit_count()
                if n:
                    counts[second, ""] = n
            return counts
        seconds = self.seconds
        out: dict[tuple[int, str], int] = {}
        for i in rows_of(bits):
            key = (seconds[i], "")
            out[key] = out.get(key, 0) + 1
        return out

    def newest(self, bits: int, k: int) -> list[int]:
        """The ``k`` newest rows of ``bits`` by (ts_ns, id), newest first: whole seconds from the
        newest down until ``k`` rows are in hand, then a sort of those only."""
        records = self.records
        picked: list[int] = []
        for _, sbits in self.second_bits:
            inside = bits & sbits
            if inside:
                picked.extend(rows_of(inside))
                if len(picked) >= k:
                    break
        picked.sort(key=lambda i: (records[i]["ts_ns"], records[i]["id"]), reverse=True)
        return picked[:k]

    def field_bits(self, name: str, value: str) -> int:
        key = (name, value)
        bits = self._cache.get(key)
        if bits is None:
            bits = self._cache[key] = _bits(self.values.get(name, {}).get(value, []))
        return bits

    def _token_bits(self, token: str) -> int:
        key = ("\x00token", token)
        bits = self._cache.get(key)
        if bits is None:
            bits = self._cache[key] = _bits(self.tokens.get(token, []))
        return bits

    def candidates(self, node: q.Node) -> tuple[int, bool]:
        """(rows that may match, whether exactly those match) — as storage.planner.candidates."""
        if isinstance(node, q.MatchAll):
            return self.all, True
        if isinstance(node, q.Field):
            return self.field_bits(node.name, node.value), True
        if isinstance(node, q.Token):
            return self._token_bits(node.text), True
        if isinstance(node, q.MinSeverity):
            bits = 0
            for level in self.values.get("level", {}):
                if severity(level) >= node.score:
                    bits |= self.field_bits("level", level)
            return bits, True
        if isinstance(node, q.And):
            bits, exact = self.all, True
            for child in node.children:
                child_bits, child_exact = self.candidates(child)
                bits &= child_bits
                exact = exact and child_exact
                if not bits:
                    return 0, True
            return bits, exact
        if isinstance(node, q.Or):
            bits, exact = 0, True
            for child in node.children:
                child_bits, child_exact = self.candidates(child)
                bits |= child_bits
                exact = exact and child_exact
            return bits, exact
        if isinstance(node, q.Not):
            child_bits, child_exact = self.candidates(node.child)
            return (self.all & ~child_bits, True) if child_exact else (self.all, False)
        if isinstance(node, q.Phrase):
            bits = self.all
            for token in node.tokens:
                bits &= self._token_bits(token)
            return bits, not bits  # adjacency is checked on the message
        return self.all, False  # prefix, substring, regex, time range: check every row


class RuleSet:
    """The active rules of a shard (immutable; replace it to change rules)."""

    def __init__(self, specs: list[RuleSpec] | tuple[RuleSpec, ...] = ()) -> None:
        self.specs = list(specs)
        self._groups = [resolve_field(spec.group_by) if spec.group_by else None for spec in self.specs]
        fields: set[str] = set()
        tokens: set[str] = set()
        for spec in self.specs:
            _fields_and_tokens(spec.node, fields, tokens)
        self._fields = fields
        self._tokens = frozenset(tokens)
        #: the rules' ASCII tokens as bytes -> as text (messages are tokenized as bytes)
        self._ascii_tokens = {token.encode(): token for token in tokens if token.isascii()}

    def __len__(self) -> int:
        return len(self.specs)

    def count(self, records: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """``{rule_id: {"counts": [[second, group, n], ...], "samples": [record, ...]}}`` for every
        rule with at least one match; ``group`` is the group value ("" without group_by); samples are
        the rule's newest matching records of the batch, newest first."""
        if not self.specs or not records:
            return {}
        index = _BatchIndex(records, self._fields, self._tokens, self._ascii_tokens)
        out: dict[str, dict[str, Any]] = {}
        for spec, group in zip(self.specs, self._groups):
            bits, exact = index.candidates(spec.node)
            if not bits:
                continue
            if not exact:
                node = spec.node
                matched = [i for i in rows_of(bits) if q.matches(node, records[i])]
                if not matched:
                    continue
                bits = _bits(matched)
            if group:
                seconds = index.seconds
                counts: dict[tuple[int, str], int] = {}
                for i in rows_of(bits):
                    second = seconds[i]
                    for value in record_values(records[i], *group):
                        counts[second, value] = counts.get((second, value), 0) + 1
            else:
                counts = index.counts_per_second(bits)
            if counts:
                out[spec.rule_id] = {
                    "counts": [[second, value, n] for (second, value), n in counts.items()],
                    "samples": [dict(records[i]) for i in index.newest(bits, SAMPLES_PER_RULE)],
                }
        return out
