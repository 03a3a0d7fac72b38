"""N shards answer exactly what 1 shard answers: real daemons with 1, 2 and 3 shard processes.

The same seeded records (timestamps out of order, some identical; unicode; tags; metadata) are
ingested, in the same batches and order, into three daemons.  Each record carries a unique metadata
key ``uid``; records get different ids in each daemon, so answers are compared by everything but
the id.  Ids are issued increasing in ingest order in every daemon, so ties on the timestamp break
the same way everywhere and whole sequences can be compared.

Two stored states, each with its own three daemons (a module fixture parametrized by state):
``tail``: sealed blocks plus an unsealed in-memory tail (``block_records`` small, ``seal_after``
long); ``sealed``: the same after the ``flush`` op (no tail).  Every daemon is also checked against
a plain oracle (``storage.query.matches`` over the normalized records), so three equally wrong
answers cannot pass.

Seeds: ``SHARDLOG_TEST_SEED=N`` replays one; the seed is printed and named in every failure.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from coordinator.request import parse_filter
from storage import query as q
from storage import querytext
from storage.record import normalize_record
from storage.timefmt import format_timestamp
from tests.helpers import S_NS, T0_NS, QueryGen, RecordGen, seeds_to_run
from tests.daemon import Daemon

pytestmark = pytest.mark.slow

SEED = seeds_to_run([20240917])[0]
N_RECORDS = 3_000
BATCH = 500
SPREAD_NS = 3_600 * S_NS
#: small blocks so every daemon (even 3 shards x ~1,000 records) has sealed blocks and a tail; not a
#: divisor of N_RECORDS, so the 1-shard daemon always keeps a partial block unsealed
BLOCK_RECORDS = 256
SHARD_COUNTS = (1, 2, 3)


# --- data ----------------------------------------------------------------------------------------


def make_raw_records(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Records as a sender would send them; metadata ``uid`` identifies each across daemons."""
    gen = RecordGen(rng, ts_base_ns=T0_NS, ts_spread_ns=SPREAD_NS)
    raws = []
    for uid, stored in enumerate(gen.records(n)):
        raw: dict[str, Any] = {"timestamp": stored["ts_ns"], "level": stored["level"], "message": stored["message"],
                               "source": stored["source"], "tags": stored["tags"],
                               "metadata": {**stored["metadata"], "uid": uid}}
        for name in ("thread_id", "request_id", "user_id"):
            if stored[name] is not None:
                raw[name] = stored[name]
        raws.append(raw)
    return raws


class Stored:
    """Three daemons holding the same records, and the oracle's copy of them."""

    def __init__(self, state: str, daemons: dict[int, Daemon], raws: list[dict[str, Any]]) -> None:
        self.state = state
        self.daemons = daemons
        now_ns = time.time_ns()
        #: the stored shape of each record (ingest order = uid order), for the oracle
        self.records = [normalize_record(raw, now_ns=now_ns) for raw in raws]

    def ask(self, op: str, params: dict[str, Any]) -> dict[int, Any]:
        return {n: daemon.call(op, params) for n, daemon in self.daemons.items()}

    def oracle(self, params: dict[str, Any]) -> list[int]:
        """uids of the matching records in ascending (timestamp, ingest order)."""
        node, _ = parse_filter(params, time.time_ns())
        hits = [uid for uid, record in enumerate(self.records) if q.matches(node, record)]
        return sorted(hits, key=lambda uid: (self.records[uid]["ts_ns"], uid))


@pytest.fixture(scope="module", params=["tail", "sealed"])
def stored(request: pytest.FixtureRequest) -> Iterator[Stored]:
    state = request.param
    print(f"equivalence seed {SEED} (replay with SHARDLOG_TEST_SEED={SEED}); state {state}")
    raws = make_raw_records(random.Random(SEED), N_RECORDS)
    env = {"SHARDLOG_SEAL_AFTER": "1h", "SHARDLOG_BLOCK_RECORDS": str(BLOCK_RECORDS)}
    daemons = {n: Daemon(shards=n, env=env, name=f"daemon-{n}-shards") for n in SHARD_COUNTS}
    try:
        for daemon in daemons.values():  # start all, then wait: the three boot in parallel
            daemon.spawn()
        for daemon in daemons.values():
            daemon.wait_ready()
        for daemon in daemons.values():
            with daemon.client(timeout_s=60.0) as client:
                for start in range(0, N_RECORDS, BATCH):
                    answer = client.call("ingest", {"records": raws[start:start + BATCH]})
                    assert answer == {"accepted": len(raws[start:start + BATCH]), "rejected": []}, answer
            if state == "sealed":
                daemon.call("flush")
            shards = daemon.stats()["shards"]
            assert sum(s["records"] for s in shards) == N_RECORDS, shards
            # the state this module claims to test really is the stored state
            assert all(s["blocks"] > 0 for s in shards), shards
            if state == "tail":
                assert sum(s["unsealed_records"] for s in shards) > 0, shards
            else:
                assert all(s["unsealed_records"] == 0 for s in shards), shards
        yield Stored(state, daemons, raws)
    except BaseException:
        for daemon in daemons.values():
            daemon.print_log()
        raise
    finally:
        for daemon in daemons.values():
            daemon.close()


