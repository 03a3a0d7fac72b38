"""Block headers: what the store knows about a block without opening it.

A header is kept apart from the block body (its own LMDB database) and all headers live in memory
while a store is open: min/max timestamp feed the AVL time index, and the per-level, per-source and
per-tag counts answer counts and aggregations over whole blocks without decompressing anything
(queries prune by them on every block, so they must not be decoded per query).
Per-minute level counts (``minutes``) answer time histograms with whole-minute intervals the same
way ("ERROR per minute over the last hour" reads no block).

Being in memory for every block, a header holds nothing it does not need (~3.6 KiB for a block of
1,024 records with 5 levels, 50 sources and 30 tags, almost all of it the count dicts' tables): its
level, source and tag names are interned, so every header shares one copy of each name (msgpack
interns map keys when it decodes a stored header; ``interned_counts`` does it for a header built
at seal time, whose names are the records' own strings), and nothing derived is cached per header.

Stored form (msgpack array):
    version 1: [1, block_id, min_ts, max_ts, count, levels, sources, tags]
    version 2: [2, block_id, min_ts, max_ts, count, levels, sources, tags, [[minute, levels], ...]]
where ``minute`` is ``ts_ns // 60e9`` (floor) and ``levels`` maps level -> count in that minute.
Version 1 headers (written before minutes existed) still decode, with ``minutes`` None.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import msgpack

from storage.errors import CorruptData

MINUTE_NS = 60 * 10**9


@dataclass(slots=True)
class BlockHeader:
    block_id: int
    min_ts: int
    max_ts: int
    count: int
    levels: dict[str, int]
    sources: dict[str, int]
    tags: dict[str, int]
    #: minute (ts_ns // MINUTE_NS) -> level -> count; None for headers stored before version 2
    minutes: dict[int, dict[str, int]] | None = None

    def encode(self) -> bytes:
        if self.minutes is None:
            return msgpack.packb(
                [1, self.block_id, self.min_ts, self.max_ts, self.count, self.levels, self.sources, self.tags],
                use_bin_type=True,
            )
        return msgpack.packb(
            [2, self.block_id, self.min_ts, self.max_ts, self.count, self.levels, self.sources, self.tags,
             [[minute, levels] for minute, levels in self.minutes.items()]],
            use_bin_type=True,
        )

    @staticmethod
    def decode(data: bytes) -> "BlockHeader":
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise CorruptData(f"block header is not valid msgpack: {exc}") from exc
        if not isinstance(value, list) or not value or (value[0], len(value)) not in ((1, 8), (2, 9)):
            raise CorruptData(f"block header has an unexpected shape: {value!r:.200}")
        block_id, min_ts, max_ts, count, levels, sources, tags = value[1:8]
        if not all(isinstance(v, int) for v in (block_id, min_ts, max_ts, count)) or not all(
            isinstance(v, dict) for v in (levels, sources, tags)
        ):
            raise CorruptData(f"block header {block_id!r} has fields of the wrong type")
        minutes = None
        if value[0] == 2:
            pairs = value[8]
            if not isinstance(pairs, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and isinstance(p[1], dict)
                for p in pairs
            ):
                raise CorruptData(f"block header {block_id!r} has malformed minute counts")
            minutes = {minute: level_counts for minute, level_counts in pairs}
        return BlockHeader(block_id, min_ts, max_ts, count, levels, sources, tags, minutes)

    def field_counts(self, field: str) -> dict[str, int] | None:
        """Per-value counts the header keeps for ``field`` (None when it keeps none)."""
        if field == "level":
            return self.levels
        if field == "source":
            return self.sources
        if field in ("tag", "tags"):
            return self.tags
        return None

    def minute_counts(self, levels: set[str]) -> dict[int, int] | None:
        """Records per minute start (ns) whose level is in ``levels``; None without minute counts."""
        if self.minutes is None:
            return None
        # computed each time, not cached on the header: a block spans a few minutes, and a cache
        # per header grew every header by ~1.6 KiB (+45 %) for good after one such histogram
        out: dict[int, int] = {}
        for minute, level_counts in self.minutes.items():
            n = 0
            for level in levels:
                n += level_counts.get(level, 0)
            if n:
                out[minute * MINUTE_NS] = n
        return out

    def summary(self) -> dict[str, Any]:
        return {"block_id": self.block_id, "min_ts": self.min_ts, "max_ts": self.max_ts, "count": self.count}


def interned_counts(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` keyed by interned names, for a header built from records: their strings are fresh
    copies (decoded from the wire or parsed), so without this every header sealed in this process
    would hold its own copy of every level, source and tag name (~4.5 KiB per block)."""
    return {sys.intern(name): n for name, n in counts.items()}


def _add_counts(target: dict[Any, int], counts: dict[Any, int], sign: int) -> None:
    """``target += sign * counts`` per key; keys that reach 0 are removed."""
    for key, n in counts.items():
        left = target.get(key, 0) + sign * n
        if left:
            target[key] = left
        else:
            target.pop(key, None)


class HeaderTotals:
    """Header counts summed over a set of blocks: ``add`` when a block is sealed, ``remove`` when
    retention drops it.  Not thread-safe: the store guards it with its state lock."""

    def __init__(self) -> None:
        self.count = 0
        self.levels: dict[str, int] = {}
        self.sources: dict[str, int] = {}
        self.tags: dict[str, int] = {}
        #: minute -> level -> count over the blocks, so "level X per minute (or in total) over a
        #: window" costs O(minutes of the window) at any data size
        self.minutes: dict[int, dict[str, int]] = {}
        #: blocks whose header has no minute counts (written before version 2): while there are any,
        #: ``minutes`` is incomplete and must not be used
        self.without_minutes = 0

    def add(self, header: BlockHeader, sign: int = 1) -> None:
        self.count += sign * header.count
        _add_counts(self.levels, header.levels, sign)
        _add_counts(self.sources, header.sources, sign)
        _add_counts(self.tags, header.tags, sign)
        if header.minutes is None:
            self.without_minutes += sign
            return
        for minute, level_counts in header.minutes.items():
            target = self.minutes.setdefault(minute, {})
            _add_counts(target, level_counts, sign)
            if not target:
                del self.minutes[minute]

    def minute_counts(self, first: int | None, end: int | None, levels: set[str]) -> dict[int, int]:
        """Minute start (ns) -> records whose level is in ``levels``, for the minutes
        ``first <= minute < end`` (None: open on that side)."""
        minutes = self.minutes
        if first is not None and end is not None and end - first <= len(minutes):
            selected = ((m, minutes[m]) for m in range(first, end) if m in minutes)
        else:
            selected = ((m, c) for m, c in minutes.items()
                        if (first is None or m >= first) and (end is None or m < end))
        out: dict[int, int] = {}
        for minute, level_counts in selected:
            n = sum(c for level, c in level_counts.items() if level in levels)
            if n:
                out[minute * MINUTE_NS] = n
        return out

    def remove(self, header: BlockHeader) -> None:
        self.add(header, -1)

    def by_field(self) -> dict[str, dict[str, int]]:
        """Copies, keyed as ``Aggregator.add_header_counts`` expects."""
        return {"level": dict(self.levels), "source": dict(self.sources), "tags": dict(self.tags)}
