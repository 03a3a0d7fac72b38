"""Answering queries, counts and aggregations over one store snapshot.

A ``Snapshot`` is what a reader sees: the headers of the sealed blocks that overlap the query's time
bounds (taken from the AVL index under the store's state lock) plus the unsealed in-memory tail.
Blocks are read in one LMDB read transaction opened after the snapshot was taken, so every block in
the snapshot is visible in it (a block retention dropped meanwhile is skipped: its data had expired).
The prefilter asks each block's bloom filter, only for blocks the header counts did not already rule
out: the newest blocks' filters are in memory (``storage.bloom.BloomCache``), older ones are read
from the map inside that transaction.

Row queries visit blocks newest-first (or oldest-first) and stop as soon as no remaining block can
beat the current page, unless an exact total is asked for; counts and aggregations use header counts
for blocks the query covers whole, and posting lists or row checks for the rest.
"""

from __future__ import annotations

import heapq
import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import lmdb

from storage import layout
from storage import query as q
from storage.aggregate import AggSpec, Aggregator
from storage.bloom import BloomCache, bloom_may_contain, term_hashes
from storage.block import decode_column
from storage.errors import BadQuery
from storage.header import MINUTE_NS, BlockHeader
from storage.levels import severity
from storage.planner import block_filter, field_term, header_answerable, matching_rows, prepare
from storage.postings import decode_postings, row_range, rows_of

#: a page deeper than this must use the cursor (search_after) instead of an offset
MAX_WINDOW = 100_000


class BlockGone(Exception):
    """A block of the snapshot was dropped by retention before we read it."""


class LruCache:
    """Thread-safe LRU bounded by an estimated size in bytes; shared by a store's readers.

    Holds decoded columns keyed by (block_id, column) and decoded posting bitmaps keyed by
    (block_id, term): repeated and overlapping queries then skip LMDB reads and decompression."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, Any], tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, Any]) -> Any:
        # No lock: a query asks several times per block, and each OrderedDict call is atomic under
        # the GIL; a key evicted by another thread between the two calls is simply a hit that
        # does not move to the end.
        item = self._items.get(key)
        if item is None:
            return None
        try:
            self._items.move_to_end(key)
        except KeyError:
            pass
        return item[0]

    def put(self, key: tuple[int, Any], value: Any, size_bytes: int) -> None:
        if size_bytes > self.max_bytes // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size_bytes)
            self._bytes += size_bytes
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def drop_block(self, block_id: int) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == block_id]:
                self._bytes -= self._items.pop(key)[1]


@dataclass(slots=True)
class Snapshot:
    blocks: list[BlockHeader]
    #: the store's in-memory filters (the newest blocks'); others are read from the map
    blooms: BloomCache
    tail: list[dict[str, Any]]


def _postings(txn: lmdb.Transaction, dbs: dict[bytes, Any], cache: LruCache, block_id: int, term: str) -> int | None:
    """The block's posting bitmap of ``term`` (cached; 0 caches "no posting list"), or None."""
    cache_key = (block_id, term)
    bits = cache.get(cache_key)
    if bits is not None:
        return bits or None
    key, _ = layout.posting_key(block_id, term)
    data = txn.get(key, db=dbs[layout.DB_POSTINGS])
    bits = 0 if data is None else decode_postings(data)
    cache.put(cache_key, bits, 64 + len(term) + (bits.bit_length() >> 3))
    return bits or None


#: an AND of exactly posted terms: [(term, header field or None, value)] and its time ranges
Conjunction = tuple[list[tuple[str, str | None, str | None]], list[q.TimeRange]]


def conjunction(node: q.Node) -> Conjunction | None:
    """The terms of ``node`` when it is an AND of message tokens and level/source/tag values (and
    time ranges): the common query shape whose per-block count is an AND of posting bitmaps.
    None for anything else (the general planner answers)."""
    children = node.children if isinstance(node, q.And) else (node,)
    terms: list[tuple[str, str | None, str | None]] = []
    ranges: list[q.TimeRange] = []
    for child in children:
        if isinstance(child, q.Token):
            term = layout.term_token(child.text)
            if not layout.term_bytes(term)[1]:
                return None  # hashed (inexact): rows must be verified
            terms.append((term, None, None))
        elif isinstance(child, q.Field) and child.name in ("level", "source", "tag"):
            terms.append((field_term(child.name, child.value), child.name, child.value))
        elif isinstance(child, q.TimeRange):
            ranges.append(child)
        elif not isinstance(child, q.MatchAll):
            return None
    return (terms, ranges) if terms else None


