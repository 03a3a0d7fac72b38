"""Which shard a record goes to.

``shard = crc32(key) % N`` with a stable hash (never Python's salted ``hash()``), so the same record
goes to the same shard in every process and after restarts.  The key is the record's message and
timestamp (not its source): records of one dominant source still spread over every shard.  For a request
with an idempotency key the key is (idempotency key, position in the request) instead, so that a
retried request routes every record exactly as the first attempt did even when the records got a
new ingest-time timestamp, and each shard's duplicate check sees the same batch again.
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence


def shard_for_record(record: dict[str, Any], n_shards: int) -> int:
    # crc32 of the message, seeded with the low bits of the timestamp: the same record always
    # lands on the same shard, and one dominant source still spreads
    seed = record["ts_ns"] & 0xFFFFFFFF
    return zlib.crc32(record["message"].encode("utf-8", "surrogatepass"), seed) % n_shards


def shard_for_position(idempotency_key: str, position: int, n_shards: int) -> int:
    return zlib.crc32(b"%s\x00%d" % (idempotency_key.encode("utf-8", "surrogatepass"), position)) % n_shards


def route(records: Sequence[dict[str, Any]], n_shards: int, idempotency_key: str | None = None) -> list[list[dict[str, Any]]]:
    """Split records into one list per shard (order within a shard kept)."""
    out: list[list[dict[str, Any]]] = [[] for _ in range(n_shards)]
    if n_shards == 1:
        out[0] = list(records)
        return out
    if idempotency_key is not None:
        for position, record in enumerate(records):
            out[shard_for_position(idempotency_key, position, n_shards)].append(record)
    else:
        for record in records:
            out[shard_for_record(record, n_shards)].append(record)
    return out


def route_lines(lines: Sequence[Any], n_shards: int, first_line: int = 1, numbers: Sequence[int] | None = None,
                ) -> tuple[list[tuple[list[bytes], list[int]]], int] | None:
    """Split JSON texts into one (texts, line numbers) pair per shard, unparsed: each stripped, blank
    ones left out (they are not records), keyed by the crc32 of its bytes — stable for a retried
    request, and one dominant source still spreads.  Also returns the number routed.  A text's number
    is ``numbers[i]`` when given, else ``first_line + i``.  A ``str`` is sent as its UTF-8 bytes (a
    lone surrogate stays invalid UTF-8 and is rejected as not JSON).  None when an item is neither
    bytes nor str: the general path words that."""
    out: list[tuple[list[bytes], list[int]]] = [([], []) for _ in range(n_shards)]
    crc32 = zlib.crc32
    routed = 0
    for index, line in enumerate(lines):
        if type(line) is not bytes:
            if not isinstance(line, (bytes, str)):
                return None
            # str is stripped as str (as the general path does: Unicode whitespace too), then encoded
            line = line.strip().encode("utf-8", "surrogatepass") if isinstance(line, str) else bytes(line)
        line = line.strip()
        if not line:
            continue
        part = out[crc32(line) % n_shards]
        part[0].append(line)
        part[1].append(first_line + index if numbers is None else numbers[index])
        routed += 1
    return out, routed
