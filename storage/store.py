"""One shard's store: durable ingest with group commit, sealing into blocks, reads, retention.

Write path (one writer thread owns every LMDB write transaction):

    ingest(records) ──► queue ──► writer: one write txn for every pending request
                                   (one WAL entry per batch + idempotency keys), commit with
                                   fsync, then acknowledge all of them together (group commit)
    sealer: when the tail holds >= block_records (or is older than seal_after_s), build a block
            from its oldest rows; the writer stores it in its next txn, deleting fully sealed WAL
            entries and recording how many rows of a partly sealed one are done (wal_done); the
            sealer builds the next block meanwhile (one block queued at a time, see ``_seal``)

Read path: a snapshot of (blocks overlapping the time bounds, the unsealed tail) is taken under
``_state_lock``; the blocks are then read in one read transaction (``storage.search``).

Locking rules:
* ``_state_lock`` guards ``_tree``, ``_headers``, ``_blooms`` (its writes) and ``_tail``
  (``storage.tail``: the unsealed batches, each entry's ``start``, and the rows claimed by blocks
  in flight);
  the writer changes them only after the LMDB commit that makes the change durable succeeded, so
  a snapshot never shows a block whose data a read transaction could miss, and never shows a
  record twice (in a block and in the tail).
* Only the writer thread touches ``_next_seq``, and only the sealer ``_next_block_id``.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lmdb
import msgpack

from storage import layout
from storage import query as q
from storage.aggregate import AggSpec, Aggregator, merge as merge_partials, to_wire as aggregate_to_wire
from storage.avl import IntervalTree
from storage.block import MAX_BLOCK_ROWS, SealedBlock, build_block
from storage.bloom import BloomCache
from storage.env import Env, make_private_dir, take_owner_lock
from storage.errors import BadRequest, CorruptData, Overloaded, ShardlogError, StoreFull
from storage.header import MINUTE_NS, BlockHeader, HeaderTotals
from storage.jsonlines import replay_lines
from storage.search import LruCache, Snapshot, level_window, run_aggregate, run_count, run_query
from storage.tail import Tail, Taken, WalEntry

log = logging.getLogger("shardlog.store")


@dataclass(frozen=True)
class StoreConfig:
    #: records per sealed block (DESIGN §4: ~1,024 balances compression against decode cost)
    block_records: int = 1024
    #: seal a partial block once its oldest record waited this long, so the WAL stays short
    seal_after_s: float = 1.0
    #: initial LMDB map; it doubles on MapFullError up to max_store_bytes
    map_size_bytes: int = 256 * 1024 * 1024
    max_store_bytes: int = 1 << 40
    #: idempotency keys are remembered this long
    idempotency_ttl_s: float = 24 * 3600
    #: records accepted but not yet committed; beyond it ingest answers Overloaded (retryable)
    max_pending_records: int = 500_000
    #: acknowledged records not yet sealed into blocks (held in memory); beyond it new batches wait
    max_unsealed_records: int = 16_384
    #: decoded columns and posting bitmaps kept in memory for repeated queries (estimated bytes)
    cache_bytes: int = 64 * 1024 * 1024
    #: bloom filters of the newest blocks kept in memory (~4 KiB per block of 1,024 records: 8 MiB
    #: covers the newest ~2M records); a query reads older blocks' filters from the map
    bloom_cache_bytes: int = 8 * 1024 * 1024
    reader_check_interval_s: float = 60.0
    #: when the process's file-backed RSS passes this, the store unmaps the data-file pages it has
    #: read (Env.release_pages; they stay in the page cache), so RSS tracks the working set instead
    #: of growing with the data file; checked after sealed blocks, sealer wakes and reads (at most
    #: every 20 ms); 0 = never.
    #: It includes the ~15-20 MiB of the interpreter's own files.
    max_mapped_bytes: int = 48 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.block_records <= MAX_BLOCK_ROWS:
            raise ValueError(f"block_records {self.block_records} must be 1..{MAX_BLOCK_ROWS}")


_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (int,),
    "ts_ns": (int,),
    "level": (str,),
    "message": (str,),
    "source": (str,),
    "tags": (list,),
    "metadata": (dict,),
    "thread_id": (str, type(None)),
    "request_id": (str, type(None)),
    "user_id": (str, type(None)),
}


_META_TYPES = (str, int, float, bool)
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def check_records(records: Any) -> list[dict[str, Any]]:
    """Records arriving from the wire must have the normalized shape (the coordinator normalizes);
    a wrong one is refused as a whole request, naming the record and field."""
    if not isinstance(records, list):
        raise BadRequest(f"records must be a list, got {type(records).__name__}")
    for index, record in enumerate(records):
        if not _well_formed(record):
            _check_record(index, record)
    return records


def _well_formed(record: Any) -> bool:
    """The common case of ``_check_record`` in one pass of exact type tests (this runs for every
    ingested record): True means the record is certainly valid; False means "ask the slow check",
    which names the problem, or accepts an unusual but valid record."""
    if type(record) is not dict:
        return False
    try:
        ts_ns, rid = record["ts_ns"], record["id"]
        if type(ts_ns) is not int or type(rid) is not int or not _I64_MIN <= ts_ns <= _I64_MAX \
                or not 0 <= rid <= _I64_MAX:
            return False
        if type(record["level"]) is not str or type(record["message"]) is not str \
                or type(record["source"]) is not str:
            return False
        for name in ("thread_id", "request_id", "user_id"):
            value = record[name]
            if value is not None and type(value) is not str:
                return False
        tags = record["tags"]
        if type(tags) is not list:
            return False
        for tag in tags:
            if type(tag) is not str:
                return False
        metadata = record["metadata"]
        if type(metadata) is not dict:
            return False
        for value in metadata.values():
            cls = type(value)
            if cls is str or cls is bool:
                continue
            if cls is int:
                if not _I64_MIN <= value <= _I64_MAX:
                    return False
            elif cls is not float or not math.isfinite(value):
                return False
    except KeyError:
        return False
    return True


def _check_record(index: int, record: Any) -> None:
    if not isinstance(record, dict):
        raise BadRequest(f"record {index} must be a map, got {type(record).__name__}")
    for name, types in _RECORD_TYPES.items():
        value = record.get(name, ...)
        if not isinstance(value, types) or isinstance(value, bool):
            raise BadRequest(f"record {index} field {name!r} must be {'/'.join(t.__name__ for t in types)}, "
                             f"got {type(value).__name__ if value is not ... else 'nothing'}")
    if not all(isinstance(t, str) for t in record["tags"]):
        raise BadRequest(f"record {index} field 'tags' must hold strings")
    for key, value in record["metadata"].items():
        # a nested or None value would be acknowledged and then break sealing for good
        if not isinstance(value, _META_TYPES) or (isinstance(value, int) and not _I64_MIN <= value <= _I64_MAX) \
                or (isinstance(value, float) and not math.isfinite(value)):
            raise BadRequest(f"record {index} metadata {key!r:.100} must be a string, a 64-bit integer, a finite "
                             f"number or a boolean, got {type(value).__name__}; flatten it before sending")
    if not -(1 << 63) <= record["ts_ns"] < (1 << 63) or not 0 <= record["id"] < (1 << 63):
        raise BadRequest(f"record {index} ts_ns/id out of the int64 range")


class _Task:
    __slots__ = ("kind", "records", "key", "future", "arg", "packed")

    def __init__(self, kind: str, records: list[dict[str, Any]] | None = None, key: str | None = None,
                 arg: Any = None, packed: bytes | None = None) -> None:
        self.kind = kind
        self.records = records
        self.key = key
        self.arg = arg
        self.packed = packed
        self.future: Future = Future()


class Store:
    def __init__(self, path: str | os.PathLike[str], config: StoreConfig | None = None) -> None:
        self.path = Path(path)
        self.config = config or StoreConfig()
        make_private_dir(self.path)
        self._lock_fd = take_owner_lock(self.path)
        try:
            self._env = Env(self.path, map_size_bytes=self.config.map_size_bytes,
                            max_size_bytes=self.config.max_store_bytes,
                            max_mapped_bytes=self.config.max_mapped_bytes)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._dbs = self._env.dbs
        self._cache = LruCache(self.config.cache_bytes)
        self._state_lock = threading.Lock()
        self._tree = IntervalTree()
        #: every sealed block's header (queries prune by their counts on every block)
        self._headers: dict[int, BlockHeader] = {}
        #: the newest blocks' bloom filters (bounded; a query reads the others from the map)
        self._blooms = BloomCache(self.config.bloom_cache_bytes)
        self._tail = Tail()  # acknowledged batches not sealed yet, and the rows blocks in flight claimed
        self._pending_records = 0
        self._pending_lock = threading.Lock()
        self._next_seq = 0
        self._next_block_id = 0
        #: records older than this are expired: hidden from reads at once, their blocks dropped when
        #: wholly expired (a block straddling the cutoff stays until its newest record expires)
        self._retention_cutoff_ns: int | None = None
        #: header counts summed over every sealed block (kept with _headers under _state_lock), so an
        #: aggregation over everything by level/source/tag costs the same at any data size
        self._totals = HeaderTotals()
        self._load()
        self._queue: queue.Queue[_Task] = queue.Queue()  # ingest batches, for the writer
        self._maintenance: queue.Queue[_Task] = queue.Queue()  # flush / retention / stop, for the sealer
        self._write_lock = threading.Lock()  # LMDB has one write transaction at a time
        self._seal_wakeup = threading.Event()
        self._closed = False
        self._writer = threading.Thread(target=self._writer_main, name=f"store-writer:{self.path.name}",
                                        daemon=True)
        self._sealer = threading.Thread(target=self._sealer_main, name=f"store-sealer:{self.path.name}",
                                        daemon=True)
        self._writer.start()
        self._sealer.start()

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> "Store":
        return cls(path, StoreConfig(**options))

    # --- open ----------------------------------------------------------------------------------

    def _load(self) -> None:
        items = []
        with self._env.read() as txn:
            cutoff = txn.get(layout.META_RETENTION_CUTOFF, db=self._dbs[layout.DB_META])
            if cutoff is not None:
                self._retention_cutoff_ns = layout.I64.unpack(cutoff)[0]
            for key, value in txn.cursor(db=self._dbs[layout.DB_HEADERS]):
                header = BlockHeader.decode(value)
                if header.block_id != layout.read_u64(key):
                    raise CorruptData(f"block header under key {key.hex()} claims id {header.block_id}")
                self._headers[header.block_id] = header
                self._totals.add(header)
                items.append((header.min_ts, header.max_ts, header.block_id))
            self._load_blooms(txn)
            done = {layout.read_u64(k): layout.U32.unpack(v)[0]
                    for k, v in txn.cursor(db=self._dbs[layout.DB_WAL_DONE])}
            replayed: list[WalEntry] = []
            for key, value in txn.cursor(db=self._dbs[layout.DB_WAL]):
                seq = layout.read_u64(key)
                try:
                    batch = msgpack.unpackb(value, raw=False, strict_map_key=True)
                    if isinstance(batch, dict):  # the JSON lines a shard parsed (layout: WAL values)
                        batch = replay_lines(batch)
                    check_records(batch)
                except (ShardlogError, ValueError, TypeError, msgpack.UnpackException) as exc:
                    raise CorruptData(f"WAL entry {seq} in {self.path} cannot be read: {exc}") from exc
                start = done.get(seq, 0)
                if start < len(batch):
                    replayed.append(WalEntry(seq, batch, start))
                self._next_seq = seq + 1
        self._tree = IntervalTree.from_items(items)
        self._next_block_id = max(self._headers, default=-1) + 1
        self._tail.append(replayed, time.monotonic())
        if self._tail:
            log.info("store %s: replayed %d records from the WAL", self.path, self._tail.records)

    def _load_blooms(self, txn: lmdb.Transaction) -> None:
        """The newest blocks' filters that fit in the bloom cache, added oldest first."""
        newest: list[tuple[int, bytes]] = []
        room = self._blooms.max_bytes
        cursor = txn.cursor(db=self._dbs[layout.DB_BLOOMS])
        found = cursor.last()
        while found:
            value = cursor.value()
            if len(value) > room:
                break
            room -= len(value)
            newest.append((layout.read_u64(cursor.key()), bytes(value)))
            found = cursor.prev()
        for block_id, bloom in reversed(newest):
            self._blooms.add(block_id, bloom)

    # --- writes --------------------------------------------------------------------------------

    def submit(self, records: list[dict[str, Any]], idempotency_key: str | None = None,
               packed: bytes | None = None) -> Future:
        """Queue a batch; the future resolves to ``{"accepted": n, "duplicate": bool}`` once durable.
        ``packed``, when given, is the batch's WAL value, written as is instead of packing the records:
        their msgpack (as received from the wire), or ``layout.wal_lines_value`` of the JSON lines
        they were parsed from (see storage.layout, "WAL values")."""
        if self._closed:
            raise ShardlogError(f"store {self.path} is closed")
        n = len(records)
        with self._pending_lock:
            if self._pending_records and self._pending_records + n > self.config.max_pending_records:
                raise Overloaded(f"store {self.path} has {self._pending_records} records waiting to commit; the "
                                 f"limit is {self.config.max_pending_records} (max_pending_records); retry shortly",
                                 retry_after_s=1)
            self._pending_records += n
        task = _Task("ingest", records, idempotency_key, packed=packed)
        self._queue.put(task)
        return task.future

    def ingest(self, records: list[dict[str, Any]], idempotency_key: str | None = None) -> dict[str, Any]:
        """Store a batch durably (blocks until committed).  Thread-safe; concurrent callers share commits."""
        return self.submit(records, idempotency_key).result()

    def flush(self) -> None:
        """Seal every unsealed record into blocks now."""
        self._run_task(_Task("flush"))

    def drop_before(self, cutoff_ns: int) -> dict[str, int]:
        """Retention: drop every block whose newest record is older than ``cutoff_ns``."""
        return self._run_task(_Task("retention", arg=cutoff_ns))

    def _run_task(self, task: _Task) -> Any:
        if self._closed:
            raise ShardlogError(f"store {self.path} is closed")
        self._maintenance.put(task)
        self._seal_wakeup.set()
        return task.future.result()

    def _writer_main(self) -> None:
        """Group commit: every batch queued while the previous commit ran goes into the next one.

        Backpressure: while more than ``max_unsealed_records`` are waiting to be sealed, new batches
        are held (not committed, not acknowledged) and only sealed blocks are stored, so memory stays
        bounded when ingest outruns sealing; held callers simply wait longer for their ack."""
        held: list[_Task] = []
        while True:
            try:
                if held and self._tail.records < self.config.max_unsealed_records:
                    tasks = [self._queue.get_nowait()]  # room again: commit the held batches now
                else:
                    tasks = [self._queue.get(timeout=0.05 if held else None)]
            except queue.Empty:
                tasks = []
            while len(tasks) < 10_000:
                try:
                    tasks.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = [t for t in tasks if t.kind == "stop"]
            ingests = held + [t for t in tasks if t.kind == "ingest"]
            seals = [t for t in tasks if t.kind == "seal"]
            held = []
            if ingests and not stop and self._tail.records >= self.config.max_unsealed_records:
                held, ingests = ingests, []
                self._seal_wakeup.set()
            if ingests or seals:
                self._commit(ingests, seals)
                if self._tail.records >= self.config.block_records:
                    self._seal_wakeup.set()
            if stop:
                for task in stop:
                    task.future.set_result(None)
                return

    def _sealer_main(self) -> None:
        """Builds blocks (CPU) while the writer waits on fsyncs, and runs flush / retention."""
        last_reader_check = time.monotonic()
        while True:
            self._seal_wakeup.wait(self.config.seal_after_s / 2)
            self._seal_wakeup.clear()
            try:
                self._seal(force=False)
            except Exception:  # keep sealing alive; the records stay in the WAL and in queries
                log.exception("store %s: sealing failed; records stay in the WAL", self.path)
            self._maybe_release_pages()
            while True:
                try:
                    task = self._maintenance.get_nowait()
                except queue.Empty:
                    break
                try:
                    if task.kind == "flush":
                        self._seal(force=True)
                        task.future.set_result(None)
                    elif task.kind == "retention":
                        task.future.set_result(self._drop_before(task.arg))
                    elif task.kind == "stop":
                        task.future.set_result(None)
                        return
                except BaseException as exc:
                    task.future.set_exception(exc)
            now = time.monotonic()
            if now - last_reader_check > self.config.reader_check_interval_s:
                # housekeeping: clear reader slots of dead processes, forget expired idempotency keys
                last_reader_check = now
                try:
                    self._env.env.reader_check()
                    self._expire_idempotency_keys()
                except (lmdb.Error, ShardlogError):
                    log.exception("store %s: housekeeping failed", self.path)

    def _maybe_release_pages(self) -> None:
        # the write lock only when releasing: waiting for it means waiting for a commit's fsync
        if self._env.over_budget():
            with self._write_lock:  # no map growth (a remap) meanwhile
                self._env.release_pages()

    def _write(self, fill: Callable[[lmdb.Transaction], Any]) -> Any:
        """One write transaction; on MapFullError abort, grow the map and retry the whole thing."""
        with self._write_lock:
            while True:
                try:
                    with self._env.env.begin(write=True) as txn:
                        return fill(txn)
                except lmdb.MapFullError:
                    self._env.grow()

    def _commit(self, tasks: list[_Task], seals: list[_Task]) -> None:
        """One durable transaction for all queued ingest batches and sealed blocks: ingest writes WAL
        chunks; a sealed block is stored and its WAL chunks deleted.  One fsync for all of them."""
        now_ns = time.time_ns()

        def fill(txn: lmdb.Transaction) -> tuple[list[Any], list[WalEntry], int]:
            for seal in seals:
                self._put_block(txn, *seal.arg)
            seq = self._next_seq
            results: list[Any] = []
            entries: list[WalEntry] = []
            seen: dict[bytes, int] = {}
            wal = self._dbs[layout.DB_WAL]
            for task in tasks:
                records = task.records or []
                ikey = layout.idem_key(task.key) if task.key else None
                if ikey is not None:
                    previous = txn.get(ikey, db=self._dbs[layout.DB_IDEM])
                    if previous is not None or ikey in seen:
                        accepted = seen.get(ikey)
                        if accepted is None:
                            accepted = msgpack.unpackb(previous, raw=False).get("accepted", 0)
                        results.append({"accepted": accepted, "duplicate": True})
                        continue
                if records:
                    packed = task.packed if task.packed is not None else msgpack.packb(records, use_bin_type=True)
                    txn.put(layout.u64(seq), packed, db=wal, append=True)
                    entries.append(WalEntry(seq, records))
                    seq += 1
                if ikey is not None:
                    seen[ikey] = len(records)
                    txn.put(ikey, msgpack.packb({"ts_ns": now_ns, "accepted": len(records)}),
                            db=self._dbs[layout.DB_IDEM])
                    txn.put(layout.idem_age_key(now_ns, ikey), b"", db=self._dbs[layout.DB_IDEM_AGE])
                results.append({"accepted": len(records), "duplicate": False})
            return results, entries, seq

        total = sum(len(t.records or ()) for t in tasks)
        try:
            results, entries, next_seq = self._write(fill)
        except BaseException as exc:
            with self._pending_lock:
                self._pending_records -= total
            error = exc if isinstance(exc, ShardlogError) else StoreFull(str(exc)) if isinstance(
                exc, lmdb.MapFullError) else ShardlogError(f"commit failed in {self.path}: {exc}")
            with self._state_lock:  # the rows of failed blocks are the sealer's to claim again
                for seal in seals:
                    self._tail.release(seal.arg[2])
            for task in tasks + seals:
                task.future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            log.error("store %s: commit of %d requests failed: %s", self.path, len(tasks), exc)
            return
        self._next_seq = next_seq
        with self._state_lock:
            for seal in seals:
                self._show_block(*seal.arg)
            self._tail.append(entries, time.monotonic())
        with self._pending_lock:
            self._pending_records -= total
        for task, result in zip(tasks, results):
            task.future.set_result(result)
        for seal in seals:
            seal.future.set_result(None)

    def _seal(self, *, force: bool) -> None:
        """Seal the tail's oldest rows, a block at a time, while there is a block's worth (or any,
        when ``force`` or when the oldest row waited ``seal_after_s``).

        Pipelined: block k+1 is built while the writer commits block k (an fsync), instead of
        waiting for it; measured, the wait was ~5 ms per block against ~8.5 ms of building.  At
        most one block is queued at a time, and block k+1 is queued only once block k committed, so
        the writer never stores a block whose predecessor failed; the rows a built block claims
        stay claimed in the tail until it is shown (or failed), and the next claim skips them."""
        block_records = self.config.block_records
        queued: _Task | None = None
        try:
            while True:
                with self._state_lock:
                    unclaimed = self._tail.unclaimed
                    aged = unclaimed > 0 and time.monotonic() - self._tail.since >= self.config.seal_after_s
                    if unclaimed <= 0 or (unclaimed < block_records and not force and not aged):
                        break
                    taken, count = self._tail.claim(block_records)
                try:
                    records = [r for entry, start, end in taken for r in entry.records[start:end]]
                    sealed = build_block(records, self._next_block_id)
                    if queued is not None:
                        queued, previous = None, queued
                        previous.future.result()  # raises if it failed: then this block is dropped
                        self._maybe_release_pages()
                except BaseException:
                    with self._state_lock:
                        self._tail.release(count)
                    raise
                self._next_block_id += 1
                # the writer stores it in its next transaction, together with pending ingest batches
                queued = _Task("seal", arg=(sealed, taken, count))
                self._queue.put(queued)
                if count < block_records and not force:
                    break  # an aged partial block: the rest waits for a full block or its own age
        finally:
            if queued is not None:
                queued.future.result()
                self._maybe_release_pages()

    def _put_block(self, txn: lmdb.Transaction, sealed: SealedBlock, taken: list[Taken],
                   count: int) -> None:
        block_id = sealed.header.block_id
        prefix = layout.block_prefix(block_id)
        txn.put(prefix, sealed.header.encode(), db=self._dbs[layout.DB_HEADERS])
        txn.put(prefix, sealed.bloom, db=self._dbs[layout.DB_BLOOMS])
        for column, data in sealed.columns.items():
            txn.put(layout.column_key(block_id, column), data, db=self._dbs[layout.DB_COLUMNS])
        postings_db = self._dbs[layout.DB_POSTINGS]
        items = sorted((prefix + t, d) for t, d in sealed.postings.items())
        # block ids only grow, so a new block's keys sort after every stored key: append them in one
        # C call (~4x cheaper than a put per term); a stray older key falls back to plain puts
        _, added = txn.cursor(db=postings_db).putmulti(items, append=True)
        if added != len(items):
            for key, data in items:
                txn.put(key, data, db=postings_db)
        for entry, _, end in taken:
            key = layout.u64(entry.seq)
            if end == len(entry.records):
                txn.delete(key, db=self._dbs[layout.DB_WAL])
                txn.delete(key, db=self._dbs[layout.DB_WAL_DONE])
            else:  # partly sealed: remember how far, instead of rewriting the batch
                txn.put(key, layout.U32.pack(end), db=self._dbs[layout.DB_WAL_DONE])

    def _show_block(self, sealed: SealedBlock, taken: list[Taken], count: int) -> None:
        """After the commit, under the state lock: the block replaces its rows in the tail."""
        header = sealed.header
        self._tail.seal(taken, count, time.monotonic())
        self._headers[header.block_id] = header
        self._totals.add(header)
        self._blooms.add(header.block_id, sealed.bloom)
        self._tree.insert(header.min_ts, header.max_ts, header.block_id)

    def _drop_before(self, cutoff_ns: int, batch_blocks: int = 16) -> dict[str, int]:
        if self._retention_cutoff_ns is None or cutoff_ns > self._retention_cutoff_ns:
            self._write(lambda txn: txn.put(layout.META_RETENTION_CUTOFF, layout.I64.pack(cutoff_ns),
                                            db=self._dbs[layout.DB_META]))
            self._retention_cutoff_ns = cutoff_ns
        with self._state_lock:
            doomed = self._tree.ending_before(cutoff_ns)
        dropped_blocks = dropped_records = 0
        for start in range(0, len(doomed), batch_blocks):
            batch = doomed[start:start + batch_blocks]
            # hide first, then delete: a reader that still holds these in its snapshot skips them
            with self._state_lock:
                for min_ts, _, block_id in batch:
                    self._tree.remove(min_ts, block_id)
                    header = self._headers.pop(block_id)
                    self._totals.remove(header)
                    self._blooms.drop(block_id)
                    dropped_records += header.count

            def fill(txn: lmdb.Transaction) -> None:
                for _, _, block_id in batch:
                    prefix = layout.block_prefix(block_id)
                    txn.delete(prefix, db=self._dbs[layout.DB_HEADERS])
                    txn.delete(prefix, db=self._dbs[layout.DB_BLOOMS])
                    for db_name in (layout.DB_COLUMNS, layout.DB_POSTINGS):
                        cursor = txn.cursor(db=self._dbs[db_name])
                        if cursor.set_range(prefix):
                            while cursor.key()[:8] == prefix:
                                if not cursor.delete():
                                    break

            self._write(fill)
            for _, _, block_id in batch:
                self._cache.drop_block(block_id)
            dropped_blocks += len(batch)
        self._expire_idempotency_keys()
        return {"dropped_blocks": dropped_blocks, "dropped_records": dropped_records}

    def _expire_idempotency_keys(self, max_keys: int = 10_000) -> None:
        cutoff = layout.u64(max(0, time.time_ns() - int(self.config.idempotency_ttl_s * 1e9)))

        def fill(txn: lmdb.Transaction) -> None:
            cursor = txn.cursor(db=self._dbs[layout.DB_IDEM_AGE])
            removed = 0
            if not cursor.first():
                return
            while removed < max_keys:
                key = cursor.key()
                if not key or key[:8] >= cutoff:  # b"" once the cursor ran off the end
                    break
                txn.delete(key[8:], db=self._dbs[layout.DB_IDEM])
                if not cursor.delete():
                    break
                removed += 1

        self._write(fill)

    # --- reads ---------------------------------------------------------------------------------

    def _snapshot(self, node: q.Node, extra_bounds: tuple[int | None, int | None] = (None, None)) -> Snapshot:
        lo, hi = q.time_bounds(node)
        extra_lo, extra_hi = extra_bounds
        if extra_lo is not None:
            lo = extra_lo if lo is None else max(lo, extra_lo)
        if extra_hi is not None:
            hi = extra_hi if hi is None else min(hi, extra_hi)
        with self._state_lock:
            if lo is None and hi is None:
                headers = list(self._headers.values())  # every block: no need to walk the tree
            elif lo is not None and hi is not None and lo >= hi:
                headers = []
            else:
                headers = [self._headers[block_id] for _, _, block_id in self._tree.overlapping(lo, hi)]
            tail = self._tail.rows()
        return Snapshot(headers, self._blooms, tail)

    def _visible(self, node: q.Node) -> q.Node:
        """``node`` restricted to records retention has not expired."""
        cutoff = self._retention_cutoff_ns
        return node if cutoff is None else q.and_nodes(node, q.TimeRange(cutoff, None))

    def query(self, node: q.Node, *, sort: str = "desc", offset: int = 0, limit: int = 100,
              after: tuple[int, int] | list[int] | None = None, want_total: bool = True) -> dict[str, Any]:
        """Matching records sorted by (ts_ns, id); ``after`` is a search-after cursor (ts_ns, id)."""
        if sort not in ("asc", "desc"):
            raise ValueError(f"sort must be 'asc' or 'desc', got {sort!r}")
        desc = sort == "desc"
        node = self._visible(node)
        bounds: tuple[int | None, int | None] = (None, None)
        if after is not None:
            after = (int(after[0]), int(after[1]))
            bounds = (None, after[0] + 1) if desc else (after[0], None)
        snap = self._snapshot(node, bounds)
        return run_query(self._env, self._dbs, self._cache, snap, node, desc=desc, offset=offset,
                         limit=limit, after=after, want_total=want_total)

    def count(self, node: q.Node) -> int:
        node = self._visible(node)
        plan = self._minute_plan(node)
        if plan is not None:
            whole, edges, tail = plan
            return (sum(whole.values()) + sum(run_count(self._env, self._dbs, self._cache, snap, edge_node)
                                              for edge_node, snap in edges)
                    + sum(1 for record in tail if q.matches(node, record)))
        return run_count(self._env, self._dbs, self._cache, self._snapshot(node), node)

    def _minute_plan(self, node: q.Node) -> tuple[dict[int, int], list[tuple[q.Node, Snapshot]],
                                                  list[dict[str, Any]]] | None:
        """For "level in L" ANDed with a time window (``search.level_window``): the sealed matches in the
        window's whole minutes from the per-minute totals (minute start ns -> count), the part of the
        window outside whole minutes as (filter, snapshot of the blocks there, without the tail), and
        the unsealed tail — all taken under one lock, so no record is counted twice or missed while a
        block is sealed.  None when the filter is another shape (or old headers lack minute counts)."""
        with self._state_lock:
            totals = self._totals
            if totals.without_minutes:
                return None
            split = level_window(node, totals.levels.keys())
            if split is None:
                return None
            levels, lo, hi = split
            first = None if lo is None else -(-lo // MINUTE_NS)  # the first whole minute
            end = None if hi is None else hi // MINUTE_NS  # the minute after the last whole one
            if first is not None and end is not None and first >= end:
                return None  # no whole minute: the blocks answer
            whole = totals.minute_counts(first, end, levels) if levels else {}
            edges = []
            for edge_lo, edge_hi in ((lo, None if first is None else first * MINUTE_NS),
                                     (None if end is None else end * MINUTE_NS, hi)):
                if edge_lo is None or edge_hi is None or edge_lo >= edge_hi:
                    continue
                headers = [self._headers[block_id] for _, _, block_id in self._tree.overlapping(edge_lo, edge_hi)]
                edges.append((q.and_nodes(node, q.TimeRange(edge_lo, edge_hi)), Snapshot(headers, self._blooms, [])))
            tail = self._tail.rows()
        return whole, edges, tail

    def aggregate(self, node: q.Node, spec: AggSpec) -> dict[str, Any]:
        """A partial aggregation state in wire form (merge with ``storage.aggregate``)."""
        if isinstance(node, q.MatchAll) and spec.header_only and spec.interval_ns is None:
            agg = Aggregator(spec)
            with self._state_lock:
                whole = self._everything_visible()
                if whole:
                    agg.add_header_counts(self._totals.count, self._totals.by_field(), None)
                    tail = self._tail.rows()
            if whole:
                for record in tail:
                    agg.add_record(record)
                return aggregate_to_wire(agg.partial)
        node = self._visible(node)
        if spec.interval_ns is not None and spec.interval_ns % MINUTE_NS == 0 and spec.group_by is None \
                and spec.histogram is None and not spec.top:
            plan = self._minute_plan(node)
            if plan is not None:
                whole, edges, tail = plan
                agg = Aggregator(spec)
                agg.add_minute_counts(whole)
                for edge_node, snap in edges:
                    merge_partials(agg.partial, run_aggregate(self._env, self._dbs, self._cache, snap,
                                                              edge_node, spec).partial)
                for record in tail:
                    if q.matches(node, record):
                        agg.add_record(record)
                return aggregate_to_wire(agg.partial)
        agg = run_aggregate(self._env, self._dbs, self._cache, self._snapshot(node), node, spec)
        return aggregate_to_wire(agg.partial)

    def _everything_visible(self) -> bool:
        """No sealed record is hidden by retention (call under _state_lock): then the running header
        totals are exactly the sealed part of a query over everything.  The tree is keyed by min_ts,
        so its first item is the oldest record of any block (O(log n))."""
        cutoff = self._retention_cutoff_ns
        if cutoff is None or not self._headers:
            return True
        return next(iter(self._tree))[0] >= cutoff

    def stats(self) -> dict[str, Any]:
        """What the store holds (stored records, including any retention hides but has not dropped)."""
        with self._state_lock:
            totals = self._totals.by_field()
            sealed = self._totals.count
            blocks = len(self._headers)
            min_ts = next(iter(self._tree))[0] if self._headers else None
            max_ts = max((h.max_ts for h in self._headers.values()), default=None)
            tail = self._tail.rows()
        levels, sources, tags = totals["level"], totals["source"], totals["tags"]
        for record in tail:
            levels[record["level"]] = levels.get(record["level"], 0) + 1
            sources[record["source"]] = sources.get(record["source"], 0) + 1
            for tag in record["tags"]:
                tags[tag] = tags.get(tag, 0) + 1
        tail_ts = [r["ts_ns"] for r in tail]
        return {
            "records": sealed + len(tail),
            "sealed_records": sealed,
            "unsealed_records": len(tail),
            "blocks": blocks,
            "min_ts": min([t for t in (min_ts,) if t is not None] + tail_ts, default=None),
            "max_ts": max([t for t in (max_ts,) if t is not None] + tail_ts, default=None),
            "bytes_on_disk": self._env.bytes_on_disk(),
            "map_size_bytes": self._env.map_size_bytes,
            "pending_records": self._pending_records,
            "by_level": levels,
            "by_source": sources,
            "by_tag": tags,
        }

    # --- close ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the sealer (it finishes the block it is building), then the writer (it commits every
        batch queued before close), close LMDB and release the lock.  Unsealed rows stay in the WAL."""
        if self._closed:
            return
        self._closed = True
        try:
            # the sealer first: a block it builds is stored through the writer, which must still run
            stop_sealer = _Task("stop")
            self._maintenance.put(stop_sealer)
            self._seal_wakeup.set()
            stop_sealer.future.result()
            self._sealer.join()
            stop_writer = _Task("stop")
            self._queue.put(stop_writer)
            stop_writer.future.result()
            self._writer.join()
        finally:
            self._env.close()
            os.close(self._lock_fd)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
