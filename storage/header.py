"""Block headers: what the store knows about a block without opening it.

A header is kept apart from the block body (its own LMDB database) and all headers live in memory
while a store is open: min/max timestamp feed the AVL time index, and the per-level, per-source and
per-tag counts answer counts and aggregations over whole blocks without decompressing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from storage.errors import CorruptData


@dataclass(slots=True)
class BlockHeader:
    block_id: int
    min_ts: int
    max_ts: int
    count: int
    levels: dict[str, int]
    sources: dict[str, int]
    tags: dict[str, int]

    def encode(self) -> bytes:
        return msgpack.packb(
            [1, self.block_id, self.min_ts, self.max_ts, self.count, self.levels, self.sources, self.tags],
            use_bin_type=True,
        )

    @staticmethod
    def decode(data: bytes) -> "BlockHeader":
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise CorruptData(f"block header is not valid msgpack: {exc}") from exc
        if not isinstance(value, list) or len(value) != 8 or value[0] != 1:
            raise CorruptData(f"block header has an unexpected shape: {value!r:.200}")
        _, block_id, min_ts, max_ts, count, levels, sources, tags = value
        if not all(isinstance(v, int) for v in (block_id, min_ts, max_ts, count)) or not all(
            isinstance(v, dict) for v in (levels, sources, tags)
        ):
            raise CorruptData(f"block header {block_id!r} has fields of the wrong type")
        return BlockHeader(block_id, min_ts, max_ts, count, levels, sources, tags)

    def field_counts(self, field: str) -> dict[str, int] | None:
        """Per-value counts the header keeps for ``field`` (None when it keeps none)."""
        if field == "level":
            return self.levels
        if field == "source":
            return self.sources
        if field in ("tag", "tags"):
            return self.tags
        return None

    def summary(self) -> dict[str, Any]:
        return {"block_id": self.block_id, "min_ts": self.min_ts, "max_ts": self.max_ts, "count": self.count}


class HeaderTotals:
    """Header counts summed over a set of blocks: ``add`` when a block is sealed, ``remove`` when
    retention drops it.  Not thread-safe: the store guards it with its state lock."""

    def __init__(self) -> None:
        self.count = 0
        self.levels: dict[str, int] = {}
        self.sources: dict[str, int] = {}
        self.tags: dict[str, int] = {}

    def add(self, header: BlockHeader, sign: int = 1) -> None:
        self.count += sign * header.count
        for target, counts in ((self.levels, header.levels), (self.sources, header.sources),
                               (self.tags, header.tags)):
            for value, n in counts.items():
                left = target.get(value, 0) + sign * n
                if left:
                    target[value] = left
                else:
                    target.pop(value, None)

    def remove(self, header: BlockHeader) -> None:
        self.add(header, -1)

    def by_field(self) -> dict[str, dict[str, int]]:
        """Copies, keyed as ``Aggregator.add_header_counts`` expects."""
        return {"level": dict(self.levels), "source": dict(self.sources), "tags": dict(self.tags)}
