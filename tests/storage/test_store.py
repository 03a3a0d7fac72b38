"""Tests of storage.store.Store: durability and the rules around it (DESIGN §4).

Idempotency keys (also across reopen and expiry), group commit under concurrent writers, the
manifest and its format check, the single-owner lock (same process and another process), file
modes, map growth up to a cap and the storage-full error, ``check_records``, header counts in
``stats()``, retention of whole blocks only, and close() finishing.  Property tests of query
answers live in test_store_properties.py.
"""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import layout
from storage import query as q
from storage.errors import BadRequest, FormatMismatch, ShardlogError, StoreFull, StoreLocked
from storage.store import Store, StoreConfig, check_records
from tests.helpers import (
    REPO_ROOT,
    S_NS,
    T0_NS,
    RecordGen,
    close_store,
    make_record,
    run_with_deadline,
    shard_env,
    short_tmpdir,
    wait_for,
)

#: tests that reopen use a long seal_after_s so the tail is sealed only when full or flushed
QUIET = StoreConfig(block_records=16, seal_after_s=3_600.0)


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path


def _ids(store: Store, node: q.Node | None = None) -> list[int]:
    """The ids of the matching records, sorted by id (each must come back once)."""
    answer = store.query(node or q.MatchAll(), sort="asc", limit=100_000)
    ids = [row["id"] for row in answer["rows"]]
    assert len(ids) == len(set(ids)) == answer["total"], f"a record came back twice: {ids}"
    return sorted(ids)


def _records(first_id: int, n: int, ts_ns: int = T0_NS, message: str = "hello world") -> list[dict[str, Any]]:
    return [make_record(first_id + i, ts_ns + i, message) for i in range(n)]


# --- idempotency ---------------------------------------------------------------------------------


def test_idempotency_key_stores_a_batch_once_also_after_reopen(tmp: Path) -> None:
    store = Store(tmp / "s", QUIET)
    try:
        assert store.ingest(_records(1, 3), "batch-1") == {"accepted": 3, "duplicate": False}
        assert store.ingest(_records(1, 3), "batch-1") == {"accepted": 3, "duplicate": True}
        assert store.ingest(_records(10, 2), "batch-2") == {"accepted": 2, "duplicate": False}
        assert store.ingest(_records(20, 1)) == {"accepted": 1, "duplicate": False}
        assert _ids(store) == [1, 2, 3, 10, 11, 20]
        close_store(store)

        store = Store(tmp / "s", QUIET)
        assert store.ingest(_records(1, 3), "batch-1") == {"accepted": 3, "duplicate": True}
        store.flush()  # keys live apart from the WAL: sealing must not forget them
        assert store.ingest(_records(10, 2), "batch-2")["duplicate"] is True
        assert _ids(store) == [1, 2, 3, 10, 11, 20]
        assert store.count(q.MatchAll()) == 6
    finally:
        close_store(store)


def test_same_key_twice_in_one_group_commit_is_stored_once(tmp: Path) -> None:
    store = Store(tmp / "s", QUIET)
    try:
        futures = [store.submit(_records(1, 4), "same") for _ in range(6)]
        answers = [f.result(timeout=30) for f in futures]
        assert sorted(a["duplicate"] for a in answers) == [False] + [True] * 5, answers
        assert all(a["accepted"] == 4 for a in answers), answers
        assert _ids(store) == [1, 2, 3, 4]
    finally:
        close_store(store)


def test_long_idempotency_keys_are_told_apart(tmp: Path) -> None:
    """Keys over 400 bytes are stored hashed; two long keys differing in the last byte differ."""
    store = Store(tmp / "s", QUIET)
    try:
        long_a, long_b = "k" * 5000 + "a", "k" * 5000 + "b"
        assert store.ingest(_records(1, 1), long_a)["duplicate"] is False
        assert store.ingest(_records(2, 1), long_b)["duplicate"] is False
        assert store.ingest(_records(1, 1), long_a)["duplicate"] is True
        assert _ids(store) == [1, 2]
    finally:
        close_store(store)


def test_idempotency_keys_expire_after_their_ttl(tmp: Path) -> None:
    """Keys are remembered ``idempotency_ttl_s``; expiry runs with retention and keeps younger keys."""
    ttl_ns = 400_000_000
    store = Store(tmp / "s", StoreConfig(block_records=16, seal_after_s=3_600.0, idempotency_ttl_s=ttl_ns / 1e9))
    try:
        old_ns = time.time_ns()
        assert store.ingest(_records(1, 1), "old")["duplicate"] is False
        wait_for(lambda: time.time_ns() > old_ns + ttl_ns, 10, "the key to age past its ttl")
        young_ns = time.time_ns()
        assert store.ingest(_records(2, 1), "young")["duplicate"] is False
        store.drop_before(0)  # drops no block (all are newer) but expires keys older than the ttl
        young_kept = time.time_ns() - young_ns < ttl_ns  # false only if this machine stalled for the ttl
        assert store.ingest(_records(3, 1), "old")["duplicate"] is False
        if young_kept:
            assert store.ingest(_records(4, 1), "young")["duplicate"] is True
            assert _ids(store) == [1, 2, 3]
    finally:
        close_store(store)


