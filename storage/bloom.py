"""Per-block bloom filters over a block's terms (DESIGN §4).

Every message token, id and metadata term of a block goes into the block's bloom filter (level,
source and tag values are counted in the block header instead).  Queries ask the filters first
(``storage.search.prefilter``: the newest blocks' from memory, see ``BloomCache``, older ones read
from the LMDB map), so a block that lacks a needed term is skipped without reading its postings or
columns; terms that occur in one row only (~60 % of a block's distinct terms: ids, numbers,
addresses) have no posting list, so for them a hit means "decode this block and check".

Layout of a stored filter: ``u32 m_bits (BE) ‖ bitmap`` with bit ``p`` in byte ``p >> 3``, mask
``1 << (p & 7)``.  Positions come by double hashing (Kirsch & Mitzenmacher) from h1 = crc32(term)
and h2 = crc32 continued over one more byte (a pseudo-random function of h1): stable across
processes and Python versions (never ``hash()``), and ~4x cheaper than a cryptographic digest on
the sealing path.  Two terms probe the same bits only when their 32-bit crc32 collide.
"""

from __future__ import annotations

import struct
from itertools import repeat
from zlib import crc32

#: bits per term: 10 bits and 4 probes give ~1.2 % false positives
BITS_PER_TERM = 10
PROBES = 4
_M = struct.Struct(">I")
_SALT = b"\x9e"


def term_hashes(term: bytes) -> tuple[int, int]:
    """The two base hashes of a term; compute once per query term, probe many blocks."""
    h1 = crc32(term)
    return h1, crc32(_SALT, h1) | 1


def build_bloom(terms: list[bytes], suffixes: list[bytes] = (), prefix: bytes = b"") -> bytes:  # type: ignore[assignment]
    """A filter over ``terms`` and over ``prefix + s`` for every ``s`` in ``suffixes`` (hashed
    without building those strings: crc32 continues from the prefix's crc)."""
    m_bits = max(64, ((len(terms) + len(suffixes)) * BITS_PER_TERM + 63) // 64 * 64)
    salt = _SALT
    h1s = list(map(crc32, terms))
    if suffixes:
        h1s += map(crc32, suffixes, repeat(crc32(prefix), len(suffixes)))
    # One ASCII "0"/"1" per bit, set by plain index stores, turned into the bitmap by one base-2
    # int() conversion: ~30 % cheaper than OR-ing masks into bytes, and this runs for every
    # distinct term of every sealed block.  Bit p is digit p from the right: little-endian bytes.
    flags = bytearray(b"0") * m_bits
    for h1 in h1s:
        flags[h1 % m_bits] = 49
    for h1, h2 in zip(h1s, [crc32(salt, h) | 1 for h in h1s]):
        # PROBES == 4, unrolled
        flags[(h1 + h2) % m_bits] = 49
        flags[(h1 + 2 * h2) % m_bits] = 49
        flags[(h1 + 3 * h2) % m_bits] = 49
    flags.reverse()
    return _M.pack(m_bits) + int(flags, 2).to_bytes(m_bits // 8, "little")


def bloom_may_contain(bloom: bytes, hashes: tuple[int, int]) -> bool:
    if len(bloom) < 4:
        return True  # unreadable filter: never skip data because of it
    m_bits = _M.unpack_from(bloom)[0]
    if m_bits == 0 or len(bloom) < 4 + m_bits // 8:
        return True
    h1, h2 = hashes
    # PROBES == 4, unrolled: a query asks this for every block it may skip
    p = h1 % m_bits
    if not bloom[4 + (p >> 3)] & (1 << (p & 7)):
        return False
    p = (h1 + h2) % m_bits
    if not bloom[4 + (p >> 3)] & (1 << (p & 7)):
        return False
    p = (h1 + 2 * h2) % m_bits
    if not bloom[4 + (p >> 3)] & (1 << (p & 7)):
        return False
    p = (h1 + 3 * h2) % m_bits
    return bool(bloom[4 + (p >> 3)] & (1 << (p & 7)))


class BloomCache:
    """The filters of the newest blocks, up to ``max_bytes`` in all; a query reads any other block's
    filter from the LMDB map (``storage.search``).

    Why keep any in memory: reading a ~4 KiB filter from the map also maps the cached pages around
    it (the kernel's fault-around, which MADV_RANDOM does not turn off): ~45 KiB of file-backed RSS
    per filter, measured, so a rare-token query over 490 blocks mapped ~22-48 MiB and the store's
    budget then unmapped it again on every query (minor faults: rare-token 1.2 -> 3.5 ms at 1M
    records).  Held in memory a filter costs its own 4 KiB.  Why bounded: a store's memory must not
    grow with its data; the newest blocks are the ones most queries visit.

    Blocks are added in increasing id order (sealing order; ``Store._load`` adds the newest that fit,
    oldest first), so the dict's insertion order is age and eviction pops from its front.  ``get``
    (the dict's own, GIL-atomic) is read without a lock; ``add`` and ``drop`` run under the store's
    state lock."""

    __slots__ = ("max_bytes", "bytes", "_blooms", "get")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._blooms: dict[int, bytes] = {}
        self.get = self._blooms.get

    def __len__(self) -> int:
        return len(self._blooms)

    def __contains__(self, block_id: int) -> bool:
        return block_id in self._blooms

    def add(self, block_id: int, bloom: bytes) -> None:
        if len(bloom) > self.max_bytes:
            return
        self.drop(block_id)
        self._blooms[block_id] = bloom
        self.bytes += len(bloom)
        blooms = self._blooms
        while self.bytes > self.max_bytes:
            self.bytes -= len(blooms.pop(next(iter(blooms))))

    def drop(self, block_id: int) -> None:
        bloom = self._blooms.pop(block_id, None)
        if bloom is not None:
            self.bytes -= len(bloom)