# --- queries -------------------------------------------------------------------------------------


def time_text(rng: random.Random) -> str:
    """A point in (and slightly around) the records' hour, sometimes on a shared timestamp."""
    offset_ns = rng.randrange(-SPREAD_NS // 20, SPREAD_NS * 21 // 20)
    if rng.random() < 0.5:
        offset_ns -= offset_ns % (60 * S_NS)  # whole minutes, like a person types them
    return format_timestamp(T0_NS + offset_ns)


def random_q(rng: random.Random) -> str:
    """Query text of DESIGN §7: tokens, phrases, prefixes, fields, level:>=, OR/NOT, regex,
    substrings (QueryGen), random trees through format_query, and _time windows."""
    gen = QueryGen(rng, ts_base_ns=T0_NS, ts_spread_ns=SPREAD_NS, known_ids=list(range(1, N_RECORDS + 1)))
    roll = rng.random()
    if roll < 0.08:
        text = ""
    elif roll < 0.55:
        text = gen.text()
    else:
        text = querytext.format_query(gen.node())
    if rng.random() < 0.3:
        low, high = sorted((time_text(rng), time_text(rng)))
        text = f"{text} _time:[{low}, {high})".strip()
    return text


def random_filter(rng: random.Random) -> dict[str, Any]:
    params: dict[str, Any] = {"q": random_q(rng)}
    if rng.random() < 0.2:
        params["from"] = time_text(rng)
    if rng.random() < 0.2:
        params["to"] = time_text(rng)
    if rng.random() < 0.1:
        params["min_severity"] = rng.choice(("WARN", "debug", "ERROR"))
    return params


def public_sequence(answer: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The logs of an answer without their daemon-specific ids, in order."""
    return [(log["metadata"]["uid"], log["timestamp"], log["level"], log["message"], log["source"],
             tuple(log["tags"]), tuple(sorted(log["metadata"].items())), log["thread_id"], log["request_id"],
             log["user_id"]) for log in answer["logs"]]


def uids(answer: dict[str, Any]) -> list[int]:
    return [log["metadata"]["uid"] for log in answer["logs"]]


def case_rng(kind: str, case: int) -> random.Random:
    """Each case draws from its own generator, seeded from (SEED, kind, case): replaying one case
    does not depend on which others ran (xdist splits them between workers)."""
    return random.Random(f"{SEED}:{kind}:{case}")


def where(stored: Stored, params: dict[str, Any]) -> str:
    return f"seed {SEED}, state {stored.state}, params {params!r}"


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", range(12))
def test_query_pages_with_offset_match_one_shard_and_the_oracle(stored: Stored, case: int) -> None:
    rng = case_rng("query", case)
    for _ in range(4):
        params = random_filter(rng)
        params["sort"] = rng.choice(("asc", "desc"))
        params["limit"] = rng.choice((1, 7, 50, 333))
        params["offset"] = rng.choice((0, 0, 3, 120, 2_000))
        answers = stored.ask("query", params)
        expected = stored.oracle(params)
        if params["sort"] == "desc":
            expected.reverse()
        expected_page = expected[params["offset"]:params["offset"] + params["limit"]]
        one = answers[1]
        for n, answer in answers.items():
            assert answer["partial"] is False, where(stored, params)
            assert answer["total"] == len(expected), f"{n} shards: {where(stored, params)}"
            assert uids(answer) == expected_page, f"{n} shards: {where(stored, params)}"
            assert public_sequence(answer) == public_sequence(one), f"{n} shards: {where(stored, params)}"
            # next_cursor is offered exactly when more matching records follow the page
            more = params["offset"] + params["limit"] < len(expected)
            assert (answer["next_cursor"] is not None) == more, f"{n} shards: {where(stored, params)}"


@pytest.mark.parametrize("case", range(6))
def test_walking_every_page_with_the_cursor_matches_one_shard_and_the_oracle(stored: Stored, case: int) -> None:
    rng = case_rng("cursor", case)
    for _ in range(2):
        params = random_filter(rng)
        params["sort"] = rng.choice(("asc", "desc"))
        expected = stored.oracle(params)
        if params["sort"] == "desc":
            expected.reverse()
        # at most ~12 pages per walk keeps the test fast; small pages still cross shard boundaries
        params["limit"] = max(rng.choice((5, 40, 250)), len(expected) // 12 + 1)
        walks: dict[int, list[list[tuple[Any, ...]]]] = {}
        for n, daemon in stored.daemons.items():
            pages: list[list[tuple[Any, ...]]] = []
            cursor = None
            with daemon.client() as client:
                while True:
                    page_params = dict(params, **({"cursor": cursor} if cursor else {}))
                    answer = client.call("query", page_params)
                    assert answer["total"] == len(expected), f"{n} shards, page {len(pages)}: {where(stored, params)}"
                    assert answer["partial"] is False
                    assert len(answer["logs"]) <= params["limit"]
                    pages.append(public_sequence(answer))
                    cursor = answer["next_cursor"]
                    if cursor is None:
                        break
                    assert answer["logs"], f"{n} shards: an empty page offered a next cursor; {where(stored, params)}"
                    assert len(pages) <= len(expected) // params["limit"] + 1, \
                        f"{n} shards: the cursor walk does not end; {where(stored, params)}"
            walked = [row[0] for page in pages for row in page]
            assert walked == expected, f"{n} shards: {where(stored, params)}"
            # every page but the last is full, so page boundaries are the same for any shard count
            assert all(len(page) == params["limit"] for page in pages[:-1] if page), where(stored, params)
            # next_cursor is exact: no trailing empty page, even when the last page is exactly full
            assert all(pages) or pages == [[]], f"{n} shards: an empty page; {where(stored, params)}"
            walks[n] = pages
        for n in SHARD_COUNTS:
            assert walks[n] == walks[1], f"{n} shards: {where(stored, params)}"


def test_next_cursor_presence_does_not_depend_on_the_shard_count(stored: Stored) -> None:
    params = {"q": "", "sort": "asc", "limit": N_RECORDS}  # the page holds every match, exactly
    answers = stored.ask("query", params)
    assert all(len(answer["logs"]) == N_RECORDS for answer in answers.values())
    presence = {n: answer["next_cursor"] is not None for n, answer in answers.items()}
    # nothing follows the page, so no daemon should offer a next page
    assert presence == {n: False for n in SHARD_COUNTS}, presence


@pytest.mark.parametrize("case", range(4))
def test_count_matches_one_shard_and_the_oracle(stored: Stored, case: int) -> None:
    rng = case_rng("count", case)
    for _ in range(8):
        params = random_filter(rng)
        expected = len(stored.oracle(params))
        answers = stored.ask("count", params)
        assert {n: a["count"] for n, a in answers.items()} == {n: expected for n in SHARD_COUNTS}, \
            where(stored, params)
        assert all(a["partial"] is False for a in answers.values())


GROUP_FIELDS = ("level", "source", "tags", "meta.host", "host", "user_id", "thread_id", "meta.code", "ok", "ключ")
TOPS = ("tags:3", "source:2", "meta.code:5", "level:10", "tags:1,level:2", "user_id:1", "host:2")
INTERVALS = ("1m", "5m", "13s", "7m", "1h")
HISTOGRAMS = ("meta.code", "code:100", "level", "meta.uid:250")


@pytest.mark.parametrize("case", range(6))
def test_aggregate_matches_one_shard(stored: Stored, case: int) -> None:
    rng = case_rng("aggregate", case)
    for _ in range(5):
        params = random_filter(rng)
        parts = rng.sample(("group_by", "top", "interval", "histogram"), rng.randint(1, 3))
        if "group_by" in parts:
            params["group_by"] = rng.choice(GROUP_FIELDS)
        if "top" in parts:
            params["top"] = rng.choice(TOPS)
        if "interval" in parts:
            params["interval"] = rng.choice(INTERVALS)
        if "histogram" in parts:
            params["histogram"] = rng.choice(HISTOGRAMS)
        answers = stored.ask("aggregate", params)
        expected_total = len(stored.oracle(params))
        for n, answer in answers.items():
            assert answer["total"] == expected_total, f"{n} shards: {where(stored, params)}"
            assert answer == answers[1], f"{n} shards: {where(stored, params)}"
        one = answers[1]
        # the parts asked for are present, and their counts cannot exceed what matched
        if "group_by" in params:
            assert sum(one["group_by"].values()) <= expected_total * (3 if params["group_by"] == "tags" else 1)
        if "interval" in params:
            assert sum(count for _, count in one["time_histogram"]) == expected_total, where(stored, params)
        if "top" in params:
            assert set(one["top"]) == {part.split(":")[0] for part in params["top"].split(",")}


def test_group_by_level_agrees_with_the_oracle(stored: Stored) -> None:
    """One aggregation checked value by value, so the cross-daemon comparison has a known anchor."""
    params = {"q": "level:>=WARN OR tag:prod", "group_by": "level", "top": "tags:2", "interval": "10m"}
    expected_uids = stored.oracle(params)
    by_level: dict[str, int] = {}
    tag_counts: dict[str, int] = {}
    buckets: dict[int, int] = {}
    width_ns = 600 * S_NS
    for uid in expected_uids:
        record = stored.records[uid]
        by_level[record["level"]] = by_level.get(record["level"], 0) + 1
        for tag in record["tags"]:
            tag_counts[tag] = tag_counts.get(tag, 0) + 1
        start = record["ts_ns"] - record["ts_ns"] % width_ns
        buckets[start] = buckets.get(start, 0) + 1
    top_tags = sorted(tag_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    for n, answer in stored.ask("aggregate", params).items():
        assert answer["total"] == len(expected_uids), n
        assert answer["group_by"] == by_level, n
        assert answer["top"] == {"tags": [list(pair) for pair in top_tags]}, n
        assert answer["time_histogram"] == [[format_timestamp(b), c] for b, c in sorted(buckets.items())], n
