"""Tests of storage.block: ``build_block`` / ``decode_column`` against plain per-record facts.

Every column decodes back to the records' values in (ts_ns, id) order; each term's posting list
decodes to exactly the rows holding it (computed here from the records, not from the block code);
a term of one row has no posting list and is in the bloom filter (unless it is a level, source or
tag, which are always posted); the header counts equal the counts of the records.  Seeded
random blocks (tests.helpers.RecordGen) and hypothesis-drawn ones; the seed is in every message.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import layout
from storage.block import MAX_BLOCK_ROWS, build_block, decode_column
from storage.bloom import bloom_may_contain, term_hashes
from storage.errors import CorruptData
from storage.layout import meta_value_text
from storage.postings import decode_postings, rows_of
from storage.tokens import token_set
from tests.helpers import RecordGen, make_record, seeds_to_run

SEEDS = seeds_to_run([7, 8, 9, 10, 11, 12])
ALWAYS_POSTED = ("l:", "s:", "t:")


def _record_terms(record: dict[str, Any]) -> set[str]:
    """Every index term of one record, from the term formats of DESIGN §4 / storage.layout."""
    terms = {"w:" + token for token in token_set(record["message"])}
    terms.add("l:" + record["level"])
    terms.add("s:" + record["source"])
    terms |= {"t:" + tag for tag in record["tags"]}
    for prefix, name in (("h:", "thread_id"), ("r:", "request_id"), ("u:", "user_id")):
        if record[name] is not None:
            terms.add(prefix + record[name])
    terms |= {f"m:{key}={meta_value_text(value)}" for key, value in record["metadata"].items()}
    return terms


def _term_rows(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, record in enumerate(rows):
        for term in _record_terms(record):
            out.setdefault(term, []).append(i)
    return out


def _stored(term: str) -> bytes:
    """Postings are keyed by the stored form of the term (hashed past LMDB's key limit)."""
    return layout.term_bytes(term)[0]


def _check_block(records: list[dict[str, Any]], block_id: int, where: str) -> None:
    block = build_block(records, block_id)
    rows = sorted(records, key=lambda r: (r["ts_ns"], r["id"]))
    n = len(rows)

    # every column round-trips, rows in (ts_ns, id) order
    assert set(block.columns) == set(layout.ALL_COLUMNS), where
    for name, column in layout.FIELD_COLUMN.items():
        decoded = list(decode_column(column, block.columns[column]))
        assert decoded == [r[name] for r in rows], f"column {name}: {where}"

    # postings: exactly the rows of every repeated term, and of every level / source / tag
    expected = _term_rows(rows)
    posted = {term for term, term_rows in expected.items() if len(term_rows) > 1 or term[:2] in ALWAYS_POSTED}
    assert set(block.postings) == {_stored(term) for term in posted}, f"posted terms differ: {where}"
    for term in posted:
        assert rows_of(decode_postings(block.postings[_stored(term)])) == expected[term], \
            f"postings of {term!r}: {where}"

    # one-row terms: no posting list, present in the bloom filter
    for term, term_rows in expected.items():
        if term not in posted:
            assert len(term_rows) == 1
            hashes = term_hashes(layout.term_bytes(term)[0])
            assert bloom_may_contain(block.bloom, hashes), f"one-row term {term!r} missing from the bloom: {where}"

    header = block.header
    assert header.block_id == block_id, where
    assert (header.min_ts, header.max_ts, header.count) == (rows[0]["ts_ns"], rows[-1]["ts_ns"], n), where
    assert header.levels == dict(Counter(r["level"] for r in rows)), f"level counts: {where}"
    assert header.sources == dict(Counter(r["source"] for r in rows)), f"source counts: {where}"
    assert header.tags == dict(Counter(tag for r in rows for tag in r["tags"])), f"tag counts: {where}"
    assert type(header).decode(header.encode()) == header, f"header round trip: {where}"


@pytest.mark.parametrize("seed", SEEDS)
def test_random_blocks_match_their_records(seed: int) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    for trial in range(4):
        records = RecordGen(rng, first_id=rng.randrange(1 << 40)).records(rng.choice((1, 2, 17, 300)))
        rng.shuffle(records)  # arrival order is not time order
        _check_block(records, block_id=rng.randrange(1 << 32), where=f"seed={seed} trial={trial}")


def test_bloom_rejects_most_absent_terms() -> None:
    """The bloom filter is a filter: most terms that are not in the block are ruled out (the
    design rate is ~1.2 % false positives; allow generous slack)."""
    records = RecordGen(random.Random(5)).records(500)
    block = build_block(records, 0)
    absent = [f"w:absent{i}zz" for i in range(2000)]
    hits = sum(bloom_may_contain(block.bloom, term_hashes(layout.term_bytes(t)[0])) for t in absent)
    assert hits < 2000 * 0.05, f"{hits} of 2000 absent terms pass the bloom filter"


def test_rows_sorted_by_time_then_id_with_ties() -> None:
    records = [make_record(5, 100), make_record(2, 100), make_record(9, 50), make_record(1, 300),
               make_record(3, 100)]
    block = build_block(records, 1)
    ts = list(decode_column(layout.COL_TS, block.columns[layout.COL_TS]))
    ids = list(decode_column(layout.COL_ID, block.columns[layout.COL_ID]))
    assert list(zip(ts, ids)) == [(50, 9), (100, 2), (100, 3), (100, 5), (300, 1)]


def test_extreme_timestamps_round_trip() -> None:
    """Stored timestamps span the whole int64 range (a record from 1678 next to one from 2262)."""
    low, high = -(2**63), 2**63 - 1
    block = build_block([make_record(1, high), make_record(2, low), make_record(3, 0)], 0)
    assert list(decode_column(layout.COL_TS, block.columns[layout.COL_TS])) == [low, 0, high]
    assert (block.header.min_ts, block.header.max_ts) == (low, high)


def test_metadata_values_that_render_alike_share_a_posting() -> None:
    """``"1"`` and ``1`` are the same text, so ``code:1`` finds both; values keep their types."""
    records = [make_record(1, 1, metadata={"code": 1}), make_record(2, 2, metadata={"code": "1"}),
               make_record(3, 3, metadata={"code": "true"}), make_record(4, 4, metadata={"code": "true"})]
    block = build_block(records, 0)
    assert rows_of(decode_postings(block.postings[b"m:code=1"])) == [0, 1]
    assert rows_of(decode_postings(block.postings[b"m:code=true"])) == [2, 3]
    assert [m["code"] for m in decode_column(layout.COL_METADATA, block.columns[layout.COL_METADATA])] == [
        1, "1", "true", "true"]


def test_metadata_true_and_1_and_1_point_0_are_different_terms() -> None:
    # rows in time order: 1, True, 1.0, 0, False
    records = [make_record(1, 1, metadata={"v": 1}), make_record(2, 2, metadata={"v": True}),
               make_record(3, 3, metadata={"v": 1.0}), make_record(4, 4, metadata={"v": 0}),
               make_record(5, 5, metadata={"v": False}), make_record(6, 6, metadata={"v": True})]
    expected = _term_rows(sorted(records, key=lambda r: (r["ts_ns"], r["id"])))
    assert expected["m:v=true"] == [1, 5] and expected["m:v=1"] == [0]  # the oracle's view
    block = build_block(records, 0)
    got = {term: rows_of(decode_postings(data)) for term, data in block.postings.items() if term.startswith(b"m:")}
    assert got == {b"m:v=true": [1, 5]}, "only 'true' occurs in two rows; 1, 1.0, 0 and false are one-row terms"


def test_long_terms_are_posted_hashed_and_a_repeated_tag_is_one_row() -> None:
    """A token past LMDB's key limit is stored as prefix + digest, under the same key a query
    computes (``layout.term_bytes``); a tag listed twice in one record counts that record once."""
    long_token = "x" * 600
    records = [make_record(i, i, message=f"{long_token} row{i}", tags=["dup", "dup"]) for i in range(3)]
    block = build_block(records, 0)
    stored, exact = layout.term_bytes("w:" + long_token)
    assert not exact and len(stored) <= layout.MAX_TERM_BYTES
    assert rows_of(decode_postings(block.postings[stored])) == [0, 1, 2]
    assert rows_of(decode_postings(block.postings[b"t:dup"])) == [0, 1, 2]
    assert block.header.tags == {"dup": 3}


def test_block_size_limits() -> None:
    with pytest.raises(ValueError, match="1..65535"):
        build_block([], 0)
    assert MAX_BLOCK_ROWS == 65535  # posting lists store uint16 row offsets


@pytest.mark.parametrize("column", layout.ALL_COLUMNS)
def test_corrupt_column_is_corrupt_data(column: int) -> None:
    with pytest.raises(CorruptData):
        decode_column(column, b"not zstd at all")
    # valid zstd around the wrong shape is caught too
    import zstandard

    with pytest.raises(CorruptData):
        decode_column(column, zstandard.ZstdCompressor().compress(b"\xc1"))


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_record = st.fixed_dictionaries({
    "ts_ns": st.integers(-(2**63), 2**63 - 1),
    "level": st.sampled_from(("INFO", "ERROR", "X")),
    "message": _text,
    "source": st.sampled_from(("", "a", "ü")),
    "tags": st.lists(st.sampled_from(("a", "b", "ç")), unique=True, max_size=3),
    # one value type per key, no -0.0: values equal in Python but rendered differently meet the
    # values that render alike but differ in type are indexed apart (see the test above)
    "metadata": st.fixed_dictionaries({}, optional={"k": _text, "ключ": _text, "n": st.integers(-(2**63), 2**63 - 1),
                                                    "b": st.booleans(), "f": st.floats(min_value=0.25, allow_nan=False,
                                                                                        allow_infinity=False)}),
    "thread_id": st.one_of(st.none(), st.sampled_from(("t", ""))),
    "request_id": st.one_of(st.none(), _text),
    "user_id": st.one_of(st.none(), st.sampled_from(("u", "ü"))),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_record, min_size=1, max_size=30))
def test_hypothesis_blocks_match_their_records(drawn: list[dict[str, Any]]) -> None:
    records = [dict(r, id=i) for i, r in enumerate(drawn)]
    _check_block(records, 3, where=f"{len(records)} hypothesis records")


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3000).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)))))
def test_posting_lists_round_trip_sparse_and_dense(case: tuple[int, set[int]]) -> None:
    from storage.postings import encode_postings

    n_rows, rows = case
    data = encode_postings(sorted(rows), n_rows)
    assert data[:1] == (b"A" if len(rows) * 2 <= (n_rows + 7) // 8 else b"B")
    assert rows_of(decode_postings(data)) == sorted(rows)