def conjunction_count(plan: Conjunction, header: BlockHeader, txn: lmdb.Transaction, dbs: dict[bytes, Any],
                      cache: LruCache) -> int | None:
    """Matches of the conjunction in one block from header counts and posting bitmaps, without the
    planner's per-block machinery; None when the block needs it (a time range cutting the block, a
    token without a posting list here: one row, or a bloom false positive, to verify)."""
    terms, ranges = plan
    n = header.count
    for time_range in ranges:
        lo, hi = time_range.from_ns, time_range.to_ns
        if (lo is not None and header.max_ts < lo) or (hi is not None and header.min_ts >= hi):
            return 0
        if (lo is not None and header.min_ts < lo) or (hi is not None and header.max_ts >= hi):
            return None
    bits = -1  # every row
    for term, name, value in terms:
        if name is not None:
            c = header.field_counts(name).get(value, 0)  # type: ignore[union-attr]  # level/source/tag
            if c == 0:
                return 0
            if c == n:
                continue
        posted = _postings(txn, dbs, cache, header.block_id, term)
        if posted is None:
            return None
        bits &= posted
        if not bits:
            return 0
    return n if bits == -1 else bits.bit_count()


def _cheap_count(node: q.Node, header: BlockHeader, by_header: bool, conj: Conjunction | None,
                 txn: lmdb.Transaction, dbs: dict[bytes, Any], cache: LruCache) -> int | None:
    """A block's matches the cheap way (header counts, else an AND of posting bitmaps), or None
    when only the planner can tell."""
    c = header_count(node, header) if by_header else None
    if c is None and conj is not None:
        c = conjunction_count(conj, header, txn, dbs, cache)
    return c


class View:
    """``storage.planner.BlockView`` over one block inside one read transaction."""

    __slots__ = ("header", "_txn", "_dbs", "_cache", "_bloom", "_hashes", "_present")

    def __init__(self, header: BlockHeader, txn: lmdb.Transaction, dbs: dict[bytes, Any],
                 cache: LruCache, bloom: bytes | None, hashes: dict[str, tuple[int, int]],
                 present: frozenset[str] = frozenset()) -> None:
        self.header = header
        self._txn = txn
        self._dbs = dbs
        self._cache = cache
        #: the block's bloom filter: from memory, else read from the map on the first question
        #: (False: not read yet; None: the block has none, or retention dropped it meanwhile)
        self._bloom: bytes | None | bool = False if bloom is None else bloom
        self._hashes = hashes
        #: terms the prefilter already found in this block's bloom filter
        self._present = present

    def postings(self, term: str) -> int | None:
        return _postings(self._txn, self._dbs, self._cache, self.header.block_id, term)

    def may_contain(self, term: str) -> bool:
        if term in self._present:
            return True
        bloom = self._bloom
        if bloom is False:
            bloom = self._bloom = self._txn.get(layout.block_prefix(self.header.block_id),
                                                db=self._dbs[layout.DB_BLOOMS])
        if bloom is None:
            return True
        hashes = self._hashes.get(term)
        if hashes is None:
            hashes = self._hashes[term] = term_hashes(layout.term_bytes(term)[0])
        return bloom_may_contain(bloom, hashes)  # type: ignore[arg-type]

    def column(self, column: int) -> list[Any]:
        key = (self.header.block_id, column)
        values = self._cache.get(key)
        if values is None:
            data = self._txn.get(layout.column_key(*key), db=self._dbs[layout.DB_COLUMNS])
            if data is None:
                raise BlockGone(self.header.block_id)
            values = decode_column(column, data)
            # decoded size estimate: the compressed bytes expand ~4x, plus a Python object per row
            self._cache.put(key, values, len(data) * 4 + self.header.count * 40)
        return values

    def lowered_messages(self) -> tuple[str, list[int]]:
        """The block's messages lower-cased and joined by newlines, and where each row starts in it
        (cached): C-level substring searches over the joined text find candidate rows."""
        key = (self.header.block_id, "lowered")
        value = self._cache.get(key)
        if value is None:
            lowered = [m.lower() for m in self.column(layout.COL_MESSAGE)]
            starts = [0] * len(lowered)
            offset = 0
            for i, text in enumerate(lowered):
                starts[i] = offset
                offset += len(text) + 1
            value = ("\n".join(lowered), starts)
            self._cache.put(key, value, 2 * offset + self.header.count * 40)
        return value

    def record(self, row: int) -> dict[str, Any]:
        out = {}
        for name, col in layout.FIELD_COLUMN.items():
            out[name] = self.column(col)[row]
        return out


