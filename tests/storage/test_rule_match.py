"""storage.rule_match.RuleSet.count against a plain oracle: every rule evaluated on every record
with ``storage.query.matches``.

RuleSet indexes a batch by level and source and skips records by tags and message tokens before
calling ``matches``; these prefilters must never change the answer.  Random batches (tests.helpers
RecordGen: unknown levels, empty sources, unicode, repeated timestamps) meet random rules built to
exercise each prefilter (level equals / one of / at least, source, tags, tokens, phrases) mixed with
arbitrary filter trees (Not, Or, prefixes, metadata, regex) and group_by fields (single-valued,
multi-valued tags, metadata that may be missing).  Counts per (second, group) and the samples
(newest first, at most SAMPLES_PER_RULE) must agree exactly.  Seeded; a failure names the seed.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from storage import query as q
from storage import querytext
from storage.aggregate import record_values, resolve_field
from storage.rule_match import NS_PER_S, SAMPLES_PER_RULE, RuleSet, RuleSpec
from storage.tokens import tokenize
from tests.helpers import ALL_LEVELS, SOURCES, TAGS, T0_NS, TEMPLATE_WORDS, QueryGen, RecordGen, seeds_to_run

GROUP_FIELDS = (None, None, "source", "level", "tags", "host", "meta.code", "user_id", "request_id", "meta.absent")


def oracle_count(spec: RuleSpec, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The plain definition: every record through ``matches``; None when nothing matched a group."""
    counts: Counter[tuple[int, str]] = Counter()
    matched = []
    for record in records:
        if not q.matches(spec.node, record):
            continue
        matched.append(record)
        groups = record_values(record, *resolve_field(spec.group_by)) if spec.group_by else [""]
        for group in groups:
            counts[record["ts_ns"] // NS_PER_S, group] += 1
    if not counts:
        return None
    newest = sorted(matched, key=lambda r: (r["ts_ns"], r["id"]), reverse=True)[:SAMPLES_PER_RULE]
    return {"counts": sorted([second, group, n] for (second, group), n in counts.items()),
            "sample_ids": [r["id"] for r in newest]}


def prefilter_child(rng: random.Random, queries: QueryGen) -> q.Node:
    """A child of a rule's top-level AND that one of RuleSet's prefilters reads (or not)."""
    kind = rng.randrange(9)
    if kind == 0:
        return q.Field("level", rng.choice(ALL_LEVELS))
    if kind == 1:
        return q.Or(tuple(q.Field("level", level) for level in rng.sample(ALL_LEVELS, rng.randint(1, 3))))
    if kind == 2:
        return q.MinSeverity(rng.choice((0, 10, 20, 25, 30, 40, 50)))
    if kind == 3:
        return q.Field("source", rng.choice(SOURCES + ("absent-source",)))
    if kind == 4:
        return q.Field("tag", rng.choice(TAGS + ("absent-tag",)))
    if kind == 5:
        return q.Token(tokenize(rng.choice(TEMPLATE_WORDS))[0])
    if kind == 6:
        return q.Phrase(tuple(tokenize(rng.choice(TEMPLATE_WORDS))[0] for _ in range(2)))
    if kind == 7:
        return q.Not(prefilter_child(rng, queries))  # a prefilter under NOT must not be used as one
    return queries.node()


def random_rule(rng: random.Random, queries: QueryGen, rule_id: str) -> RuleSpec:
    roll = rng.random()
    if roll < 0.6:
        children = tuple(prefilter_child(rng, queries) for _ in range(rng.randint(1, 4)))
        node: q.Node = children[0] if len(children) == 1 else q.And(children)
    elif roll < 0.8:
        node = querytext.parse_query(queries.text(), now_ns=T0_NS).filter
    else:
        node = queries.node()
    return RuleSpec(rule_id, node, rng.choice(GROUP_FIELDS))


def check(rules: list[RuleSpec], records: list[dict[str, Any]], where: str) -> None:
    got = RuleSet(rules).count(records)
    for spec in rules:
        want = oracle_count(spec, records)
        part = got.get(spec.rule_id)
        if want is None:
            assert part is None, f"{where}: rule {spec.rule_id} {spec} counted {part!r:.300}; the oracle found nothing"
            continue
        assert part is not None, f"{where}: rule {spec.rule_id} {spec} counted nothing; the oracle: {want!r:.300}"
        assert sorted(part["counts"]) == want["counts"], f"{where}: rule {spec.rule_id} {spec}"
        assert [s["id"] for s in part["samples"]] == want["sample_ids"], f"{where}: samples of {spec.rule_id} {spec}"
    assert set(got) <= {spec.rule_id for spec in rules}, f"{where}: counts for unknown rules"


@pytest.mark.parametrize("seed", seeds_to_run(list(range(30))))
def test_rule_set_counts_agree_with_plain_matches(seed: int) -> None:
    rng = random.Random(seed)
    records = RecordGen(rng, ts_spread_ns=rng.choice((1, 5, 120)) * NS_PER_S).records(rng.randint(0, 150))
    queries = QueryGen(rng, known_ids=[r["id"] for r in records] or [1])
    rules = [random_rule(rng, queries, f"r{i}") for i in range(rng.randint(1, 25))]
    check(rules, records, f"seed {seed}")


def test_prefilters_on_a_hand_made_batch() -> None:
    def record(rid: int, second: int, level: str, source: str, message: str, tags: list[str]) -> dict[str, Any]:
        return {"id": rid, "ts_ns": T0_NS + second * NS_PER_S + rid, "level": level, "message": message,
                "source": source, "tags": tags, "metadata": {"host": f"h{rid % 2}"}, "thread_id": None,
                "request_id": None, "user_id": None}

    records = [record(1, 0, "ERROR", "db", "connection timeout", ["prod"]),
               record(2, 0, "WARN", "db", "slow timeout", []),
               record(3, 1, "ERROR", "api", "Timeout!", ["prod", "eu"]),
               record(4, 1, "INFO", "api", "timeouts are fine", ["prod"]),
               record(5, 2, "FATAL", "db", "disk full", ["eu"])]
    rules = [RuleSpec("errors", querytext.parse_query("level:ERROR timeout", now_ns=T0_NS).filter),
             RuleSpec("warn-up", querytext.parse_query("level:>=WARN", now_ns=T0_NS).filter, "source"),
             RuleSpec("tagged", querytext.parse_query("tag:prod -timeout", now_ns=T0_NS).filter, "tags"),
             RuleSpec("nothing", querytext.parse_query("source:nope", now_ns=T0_NS).filter)]
    got = RuleSet(rules).count(records)
    base_s = T0_NS // NS_PER_S
    # "timeouts" is another token than "timeout" (DESIGN §2)
    assert sorted(got["errors"]["counts"]) == [[base_s, "", 1], [base_s + 1, "", 1]]
    assert [s["id"] for s in got["errors"]["samples"]] == [3, 1]
    assert sorted(got["warn-up"]["counts"]) == [[base_s, "db", 2], [base_s + 1, "api", 1], [base_s + 2, "db", 1]]
    assert sorted(got["tagged"]["counts"]) == [[base_s + 1, "prod", 1]]
    assert "nothing" not in got
    check(rules, records, "hand-made batch")


def test_no_rules_or_no_records_count_nothing() -> None:
    records = RecordGen(random.Random(1)).records(5)
    assert RuleSet().count(records) == {}
    assert RuleSet([RuleSpec("all", q.MatchAll())]).count([]) == {}


def test_samples_are_capped_and_newest_first() -> None:
    records = RecordGen(random.Random(7)).records(40)
    got = RuleSet([RuleSpec("all", q.MatchAll())]).count(records)["all"]
    want = sorted(records, key=lambda r: (r["ts_ns"], r["id"]), reverse=True)[:SAMPLES_PER_RULE]
    assert [s["id"] for s in got["samples"]] == [r["id"] for r in want]
    assert sum(n for _, _, n in got["counts"]) == 40


def test_rule_spec_wire_round_trip() -> None:
    spec = RuleSpec("r", querytext.parse_query('level:ERROR "connection refused" -source:db', now_ns=T0_NS).filter, "host")
    assert RuleSpec.from_wire(spec.to_wire()) == spec