def test_retention_when_every_idempotency_key_has_expired(tmp: Path) -> None:
    """Regression: expiring the last idem_age entry left the cursor on b'' (which sorts before any
    cutoff), and the loop then deleted the key b'' -> lmdb.BadValsizeError out of drop_before()."""
    store = Store(tmp / "s", StoreConfig(block_records=16, seal_after_s=3_600.0, idempotency_ttl_s=0.0))
    try:
        assert store.ingest(_records(1, 1), "k")["duplicate"] is False
        assert store.drop_before(0) == {"dropped_blocks": 0, "dropped_records": 0}
        assert store.ingest(_records(2, 1), "k")["duplicate"] is False
        assert _ids(store) == [1, 2]
    finally:
        close_store(store)


# --- group commit ------------------------------------------------------------------------------


def test_concurrent_ingest_from_8_threads_is_all_acknowledged_and_present(tmp: Path) -> None:
    store = Store(tmp / "s", StoreConfig(block_records=50, seal_after_s=3_600.0))
    answers: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def writer(thread_no: int) -> None:
        try:
            start.wait(10)
            for batch in range(15):
                first = thread_no * 10_000 + batch * 10 + 1
                key = f"t{thread_no}-b{batch}" if batch % 2 else None
                answer = store.ingest(_records(first, 7, ts_ns=T0_NS + first), key)
                with lock:
                    answers.append(answer)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads), "an ingest call hung"
        assert not errors, errors
        assert answers == [{"accepted": 7, "duplicate": False}] * 120
        expected = sorted(t * 10_000 + b * 10 + 1 + i for t in range(8) for b in range(15) for i in range(7))
        assert _ids(store) == expected
        assert store.stats()["records"] == len(expected)
        close_store(store)
        store = Store(tmp / "s", StoreConfig(block_records=50, seal_after_s=3_600.0))
        assert _ids(store) == expected
    finally:
        close_store(store)


# --- the directory: modes, manifest, lock -----------------------------------------------------------


def test_missing_data_dir_is_created_private_with_private_files(tmp: Path) -> None:
    path = tmp / "a" / "b" / "store"
    old_umask = os.umask(0o022)  # a permissive umask must not leak into the modes
    try:
        store = Store(path, QUIET)
    finally:
        os.umask(old_umask)
    try:
        store.ingest(_records(1, 1))
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        for name in ("data.mdb", "lock.mdb", layout.MANIFEST_NAME, layout.OWNER_LOCK_NAME):
            assert stat.S_IMODE((path / name).stat().st_mode) == 0o600, name
        manifest = json.loads((path / layout.MANIFEST_NAME).read_text())
        assert manifest["format"] == layout.FORMAT_NAME
        assert manifest["format_version"] == layout.FORMAT_VERSION
    finally:
        close_store(store)


def test_an_existing_open_data_dir_is_made_private(tmp: Path) -> None:
    path = tmp / "store"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    store = Store(path, QUIET)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    finally:
        close_store(store)