class ReadEnv(Protocol):
    """What a search needs of ``storage.env.Env``: read transactions, and a way to unmap the data
    file's pages during a long scan (a query over every block would otherwise map them all)."""

    def read(self) -> Any: ...

    def release_over_budget(self, throttle: bool = True) -> None: ...


#: a scan checks the mapped-pages budget every 64 blocks (every 64 * 2 posting reads map at most
#: a few MiB, with the kernel's fault-around)
_RELEASE_EVERY_MASK = 63


# --- skipping blocks without reading them ----------------------------------------------------------


def prefilter(env: ReadEnv, txn: lmdb.Transaction, dbs: dict[bytes, Any], snap: Snapshot, node: q.Node,
              hashes: dict[str, tuple[int, int]]) -> tuple[list[BlockHeader], frozenset[str]]:
    """The snapshot's blocks that may hold a match, judged by header counts and then the bloom
    filters (only for blocks the counts kept; from memory, or for older blocks from the map in
    ``txn``): for a rare term this loop is the whole cost of a query.  Also returns the bloom terms
    every kept block was found to hold (so evaluation does not ask the bloom filter again).  A block
    without a filter (or dropped by retention since the snapshot) is kept: reading it tells."""
    terms, fields = block_filter(node)
    if not terms and not fields:
        return snap.blocks, frozenset()
    probes = []
    for term in terms:
        h = hashes.get(term)
        if h is None:
            h = hashes[term] = term_hashes(layout.term_bytes(term)[0])
        probes.append(h)
    in_memory = snap.blooms.get
    # a cursor only when some block may need its filter read (a query of field values needs none)
    from_map = txn.cursor(db=dbs[layout.DB_BLOOMS]).get if probes else None
    block_key = layout.BLOCK_KEY.pack
    first_probe, other_probes = (probes[0], probes[1:]) if probes else (None, [])
    map_reads = 0
    kept = []
    # This loop runs for every block of the snapshot: no generator or helper call per block (a
    # generator expression per block costs about as much as reading its bloom from the map).
    for header in snap.blocks:
        if fields:
            counts_ok = True
            for name, value in fields:
                if value not in header.field_counts(name):  # type: ignore[operator]  # level/source/tag
                    counts_ok = False
                    break
            if not counts_ok:
                continue
        if first_probe is not None:
            bloom = in_memory(header.block_id)
            if bloom is None:  # an older block's filter: from the map
                bloom = from_map(block_key(header.block_id))  # type: ignore[misc]  # probes, so set
                map_reads += 1
                if not map_reads & _RELEASE_EVERY_MASK:
                    # each read maps ~45 KiB with its neighbours (see storage.bloom.BloomCache)
                    env.release_over_budget(throttle=False)
            if bloom is not None:
                if not bloom_may_contain(bloom, first_probe):
                    continue
                if other_probes:
                    for h in other_probes:
                        if not bloom_may_contain(bloom, h):
                            break
                    else:
                        kept.append(header)
                    continue
        kept.append(header)
    return kept, frozenset(terms)


# --- header-only answers ----------------------------------------------------------------------------


