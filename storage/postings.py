"""Posting lists: the rows of one block that hold a term, as stored and as used in queries.

In memory a posting list is a Python int used as a bitmap (bit i = row i of the block): AND, OR,
NOT and popcount (``int.bit_count``) are single C calls, which is what makes per-block query
evaluation cheap in Python.

Stored form, whichever is smaller:
    b"A" ‖ uint16 little-endian row offsets, ascending     (sparse)
    b"B" ‖ little-endian bitmap of ceil(n_rows / 8) bytes  (dense)
"""

from __future__ import annotations

import struct
from array import array

from storage.errors import CorruptData

_SPARSE = 0x41  # "A"
_DENSE = 0x42  # "B"


#: len -> Struct packing b"A" and that many uint16 little-endian (sealing packs ~1,400 lists a block)
_SPARSE_FORMS: dict[int, struct.Struct] = {}


def encode_postings(rows: list[int], n_rows: int) -> bytes:
    """``rows``: ascending row offsets (< 65536)."""
    k = len(rows)
    if k * 2 <= (n_rows + 7) // 8:
        form = _SPARSE_FORMS.get(k)
        if form is None:
            form = _SPARSE_FORMS[k] = struct.Struct(f"<c{k}H")
        return form.pack(b"A", *rows)
    # dense: one ASCII digit per row, set by index, read as a base-2 int (cheaper than OR-ing a
    # growing int per row); bit i is digit i from the right
    flags = bytearray(b"0") * n_rows
    for row in rows:
        flags[row] = 49
    flags.reverse()
    return b"B" + int(flags, 2).to_bytes((n_rows + 7) // 8, "little")


def decode_postings(data: bytes) -> int:
    """Stored form -> bitmap int."""
    if not data:
        raise CorruptData("empty posting list")
    kind = data[0]
    if kind == _DENSE:
        return int.from_bytes(data[1:], "little")
    if kind == _SPARSE:
        offsets = array("H")
        offsets.frombytes(bytes(data[1:]))
        bits = 0
        for row in offsets:
            bits |= 1 << row
        return bits
    raise CorruptData(f"posting list has unknown kind byte {kind!r}")


def rows_of(bits: int) -> list[int]:
    """Row offsets set in a bitmap, ascending."""
    if bits.bit_count() > 48:
        # dense: one C-level pass over the binary digits beats a Python loop per set bit
        digits = bin(bits)[:1:-1]
        return [i for i, digit in enumerate(digits) if digit == "1"]
    rows = []
    row = 0
    while bits:
        low = bits & -bits
        row = low.bit_length() - 1
        rows.append(row)
        bits ^= low
    return rows


def all_rows(n_rows: int) -> int:
    return (1 << n_rows) - 1


def row_range(lo: int, hi: int) -> int:
    """Rows lo..hi-1."""
    if hi <= lo:
        return 0
    return ((1 << hi) - 1) ^ ((1 << lo) - 1)