def _write_manifest(path: Path, manifest: Any) -> None:
    (path / layout.MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize("manifest, words", [
    ({"format": "shardlog-store", "format_version": 99}, ["format 99", f"format {layout.FORMAT_VERSION}", "upgrade"]),
    ({"format": "shardlog-store", "format_version": 0}, ["format 0", f"format {layout.FORMAT_VERSION}"]),
    ({"format": "shardlog-store", "format_version": "1"}, ["'1'"]),
    ({"format": "victorialogs", "format_version": 1}, ["does not describe a shardlog store", "victorialogs"]),
    (["not", "a", "map"], ["does not describe a shardlog store"]),
])
def test_manifest_of_another_format_is_refused_at_open(tmp: Path, manifest: Any, words: list[str]) -> None:
    path = tmp / "s"
    store = Store(path, QUIET)
    store.ingest(_records(1, 2))
    close_store(store)
    good = (path / layout.MANIFEST_NAME).read_text()
    _write_manifest(path, manifest)
    with pytest.raises(FormatMismatch) as info:
        Store(path, QUIET)
    for word in words:
        assert word in info.value.message, info.value.message
    # the failed open released the lock: with the manifest restored the store opens, data intact
    (path / layout.MANIFEST_NAME).write_text(good)
    store = Store(path, QUIET)
    try:
        assert _ids(store) == [1, 2]
    finally:
        close_store(store)


def test_unreadable_manifest_and_lmdb_without_manifest_are_refused(tmp: Path) -> None:
    path = tmp / "s"
    close_store(Store(path, QUIET))
    (path / layout.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(FormatMismatch, match="not a readable shardlog manifest"):
        Store(path, QUIET)
    (path / layout.MANIFEST_NAME).unlink()
    with pytest.raises(FormatMismatch, match="no MANIFEST.json"):
        Store(path, QUIET)


def test_second_store_on_the_same_dir_in_this_process_is_refused(tmp: Path) -> None:
    store = Store(tmp / "s", QUIET)
    try:
        with pytest.raises(StoreLocked) as info:
            Store(tmp / "s", QUIET)
        assert str(os.getpid()) in info.value.message and "another --data-dir" in info.value.message
    finally:
        close_store(store)
    close_store(Store(tmp / "s", QUIET))  # released by close


def test_store_locked_by_another_process_is_refused(tmp: Path) -> None:
    store = Store(tmp / "s", QUIET)
    try:
        script = ("import sys\nfrom storage.errors import StoreLocked\nfrom storage.store import Store\n"
                  "try:\n    Store(sys.argv[1])\nexcept StoreLocked as exc:\n    print(exc.message)\n"
                  "    sys.exit(3)\nsys.exit(0)\n")
        done = subprocess.run([sys.executable, "-c", script, str(tmp / "s")], cwd=REPO_ROOT, env=shard_env(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
        assert str(os.getpid()) in done.stdout, done.stdout
    finally:
        close_store(store)


# --- map growth and the storage-full error ----------------------------------------------------------


def _bulky(rng: random.Random, first_id: int, n: int, size_bytes: int) -> list[dict[str, Any]]:
    """Records with incompressible messages, so the store really needs the bytes."""
    return [make_record(first_id + i, T0_NS + first_id + i, rng.randbytes(size_bytes // 2).hex()) for i in range(n)]


def test_map_grows_past_its_initial_size(tmp: Path) -> None:
    config = StoreConfig(block_records=64, seal_after_s=3_600.0, map_size_bytes=1 << 20, max_store_bytes=1 << 26)
    rng = random.Random(1)
    store = Store(tmp / "s", config)
    try:
        records = []
        for batch in range(12):
            chunk = _bulky(rng, batch * 100, 50, 4096)  # ~200 KB per batch, ~2.4 MB in all
            assert store.ingest(chunk)["accepted"] == 50
            records += chunk
        store.flush()
        stats = store.stats()
        assert stats["map_size_bytes"] > 1 << 20, stats
        assert stats["records"] == len(records)
        answer = store.query(q.MatchAll(), sort="asc", limit=1000)
        assert answer["rows"] == sorted(records, key=lambda r: (r["ts_ns"], r["id"]))
        close_store(store)
        store = Store(tmp / "s", config)  # reopens at the grown size
        assert store.stats()["map_size_bytes"] > 1 << 20
        assert _ids(store) == [r["id"] for r in records]
    finally:
        close_store(store)


def _rss_file_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="release_pages uses Linux madvise and /proc")
def test_release_pages_unmaps_what_was_read_and_keeps_every_byte(tmp: Path) -> None:
    """Reading a 32 MB store maps its pages into this process (RssFile); release_pages unmaps them
    (the page cache keeps them) and every value reads back the same afterwards."""
    from storage.env import Env

    env = Env(tmp / "e", map_size_bytes=1 << 27, max_size_bytes=1 << 28)
    try:
        rng = random.Random(4)
        values = {b"%08d" % i: rng.randbytes(32 * 1024) for i in range(1024)}
        db = env.db(layout.DB_COLUMNS)
        with env.env.begin(write=True) as txn:
            for key, value in values.items():
                txn.put(key, value, db=db)
        env.release_pages()
        before = _rss_file_kib()
        with env.read() as txn:
            assert all(txn.get(key, db=db) == value for key, value in values.items())
        after_read = _rss_file_kib()
        assert after_read - before > 16 * 1024, f"reading 32 MB mapped only {after_read - before} KiB"
        assert env.release_pages() >= 32 * 1024 * 1024
        after_release = _rss_file_kib()
        assert after_read - after_release > 16 * 1024, (before, after_read, after_release)
        with env.read() as txn:
            assert all(txn.get(key, db=db) == value for key, value in values.items())
    finally:
        env.close()


def test_postings_are_stored_even_when_a_higher_key_exists(tmp: Path) -> None:
    """Postings of a new block are appended in one call; if a stray key sorts after them (none
    should), the store falls back to plain puts and the block is still fully indexed."""
    store = Store(tmp / "s", QUIET)
    try:
        with store._env.env.begin(write=True) as txn:
            txn.put(layout.block_prefix(2**63) + b"w:zzz", b"A\x00\x00", db=store._dbs[layout.DB_POSTINGS])
        records = [make_record(i, T0_NS + i, f"alpha beta row{i % 3}") for i in range(32)]
        store.ingest(records)
        store.flush()
        assert store.stats()["blocks"] == 2
        assert store.count(q.Token("alpha")) == 32
        assert store.count(q.And((q.Token("row1"), q.Token("beta")))) == len([i for i in range(32) if i % 3 == 1])
    finally:
        close_store(store)


def test_long_scans_release_mapped_pages_as_they_go_and_answer_the_same(tmp: Path) -> None:
    """A query over hundreds of blocks checks the mapped-pages budget every 64 blocks while its read
    transaction is open; unmapping under it changes no answer."""
    rng = random.Random(8)
    records = RecordGen(rng).records(800)
    # no bloom cache: the rare-token pass below reads every block's filter from the map
    config = StoreConfig(block_records=4, seal_after_s=3_600.0, max_mapped_bytes=1, bloom_cache_bytes=0)
    store = Store(tmp / "s", config)
    try:
        store.ingest(records)
        store.flush()
        assert store.stats()["blocks"] >= 200
        calls = []
        release = store._env.release_pages
        store._env.release_pages = lambda: calls.append(1) or release()  # type: ignore[method-assign]
        node = q.Not(q.Field("level", "DEBUG"))
        expected = sorted((r for r in records if q.matches(node, r)), key=lambda r: (r["ts_ns"], r["id"]))
        answer = store.query(node, sort="asc", limit=len(records))
        assert answer["rows"] == expected and answer["total"] == len(expected)
        assert len(calls) >= store.stats()["blocks"] // 64, f"one scan released {len(calls)} times"
        assert store.count(q.Token("timeout")) == sum(q.matches(q.Token("timeout"), r) for r in records)
        # a rare token: the prefilter reads every block's bloom filter from the map (each read
        # maps its neighbours too) and checks the budget as often
        calls.clear()
        rare = q.Token("zzzneverwritten")
        assert store.query(rare, limit=10)["total"] == 0
        assert len(calls) >= store.stats()["blocks"] // 64 - 1, f"one bloom pass released {len(calls)} times"
    finally:
        close_store(store)


# --- bloom filters: the newest in memory, the rest read from the map -------------------------


def _needle_records(n_blocks: int, block_records: int) -> list[dict[str, Any]]:
    """Blocks of ordinary rows; row 5 of every 7th block holds a one-row token ``needle<block>``
    (only the bloom filter knows such a token: it has no posting list)."""
    records = []
    for i in range(n_blocks * block_records):
        block, row = divmod(i, block_records)
        message = f"needle{block} found" if row == 5 and block % 7 == 0 else f"routine row r{i}"
        records.append(make_record(i, T0_NS + i * S_NS, message))
    return records


def _decoded_blocks(store: Store, run: Any) -> tuple[Any, set[int]]:
    """``run()``'s answer and the blocks whose columns it decoded (a bloom filter rules a block out
    before any column is read; the store's column cache is emptied first)."""
    from storage import search

    store._cache = search.LruCache(store.config.cache_bytes)
    seen: set[int] = set()
    column = search.View.column

    def spy(view: Any, col: int) -> Any:
        seen.add(view.header.block_id)
        return column(view, col)

    search.View.column = spy  # type: ignore[method-assign]
    try:
        return run(), seen
    finally:
        search.View.column = column  # type: ignore[method-assign]


def _bloom_keys(store: Store) -> list[int]:
    with store._env.read() as txn:
        return [layout.read_u64(k) for k, _ in txn.cursor(db=store._dbs[layout.DB_BLOOMS])]


@pytest.mark.parametrize("cached_blooms", [0, 20, 1000])
def test_bloom_filters_prune_blocks_after_reopen_and_after_retention(tmp: Path, cached_blooms: int) -> None:
    """Whether a block's filter is in memory (the newest ``cached_blooms``) or read from the map,
    pruning works the same, in a reopened store and after retention dropped blocks (their filters go
    with them); a token only a dropped block held finds nothing."""
    records = _needle_records(64, 16)
    store = Store(tmp / "s", QUIET)
    store.ingest(records)
    store.flush()
    bloom_bytes = len(store._blooms.get(63))
    close_store(store)
    config = StoreConfig(block_records=16, seal_after_s=3_600.0, bloom_cache_bytes=cached_blooms * bloom_bytes)
    store = Store(tmp / "s", config)
    try:
        assert _bloom_keys(store) == sorted(store._headers) and len(store._headers) == 64
        assert len(store._blooms) == min(cached_blooms, 64) and (cached_blooms == 0 or 63 in store._blooms)
        for block in (0, 28, 63):
            token = q.Token(f"needle{block}")
            expected = [r["id"] for r in records if q.matches(token, r)]
            answer, decoded = _decoded_blocks(store, lambda: store.query(token, limit=10))
            assert [r["id"] for r in answer["rows"]] == expected
            # the holder, and the odd false positive (~1.2 % of 64 blocks), not all 64
            assert block in decoded and len(decoded) <= 4, decoded
        either = q.Or((q.Token("needle14"), q.Token("needle56")))  # asked per block through View
        count, decoded = _decoded_blocks(store, lambda: store.count(either))
        assert count == 2 and {14, 56} <= decoded and len(decoded) <= 6, decoded

        dropped = store.drop_before(T0_NS + 32 * 16 * S_NS)  # blocks 0..31
        assert dropped["dropped_blocks"] == 32
        assert _bloom_keys(store) == sorted(store._headers) == list(range(32, 64))
        assert store.count(q.Token("needle28")) == 0
        answer, decoded = _decoded_blocks(store, lambda: store.query(q.Token("needle35"), limit=10))
        assert [r["id"] for r in answer["rows"]] == [35 * 16 + 5]
        assert 35 in decoded and len(decoded) <= 3, decoded
    finally:
        close_store(store)


def _reachable_bytes(root: Any) -> list[bytes]:
    """Every bytes object reachable from ``root`` through containers and instances (not through
    modules, classes or functions: those lead to the whole interpreter).  A walk, not
    gc.get_objects(): CPython does not track a dict that holds only ints and bytes."""
    import gc
    import types

    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType)
    found, seen, todo = [], {id(root)}, [root]
    while todo:
        for value in gc.get_referents(todo.pop()):
            if id(value) in seen or isinstance(value, skip):
                continue
            seen.add(id(value))
            if type(value) is bytes:
                found.append(value)
            else:
                todo.append(value)
    return found


def test_only_the_newest_blocks_bloom_filters_stay_in_memory(tmp: Path) -> None:
    """The bloom cache holds the filters of the newest blocks up to its budget, after sealing and
    after reopening, not one per block for the store's life; older blocks' filters are read from
    the map and answer the same."""
    import hashlib

    records = _needle_records(100, 16)
    store = Store(tmp / "sizes", QUIET)  # the same blocks, to learn their filters' sizes
    try:
        store.ingest(records)
        store.flush()
        with store._env.read() as txn:
            sizes = {layout.read_u64(key): len(value) for key, value in txn.cursor(db=store._dbs[layout.DB_BLOOMS])}
        close_store(store)
        # room for exactly the newest 10
        config = StoreConfig(block_records=16, seal_after_s=3_600.0,
                             bloom_cache_bytes=sum(sizes[block] for block in range(90, 100)))
        for reopen in (False, True):
            store = Store(tmp / "s", config)
            if not reopen:
                store.ingest(records)
                store.flush()
            with store._env.read() as txn:
                digests = {layout.read_u64(key): hashlib.sha1(value).digest()
                           for key, value in txn.cursor(db=store._dbs[layout.DB_BLOOMS])}
            assert len(digests) == 100
            held = {hashlib.sha1(value).digest() for value in _reachable_bytes(store)}
            newest = {digests[block] for block in range(90, 100)}
            assert {d for d in digests.values() if d in held} == newest, f"reopen={reopen}"
            for block in (14, 91, 98):  # needles in an old block and in cached ones
                token = q.Token(f"needle{block}")
                answer, decoded = _decoded_blocks(store, lambda: store.query(token, limit=10))
                assert [r["id"] for r in answer["rows"]] == [block * 16 + 5]
                assert block in decoded and len(decoded) <= 4, decoded
            close_store(store)
    finally:
        close_store(store)


def test_blocks_sealed_before_minute_counts_still_answer_windows(tmp: Path) -> None:
    """Headers written before per-minute counts existed (version 1) decode without them; level
    counts and per-minute histograms over a window then come from the blocks, and stay exact."""
    from storage.aggregate import AggSpec, finalize, from_wire
    from storage.header import BlockHeader

    records = [make_record(i, T0_NS + i * 7 * S_NS, level=("ERROR" if i % 3 == 0 else "INFO")) for i in range(64)]
    store = Store(tmp / "s", QUIET)
    store.ingest(records)
    store.flush()
    close_store(store)
    store = Store(tmp / "s", QUIET)
    try:
        with store._env.env.begin(write=True) as txn:  # rewrite every header in the version-1 form
            db = store._dbs[layout.DB_HEADERS]
            for key, value in list(txn.cursor(db=db)):
                header = BlockHeader.decode(value)
                header.minutes = None
                txn.put(key, header.encode(), db=db)
        close_store(store)
        store = Store(tmp / "s", QUIET)
        assert store._totals.without_minutes == store.stats()["blocks"] > 0
        window = q.And((q.Field("level", "ERROR"), q.TimeRange(T0_NS + 61 * S_NS, T0_NS + 400 * S_NS)))
        expected = [r for r in records if q.matches(window, r)]
        assert store.count(window) == len(expected)
        spec = AggSpec(interval_ns=60 * S_NS)
        histogram = finalize(from_wire(store.aggregate(window, spec)), spec)["time_histogram"]
        assert histogram == sorted([b, n] for b, n in Counter(r["ts_ns"] // (60 * S_NS) * 60 * S_NS
                                                              for r in expected).items())
    finally:
        close_store(store)


def test_store_full_at_the_cap_keeps_acknowledged_data(tmp: Path) -> None:
    # block_records above what fits: the tail is never sealed, so only ingest meets the cap
    config = StoreConfig(block_records=4096, seal_after_s=3_600.0, map_size_bytes=1 << 20,
                         max_store_bytes=1 << 21)
    rng = random.Random(2)
    store = Store(tmp / "s", config)
    acknowledged: list[int] = []
    try:
        with pytest.raises(StoreFull) as info:
            for batch in range(200):
                chunk = _bulky(rng, batch * 100, 10, 4096)
                store.ingest(chunk)
                acknowledged += [r["id"] for r in chunk]
        message = info.value.message
        assert str(1 << 21) in message and "max_store_bytes" in message, message
        assert 0 < len(acknowledged) < 200 * 10
        assert _ids(store) == acknowledged  # still readable, nothing half-written
        with pytest.raises(StoreFull):
            store.ingest(_bulky(rng, 10**6, 10, 4096))
        assert store.ingest([])["accepted"] == 0  # an empty batch needs no room
        close_store(store)
        store = Store(tmp / "s", config)
        assert _ids(store) == acknowledged
    finally:
        close_store(store)


# --- check_records ---------------------------------------------------------------------------------


def _bad(index: int, **change: Any) -> list[Any]:
    records = [make_record(i, i) for i in range(index + 1)]
    for name, value in change.items():
        if value is KeyError:
            del records[index][name]
        else:
            records[index][name] = value
    return records


@pytest.mark.parametrize("records, words", [
    ({"id": 1}, ["records must be a list", "dict"]),
    ([make_record(0, 0), "x"], ["record 1 must be a map", "str"]),
    (_bad(2, ts_ns="2024-01-01"), ["record 2", "'ts_ns'", "must be int", "got str"]),
    (_bad(0, id=True), ["record 0", "'id'", "bool"]),
    (_bad(1, message=KeyError), ["record 1", "'message'", "nothing"]),
    (_bad(0, tags="a,b"), ["record 0", "'tags'", "must be list"]),
    (_bad(0, tags=["a", 1]), ["record 0", "'tags'", "strings"]),
    (_bad(3, metadata=[["k", "v"]]), ["record 3", "'metadata'", "must be dict"]),
    (_bad(0, thread_id=7), ["record 0", "'thread_id'", "str/NoneType"]),
    (_bad(0, level=None), ["record 0", "'level'"]),
    (_bad(1, ts_ns=2**63), ["record 1", "int64"]),
    (_bad(0, id=-1), ["record 0", "int64"]),
])
def test_check_records_names_the_record_and_field(records: Any, words: list[str]) -> None:
    with pytest.raises(BadRequest) as info:
        check_records(records)
    for word in words:
        assert word in info.value.message, info.value.message


@pytest.mark.parametrize("value", [[1, 2], {"nested": 1}], ids=["list", "map"])
def test_check_records_refuses_metadata_values_outside_the_record_shape(value: Any) -> None:
    """DESIGN §2 / storage.record: metadata is a flat map of str -> str | int | float | bool."""
    with pytest.raises(BadRequest) as info:
        check_records([make_record(0, 0), make_record(1, 1, metadata={"k": value})])
    assert "record 1" in info.value.message and "metadata" in info.value.message, info.value.message


def test_check_records_accepts_the_stored_shape() -> None:
    records = RecordGen(random.Random(3)).records(50)
    assert check_records(records) is records


_ODD_VALUES = st.sampled_from([None, True, False, 0, -1, 2**63, -(2**63) - 1, 1.5, float("nan"), float("inf"),
                               "", "x", b"x", [], ["a"], ["a", 1], {}, {"k": "v"}, {"k": None}, {"k": [1]},
                               {"k": 2**64}, {"k": float("nan")}, {"k": True}, {"k": 1.5}, KeyError])


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["id", "ts_ns", "level", "message", "source", "tags", "metadata", "thread_id",
                        "request_id", "user_id", "extra"]), _ODD_VALUES)
def test_check_records_fast_path_never_accepts_what_the_full_check_refuses(name: str, value: Any) -> None:
    """``check_records`` tests the common shape in one fast pass; one odd field at a time, the
    answer is the full check's: the same BadRequest, or acceptance."""
    from storage import store as store_module

    record = make_record(0, 0)
    if value is KeyError:
        record.pop(name, None)
    else:
        record[name] = value
    try:
        store_module._check_record(0, record)
        expected: str | None = None
    except BadRequest as exc:
        expected = exc.message
    if store_module._well_formed(record):
        assert expected is None, f"fast path accepted {name}={value!r}; full check says {expected}"
    try:
        check_records([record])
        got: str | None = None
    except BadRequest as exc:
        got = exc.message
    assert got == expected


# --- stats, order, retention -----------------------------------------------------------------------


def test_stats_header_counts_equal_the_records(tmp: Path) -> None:
    rng = random.Random(4)
    records = RecordGen(rng).records(150)
    store = Store(tmp / "s", StoreConfig(block_records=16, seal_after_s=3_600.0))
    try:
        store.ingest(records[:100])
        store.flush()
        store.ingest(records[100:])  # 50 more: some sealed, some in the tail
        for when in ("mixed", "flushed"):
            stats = store.stats()
            assert stats["records"] == len(records), when
            assert stats["by_level"] == dict(Counter(r["level"] for r in records)), when
            assert stats["by_source"] == dict(Counter(r["source"] for r in records)), when
            assert stats["by_tag"] == dict(Counter(t for r in records for t in r["tags"])), when
            assert stats["sealed_records"] + stats["unsealed_records"] == len(records), when
            store.flush()
        assert store.stats()["blocks"] >= len(records) // 16
    finally:
        close_store(store)


def test_out_of_order_timestamps_come_back_in_order(tmp: Path) -> None:
    store = Store(tmp / "s", StoreConfig(block_records=4, seal_after_s=3_600.0))
    try:
        timestamps = [50, 10, 40, 10, 30, 20, 90, 0, 70, 60, 80]
        store.ingest([make_record(i + 1, T0_NS + ts) for i, ts in enumerate(timestamps)])
        expected = sorted((T0_NS + ts, i + 1) for i, ts in enumerate(timestamps))
        for phase in ("mixed", "flushed"):
            rows = store.query(q.MatchAll(), sort="asc", limit=100)["rows"]
            assert [(r["ts_ns"], r["id"]) for r in rows] == expected, phase
            rows = store.query(q.MatchAll(), sort="desc", limit=100)["rows"]
            assert [(r["ts_ns"], r["id"]) for r in rows] == expected[::-1], phase
            window = store.query(q.TimeRange(T0_NS + 10, T0_NS + 50), sort="asc", limit=100)["rows"]
            assert [r["ts_ns"] - T0_NS for r in window] == [10, 10, 20, 30, 40], phase
            store.flush()
    finally:
        close_store(store)


def test_retention_drops_whole_blocks_only(tmp: Path) -> None:
    store = Store(tmp / "s", StoreConfig(block_records=10, seal_after_s=3_600.0))
    old_ns, new_ns, cutoff_ns = T0_NS, T0_NS + 100 * S_NS, T0_NS + 50 * S_NS
    try:
        store.ingest(_records(1, 10, ts_ns=old_ns))  # block A: all old
        store.flush()
        store.ingest(_records(11, 5, ts_ns=old_ns) + _records(16, 5, ts_ns=new_ns))  # block B: mixed
        store.flush()
        store.ingest(_records(21, 3, ts_ns=old_ns))  # tail: old, but not in a block
        answer = store.drop_before(cutoff_ns)
        assert answer == {"dropped_blocks": 1, "dropped_records": 10}
        # readers no longer see anything older than the cutoff; storage keeps the mixed block B and
        # the tail until their newest record expires
        assert _ids(store) == list(range(16, 21))
        stats = store.stats()
        assert (stats["records"], stats["blocks"]) == (13, 1)
        assert store.count(q.TimeRange(None, cutoff_ns)) == 0
        assert store.drop_before(cutoff_ns) == {"dropped_blocks": 0, "dropped_records": 0}
        store.flush()
        close_store(store)
        store = Store(tmp / "s", StoreConfig(block_records=10, seal_after_s=3_600.0))
        assert _ids(store) == list(range(16, 21)), "the cutoff survives a restart"
        assert store.count(q.TimeRange(None, cutoff_ns)) == 0
    finally:
        close_store(store)


def test_metadata_keys_containing_equals_are_not_confused(tmp: Path) -> None:
    records = [make_record(1, 1, metadata={"a=b": "c"}), make_record(2, 2, metadata={"a=b": "c"}),
               make_record(3, 3, metadata={"a": "b=c"}), make_record(4, 4, metadata={"a": "b=c"})]
    store = Store(tmp / "s", QUIET)
    try:
        store.ingest(records)
        for phase in ("tail", "sealed"):
            for node, expected in ((q.Field("meta.a", "b=c"), [3, 4]), (q.Field("meta.a=b", "c"), [1, 2])):
                assert [r["id"] for r in records if q.matches(node, r)] == expected  # the oracle
                assert _ids(store, node) == expected, f"{phase}: {node}"
                assert store.count(node) == len(expected), f"{phase}: {node}"
            store.flush()
    finally:
        close_store(store)


def test_none_metadata_value_means_absent_in_tail_and_blocks_alike(tmp: Path) -> None:
    records = [make_record(1, 1, metadata={"k": None}), make_record(2, 2, metadata={"k": None}),
               make_record(3, 3, metadata={"k": "None"})]
    store = Store(tmp / "s", QUIET)
    try:
        try:
            store.ingest(records)
        except BadRequest:
            return  # refused at the door is a correct answer too
        node = q.Field("meta.k", "None")
        assert [r["id"] for r in records if q.matches(node, r)] == [3]  # the oracle
        for phase in ("tail", "sealed"):
            assert _ids(store, node) == [3], phase
            assert store.count(node) == 1, phase
            store.flush()
    finally:
        close_store(store)


# --- closing ---------------------------------------------------------------------------------------


def test_close_after_flush_then_reopen(tmp: Path) -> None:
    store = Store(tmp / "s", QUIET)
    store.ingest(_records(1, 100))
    store.flush()
    run_with_deadline(store.close, 20, "close() after flush")
    store = Store(tmp / "s", QUIET)
    try:
        assert _ids(store) == list(range(1, 101))
    finally:
        close_store(store)


def test_close_right_after_a_large_ingest_returns(tmp: Path) -> None:
    """Regression: close() used to stop the writer before the sealer; a sealer with a block to store
    then waited forever for the stopped writer, so close() hung with >= block_records unsealed."""
    store = Store(tmp / "s", StoreConfig(block_records=64, seal_after_s=3_600.0))
    store.ingest(_records(1, 2_000))
    run_with_deadline(store.close, 5, "close() with a full tail")
    store = Store(tmp / "s", QUIET)
    try:
        assert _ids(store) == list(range(1, 2_001))
    finally:
        close_store(store)


def test_aggregations_over_everything_use_running_totals_that_stay_exact(tmp: Path) -> None:
    """Group-by over everything is answered from running header totals: they must follow sealing,
    retention (including a block that retention only partly hides) and a restart."""
    from storage.aggregate import AggSpec, finalize, from_wire

    spec = AggSpec(group_by="level", top=(("tags", 3), ("source", 5)))

    def answer(store: Store) -> dict:
        return finalize(from_wire(store.aggregate(q.MatchAll(), spec)), spec)

    def oracle(records: list[dict]) -> dict:
        from storage.aggregate import Aggregator

        agg = Aggregator(spec)
        for record in records:
            agg.add_record(record)
        return finalize(agg.partial, spec)

    records = [make_record(i, T0_NS + i * S_NS, level=["INFO", "WARN", "ERROR"][i % 3], source=f"s{i % 4}",
                           tags=[f"t{i % 5}"]) for i in range(1, 101)]
    store = Store(tmp / "s", StoreConfig(block_records=16, seal_after_s=3_600.0))
    try:
        store.ingest(records[:50])
        assert answer(store) == oracle(records[:50])  # all in the tail
        store.flush()
        store.ingest(records[50:])
        assert answer(store) == oracle(records)  # blocks + tail
        # records 1-16 form the first block: a cutoff at record 17 drops it whole and hides nothing else
        boundary = T0_NS + 17 * S_NS
        assert store.drop_before(boundary)["dropped_records"] == 16
        assert answer(store) == oracle([r for r in records if r["ts_ns"] >= boundary])
        cutoff = T0_NS + 40 * S_NS + S_NS // 2  # inside a block: retention hides part of it
        store.drop_before(cutoff)
        assert answer(store) == oracle([r for r in records if r["ts_ns"] >= cutoff])
        store.flush()
        close_store(store)
        store = Store(tmp / "s", StoreConfig(block_records=16, seal_after_s=3_600.0))
        assert answer(store) == oracle([r for r in records if r["ts_ns"] >= cutoff])
    finally:
        close_store(store)


def test_ingest_waits_while_too_many_records_are_unsealed(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Backpressure: acknowledged-but-unsealed records are held in memory, so past
    max_unsealed_records new batches wait (unacknowledged) until sealing catches up."""
    import concurrent.futures
    import threading

    import storage.store as store_module

    release = threading.Event()
    real_build = store_module.build_block

    def slow_build(records, block_id):  # noqa: ANN001, ANN202
        release.wait(30)
        return real_build(records, block_id)

    monkeypatch.setattr(store_module, "build_block", slow_build)
    store = Store(tmp / "s", StoreConfig(block_records=50, seal_after_s=3_600.0, max_unsealed_records=100))
    try:
        store.ingest(_records(1, 120))  # over the limit, and the sealer is stuck
        held = store.submit(_records(121, 10))
        with pytest.raises(concurrent.futures.TimeoutError):
            held.result(timeout=0.5)  # not acknowledged while 120 records wait to be sealed
        release.set()
        assert held.result(timeout=30)["accepted"] == 10
        assert sorted(_ids(store)) == list(range(1, 131))
    finally:
        release.set()
        close_store(store)


# --- pipelined sealing ------------------------------------------------------------------------------


def test_reads_during_pipelined_sealing_see_every_acknowledged_record_once(tmp: Path) -> None:
    """The sealer builds the next block while the writer commits the previous one; rows claimed by
    a block in flight stay in the tail until it is shown, so a reader never misses or doubles one."""
    store = Store(tmp / "s", StoreConfig(block_records=16, seal_after_s=3_600.0))
    acked = 0
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            floor = acked
            answer = store.query(q.MatchAll(), sort="asc", limit=100_000)
            ids = [row["id"] for row in answer["rows"]]
            if len(ids) != len(set(ids)) or answer["total"] != len(ids):
                problems.append(f"a record came back twice among {len(ids)}")
            if len(ids) < floor:
                problems.append(f"{len(ids)} records seen after {floor} were acknowledged")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for batch in range(60):
            store.ingest(_records(batch * 37 + 1, 37, ts_ns=T0_NS + batch * 37))
            acked += 37
        store.flush()
    finally:
        stop.set()
        thread.join(30)
    try:
        assert not problems, problems[:3]
        assert _ids(store) == list(range(1, 60 * 37 + 1))
        stats = store.stats()
        assert (stats["sealed_records"], stats["unsealed_records"]) == (60 * 37, 0)
        assert stats["blocks"] == -(-60 * 37 // 16)
    finally:
        close_store(store)


def test_a_block_that_fails_to_commit_leaves_its_rows_and_the_next_block_unsealed(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed block commit must not let the block built after it (on the failed block's rows
    being sealed) be stored: its rows would be skipped in the tail and in the WAL."""
    import storage.store as store_module

    real_put = store_module.Store._put_block
    calls = {"n": 0}

    def failing_second_put(self, txn, sealed, taken, count):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk said no")
        return real_put(self, txn, sealed, taken, count)

    monkeypatch.setattr(store_module.Store, "_put_block", failing_second_put)
    store = Store(tmp / "s", StoreConfig(block_records=16, seal_after_s=3_600.0))
    try:
        store.ingest(_records(1, 80))  # five blocks' worth: the sealer starts on its own
        wait_for(lambda: calls["n"] >= 2, 30, "the second block's commit")
        assert _ids(store) == list(range(1, 81))  # nothing lost or doubled by the failed commit
        try:
            store.flush()  # seals the rest, unless the failure happened inside this flush
        except ShardlogError as exc:
            assert "disk said no" in str(exc)
        store.flush()  # the next attempt seals whatever is left
        stats = store.stats()
        assert (stats["sealed_records"], stats["unsealed_records"]) == (80, 0)
        assert _ids(store) == list(range(1, 81))
        assert store._tail.claimed == 0  # every claim was released or shown
        close_store(store)
        store = Store(tmp / "s", StoreConfig(block_records=16, seal_after_s=3_600.0))
        assert _ids(store) == list(range(1, 81))
        assert store.stats()["records"] == 80
    finally:
        close_store(store)