def header_count(node: q.Node, header: BlockHeader) -> int | None:
    """Matches of ``node`` in the block from its header alone, or None when the header cannot tell."""
    n = header.count
    if isinstance(node, q.MatchAll):
        return n
    if isinstance(node, q.Field):
        counts = header.field_counts(node.name)
        if counts is None:
            return None
        return counts.get(node.value, 0)
    if isinstance(node, q.MinSeverity):
        return sum(c for level, c in header.levels.items() if severity(level) >= node.score)
    if isinstance(node, q.TimeRange):
        lo, hi = node.from_ns, node.to_ns
        if (lo is not None and header.max_ts < lo) or (hi is not None and header.min_ts >= hi):
            return 0
        if (lo is None or header.min_ts >= lo) and (hi is None or header.max_ts < hi):
            return n
        return None
    if isinstance(node, q.And):
        known: list[int] = []
        unknown = 0
        for child in node.children:
            c = header_count(child, header)
            if c == 0:
                return 0
            if c is None:
                unknown += 1
            elif c != n:
                known.append(c)
        if unknown or len(known) > 1:
            return None
        return known[0] if known else n
    if isinstance(node, q.Not):
        c = header_count(node.child, header)
        return None if c is None else n - c
    return None


def header_levels(node: q.Node, header: BlockHeader) -> set[str] | None:
    """The levels L such that, in this block, ``node`` matches exactly the records whose level is
    in L; None when the header cannot tell (message terms, a time bound inside the block, a
    source or tag some but not all records have).  With the header's per-minute level counts this
    answers time histograms without reading the block."""
    everything = set(header.levels)

    def leaf(node: q.Node) -> set[str] | None:
        if isinstance(node, q.Field):  # source or tag: all of the block's records, or none
            counts = header.field_counts(node.name)
            c = None if counts is None else counts.get(node.value, 0)
        elif isinstance(node, q.TimeRange):
            c = header_count(node, header)
        else:
            return None
        return None if c is None else set() if c == 0 else everything if c == header.count else None

    return _level_set(node, everything, leaf)


def _level_set(node: q.Node, known: set[str], leaf: Any) -> set[str] | None:
    """The subset of ``known`` levels whose records ``node`` matches exactly, through AND / OR / NOT
    of level and severity filters; ``leaf`` answers any other node (a set, or None: "cannot tell")."""
    if isinstance(node, q.MatchAll):
        return set(known)
    if isinstance(node, q.Field) and node.name == "level":
        return {node.value} & known
    if isinstance(node, q.MinSeverity):
        return {level for level in known if severity(level) >= node.score}
    if isinstance(node, q.And):
        out = set(known)
        unknown = False
        for child in node.children:
            part = _level_set(child, known, leaf)
            if part is None:
                unknown = True
            elif not part:
                return part  # one child matches nothing
            else:
                out &= part
        return None if unknown else out
    if isinstance(node, q.Or):
        out = set()
        for child in node.children:
            part = _level_set(child, known, leaf)
            if part is None:
                return None
            out |= part
        return out
    if isinstance(node, q.Not):
        inner = _level_set(node.child, known, leaf)
        return None if inner is None else known - inner
    return leaf(node)


def level_window(node: q.Node, known_levels: Any) -> tuple[set[str], int | None, int | None] | None:
    """(L, from_ns, to_ns) when ``node`` is "level in L" — the same L in every block — ANDed with time
    ranges; None for any other filter.  ``known_levels``: every level the blocks hold (L is a subset),
    the universe NOT takes its complement in.  Then counts and whole-minute histograms come from the
    store's per-minute totals for the window's whole minutes."""
    known = set(known_levels)
    children = node.children if isinstance(node, q.And) else (node,)
    lo: int | None = None
    hi: int | None = None
    levels = known
    for child in children:
        if isinstance(child, q.TimeRange):
            if child.from_ns is not None:
                lo = child.from_ns if lo is None else max(lo, child.from_ns)
            if child.to_ns is not None:
                hi = child.to_ns if hi is None else min(hi, child.to_ns)
            continue
        part = _level_set(child, known, lambda _: None)  # only level filters are the same in every block
        if part is None:
            return None
        levels = levels & part
    return levels, lo, hi


# --- row queries --------------------------------------------------------------------------------


