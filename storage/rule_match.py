"""Counting alert-rule matches in an ingest batch, per second of event time (DESIGN §5).

A shard runs ``RuleSet.count(records)`` on every batch it commits; the per-second counts ride back on
the ingest acknowledgement and the coordinator sums windows centrally.  Evaluating every rule on
every record would cost rules × records calls of ``storage.query.matches``; instead each rule is
analysed once for what a matching record must have (a level at least / equal to, a source, a tag,
message tokens) and the batch is indexed once by those keys, so a rule only checks the records that
can match it.  The final decision is always ``storage.query.matches`` — the same evaluator queries use.

Pure: records in, counts out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from storage import query as q
from storage.aggregate import record_values, resolve_field
from storage.levels import severity
from storage.tokens import token_set

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
        return {"id": self.rule_id, "filter": q.to_wire(self.node), "group_by": self.group_by}

    @staticmethod
    def from_wire(obj: Any) -> "RuleSpec":
        from storage.errors import BadRequest

        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise BadRequest(f"a rule must be a map with a string id, got {obj!r:.100}")
        group_by = obj.get("group_by")
        if group_by is not None and not isinstance(group_by, str):
            raise BadRequest(f"rule {obj['id']!r}: group_by must be a string or null")
        return RuleSpec(obj["id"], q.from_wire(obj.get("filter")), group_by)


@dataclass
class _Plan:
    spec: RuleSpec
    levels: frozenset[str] | None = None  # a matching record's level is one of these
    min_score: int | None = None  # ... or at least this severity
    sources: frozenset[str] | None = None
    tags: frozenset[str] = frozenset()  # every one of these tags
    tokens: frozenset[str] = frozenset()  # every one of these message tokens
    group: tuple[str, str] | None = field(default=None)
    #: the conditions above are the whole rule: a record that passes them matches, no evaluator call
    exact: bool = False


def _plan(spec: RuleSpec) -> _Plan:
    plan = _Plan(spec, group=resolve_field(spec.group_by) if spec.group_by else None)
    children = spec.node.children if isinstance(spec.node, q.And) else (spec.node,)
    tags: set[str] = set()
    tokens: set[str] = set()
    exact = True
    for child in children:
        if isinstance(child, q.Field) and child.name == "level":
            plan.levels = frozenset({child.value}) if plan.levels is None else plan.levels & {child.value}
        elif isinstance(child, q.Field) and child.name == "source":
            plan.sources = frozenset({child.value}) if plan.sources is None else plan.sources & {child.value}
        elif isinstance(child, q.Field) and child.name == "tag":
            tags.add(child.value)
        elif isinstance(child, q.MinSeverity):
            plan.min_score = child.score if plan.min_score is None else max(plan.min_score, child.score)
        elif isinstance(child, q.Token):
            tokens.add(child.text)
        elif isinstance(child, q.Phrase):
            tokens.update(child.tokens)
            exact = False  # adjacency still has to be checked
        elif isinstance(child, q.Or) and all(isinstance(c, q.Field) and c.name == "level" for c in child.children):
            values = frozenset(c.value for c in child.children)
            plan.levels = values if plan.levels is None else plan.levels & values
        elif not isinstance(child, q.MatchAll):
            exact = False
    plan.tags = frozenset(tags)
    plan.tokens = frozenset(tokens)
    plan.exact = exact
    return plan


class RuleSet:
    """The active rules of a shard (immutable; replace it to change rules)."""

    def __init__(self, specs: Iterable[RuleSpec] = ()) -> None:
        self.plans = [_plan(spec) for spec in specs]
        self._tokens = frozenset(t for plan in self.plans for t in plan.tokens)
        self._need_tokens = bool(self._tokens)

    def __len__(self) -> int:
        return len(self.plans)

    def count(self, records: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """``{rule_id: {"counts": [[second, group, n], ...], "samples": [record, ...]}}`` for every
        rule with at least one match; ``group`` is the group value ("" without group_by); samples are
        the rule's newest matching records of the batch, newest first."""
        if not self.plans or not records:
            return {}
        by_level: dict[str, list[int]] = {}
        by_source: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            by_level.setdefault(record["level"], []).append(i)
            by_source.setdefault(record["source"], []).append(i)
        # records holding each token some rule needs: every message is tokenized once per batch,
        # not once per rule
        by_token: dict[str, set[int]] = {}
        if self._need_tokens:
            wanted = self._tokens
            for i, record in enumerate(records):
                for token in token_set(record["message"]) & wanted:
                    by_token.setdefault(token, set()).add(i)
        out: dict[str, dict[str, Any]] = {}
        for plan in self.plans:
            candidates = self._candidates(plan, records, by_level, by_source)
            if plan.tokens:
                holders = set.intersection(*(by_token.get(t, set()) for t in plan.tokens))
                candidates = [i for i in candidates if i in holders]
            counts: dict[tuple[int, str], int] = {}
            matched: list[int] = []
            node = plan.spec.node
            for i in candidates:
                record = records[i]
                if plan.tags and not plan.tags.issubset(record["tags"]):
                    continue
                if not plan.exact and not q.matches(node, record):
                    continue
                groups = record_values(record, *plan.group) if plan.group else [""]
                second = record["ts_ns"] // NS_PER_S
                for group in groups:
                    counts[second, group] = counts.get((second, group), 0) + 1
                matched.append(i)
            if counts:
                newest = sorted(matched, key=lambda i: (records[i]["ts_ns"], records[i]["id"]), reverse=True)
                out[plan.spec.rule_id] = {
                    "counts": [[second, group, n] for (second, group), n in counts.items()],
                    "samples": [dict(records[i]) for i in newest[:SAMPLES_PER_RULE]],
                }
        return out

    @staticmethod
    def _candidates(plan: _Plan, records: list[Mapping[str, Any]], by_level: dict[str, list[int]],
                    by_source: dict[str, list[int]]) -> Iterable[int]:
        """Indexes of the records that can match ``plan``, from the batch's level/source index."""
        sets: list[Iterable[int]] = []
        if plan.levels is not None or plan.min_score is not None:
            levels = [level for level in by_level
                      if (plan.levels is None or level in plan.levels)
                      and (plan.min_score is None or severity(level) >= plan.min_score)]
            sets.append(sorted(i for level in levels for i in by_level[level]))
        if plan.sources is not None:
            sets.append([i for source in plan.sources for i in by_source.get(source, ())])
        if not sets:
            return range(len(records))
        if len(sets) == 1:
            return sets[0]
        return sorted(set(sets[0]).intersection(*sets[1:]))