def _cursor_rows(view: View, after: tuple[int, int], desc: bool) -> int:
    """Rows strictly beyond the cursor in the sort order."""
    ts = view.column(layout.COL_TS)
    ids = view.column(layout.COL_ID)
    keys = list(zip(ts, ids))
    if desc:
        return row_range(0, bisect_left(keys, tuple(after)))
    return row_range(bisect_right(keys, tuple(after)), len(keys))


def _top_rows(bits: int, k: int, desc: bool) -> list[int]:
    """Up to k set rows from the high (desc) or low end of a bitmap."""
    out = []
    if desc:
        while bits and len(out) < k:
            row = bits.bit_length() - 1
            out.append(row)
            bits ^= 1 << row
    else:
        while bits and len(out) < k:
            low = bits & -bits
            out.append(low.bit_length() - 1)
            bits ^= low
    return out


def _after_ok(record: dict[str, Any], after: tuple[int, int] | None, desc: bool) -> bool:
    if after is None:
        return True
    key = (record["ts_ns"], record["id"])
    return key < tuple(after) if desc else key > tuple(after)


def run_query(env: ReadEnv, dbs, cache: LruCache, snap: Snapshot, node: q.Node, *, desc: bool, offset: int,
              limit: int, after: tuple[int, int] | None, want_total: bool) -> dict[str, Any]:
    if offset < 0 or limit < 0:
        raise BadQuery(f"offset {offset} and limit {limit} must be >= 0")
    window = offset + limit
    if window > MAX_WINDOW:
        raise BadQuery(f"offset+limit is {window}; the limit is {MAX_WINDOW} (MAX_WINDOW); page deeper with the "
                       "cursor (next_cursor / --cursor) instead of an offset")
    total = 0
    # heap of the best `window` keys seen: for desc keep the largest (min-heap of keys);
    # for asc keep the smallest (min-heap of negated keys).
    heap: list[tuple[Any, ...]] = []
    sign = 1 if desc else -1

    def offer(ts: int, rid: int, where: Any) -> None:
        item = (sign * ts, sign * rid, where)
        if len(heap) < window:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)

    for record in snap.tail:
        if q.matches(node, record) and _after_ok(record, after, desc):
            total += 1
            if window:
                offer(record["ts_ns"], record["id"], ("tail", record))

    hashes: dict[str, tuple[int, int]] = {}
    picked: dict[int, tuple[View, list[int]]] = {}
    with env.read() as txn:
        candidates, present = prefilter(env, txn, dbs, snap, node, hashes)
        blocks = sorted(candidates, key=(lambda h: -h.max_ts) if desc else (lambda h: h.min_ts))
        node = prepare(node)
        by_header = header_answerable(node)
        conj = conjunction(node) if want_total else None
        for visited, header in enumerate(blocks):
            if visited & _RELEASE_EVERY_MASK == _RELEASE_EVERY_MASK:
                env.release_over_budget(throttle=False)
            can_contribute = window and (len(heap) < window or (
                header.max_ts >= heap[0][0] if desc else header.min_ts <= -heap[0][0]))
            if not can_contribute and not want_total:
                break
            if after is not None and (header.min_ts > after[0] if desc else header.max_ts < after[0]):
                continue
            if after is None and not can_contribute:  # only counted
                c = _cheap_count(node, header, by_header, conj, txn, dbs, cache)
                if c is not None:
                    total += c
                    continue
            view = View(header, txn, dbs, cache, snap.blooms.get(header.block_id), hashes, present)
            try:
                bits = matching_rows(node, view)
                if after is not None and bits:
                    bits &= _cursor_rows(view, after, desc)
                if not bits:
                    continue
                total += bits.bit_count()
                if can_contribute:
                    rows = _top_rows(bits, window, desc)
                    ts = view.column(layout.COL_TS)
                    ids = view.column(layout.COL_ID)
                    for row in rows:
                        offer(ts[row], ids[row], (header.block_id, row))
                    picked[header.block_id] = (view, rows)
            except BlockGone:
                continue
        ranked = sorted(heap, reverse=True)
        page = ranked[offset:offset + limit]
        rows_out = []
        for _, _, where in page:
            if where[0] == "tail":
                rows_out.append(dict(where[1]))
            else:
                block_id, row = where
                try:
                    rows_out.append(picked[block_id][0].record(row))
                except BlockGone:
                    continue
    return {"rows": rows_out, "total": total if want_total else None}


def run_count(env: ReadEnv, dbs, cache: LruCache, snap: Snapshot, node: q.Node) -> int:
    total = sum(1 for record in snap.tail if q.matches(node, record))
    hashes: dict[str, tuple[int, int]] = {}
    with env.read() as txn:
        blocks, present = prefilter(env, txn, dbs, snap, node, hashes)
        node = prepare(node)
        by_header = header_answerable(node)
        conj = conjunction(node)
        for visited, header in enumerate(blocks):
            if visited & _RELEASE_EVERY_MASK == _RELEASE_EVERY_MASK:
                env.release_over_budget(throttle=False)
            c = _cheap_count(node, header, by_header, conj, txn, dbs, cache)
            if c is not None:
                total += c
                continue
            view = View(header, txn, dbs, cache, snap.blooms.get(header.block_id), hashes, present)
            try:
                total += matching_rows(node, view).bit_count()
            except BlockGone:
                continue
    return total


_AGG_COLUMNS = {"level": layout.COL_LEVEL, "source": layout.COL_SOURCE, "tags": layout.COL_TAGS,
                "meta": layout.COL_METADATA, "request_id": layout.COL_REQUEST, "user_id": layout.COL_USER,
                "thread_id": layout.COL_THREAD}


def _agg_columns(spec: AggSpec) -> dict[str, int]:
    names = {"ts_ns": layout.COL_TS}
    parts = (["group_by"] if spec.group_by is not None else []) + (
        ["histogram"] if spec.histogram is not None else []) + ["top:" + name for name, _ in spec.top]
    for part in parts:
        kind, _ = spec.resolved(part)
        names["metadata" if kind == "meta" else kind] = _AGG_COLUMNS[kind]
    return names


def run_aggregate(env: ReadEnv, dbs, cache: LruCache, snap: Snapshot, node: q.Node, spec: AggSpec) -> Aggregator:
    agg = Aggregator(spec)
    for record in snap.tail:
        if q.matches(node, record):
            agg.add_record(record)
    columns = _agg_columns(spec)
    hashes: dict[str, tuple[int, int]] = {}
    # whole-minute intervals: per-minute level counts in the headers answer the time histogram
    by_minutes = spec.interval_ns is not None and spec.interval_ns % MINUTE_NS == 0
    with env.read() as txn:
        blocks, present = prefilter(env, txn, dbs, snap, node, hashes)
        node = prepare(node)
        by_header = header_answerable(node)
        for visited, header in enumerate(blocks):
            if visited & _RELEASE_EVERY_MASK == _RELEASE_EVERY_MASK:
                env.release_over_budget(throttle=False)
            view = View(header, txn, dbs, cache, snap.blooms.get(header.block_id), hashes, present)
            try:
                if by_minutes and header.minutes is not None and agg.time_only:
                    levels = header_levels(node, header)
                    if levels is not None:
                        if levels:
                            agg.add_minute_counts(header.minute_counts(levels))
                        continue
                c = header_count(node, header) if by_header else None
                if c == 0:
                    continue
                if c == header.count and spec.header_only:
                    minutes = header.minute_counts(set(header.levels)) if by_minutes else None
                    timestamps = view.column(layout.COL_TS) if spec.interval_ns is not None and \
                        minutes is None else None
                    agg.add_header_counts(c, {"level": header.levels, "source": header.sources,
                                              "tags": header.tags}, timestamps, minutes)
                    continue
                bits = matching_rows(node, view)
                if not bits:
                    continue
                if agg.time_only:
                    agg.add_time_buckets(bits, view.column(layout.COL_TS))
                    continue
                decoded = {name: view.column(col) for name, col in columns.items()}
                for row in rows_of(bits):
                    agg.add_record({name: values[row] for name, values in decoded.items()})
            except BlockGone:
                continue
            agg.check_size()
    return agg
