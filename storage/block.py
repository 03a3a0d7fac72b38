"""Blocks: ~1,024 records sealed together as compressed columns with block-local indexes.

``build_block`` is pure: records in, bytes out.  It sorts the records by (ts_ns, id) — so row order
is time order and a time range inside a block is a contiguous row range — and produces:

* one zstd-compressed blob per column (``storage.layout.COL_*``), so a query decodes only the
  columns it needs;
* a posting list per term that occurs in at least two rows (plus every level / source / tag term);
* a bloom filter over all other terms of the block (message tokens, ids, metadata values): a query
  skips a block whose filter lacks a term it needs without reading its columns; terms that occur in a
  single row have no posting list, so for them a bloom hit means "check the rows";
* the header (``storage.header.BlockHeader``).

Column encodings (inside the zstd frame):
    ts, id            int64 little-endian, absolute: decoding is one array copy, no prefix sum
    level, source     msgpack [distinct values, uint16 codes bytes]   (dictionary encoded)
    tags, metadata    msgpack list of bin, each bin the msgpack of one row's value: decoding the
                      column is cheap and a row's list/map is built only when it is read
    message, thread_id, request_id, user_id   msgpack list, one item per row
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import msgpack
import zstandard

from storage import layout
from storage.bloom import build_bloom
from storage.errors import CorruptData
from storage.header import MINUTE_NS, BlockHeader, interned_counts
from storage.postings import encode_postings
from storage.tokens import _TOKEN_RE, ASCII_TOKEN_TABLE

ZSTD_LEVEL = 3
#: row offsets are uint16 in posting lists
MAX_BLOCK_ROWS = 65535

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    comp = getattr(_local, "comp", None)
    if comp is None:
        comp = _local.comp = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "dec", None)
    if dec is None:
        dec = _local.dec = zstandard.ZstdDecompressor()
    return dec


@dataclass(slots=True)
class SealedBlock:
    header: BlockHeader
    columns: dict[int, bytes]
    #: stored term (``layout.stored_term``) -> encoded posting list
    postings: dict[bytes, bytes]
    bloom: bytes


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _int64s(values: list[int]) -> bytes:
    return array("q", values).tobytes()


def _packed_rows(values: list[Any], pack: Callable[[Any], bytes]) -> bytes:
    """``pack`` is a ``msgpack.Packer(use_bin_type=True).pack`` owned by the caller: one Packer
    for all rows is ~4x cheaper than ``packb`` per row, which builds a Packer every call."""
    return pack([pack(v) for v in values])


class PackedColumn:
    """A decoded tags/metadata column: one msgpack blob per row, unpacked when a row is read."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[bytes]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, row: int) -> Any:
        return msgpack.unpackb(self._rows[row], raw=False, strict_map_key=True)

    def __iter__(self) -> Any:
        unpackb = msgpack.unpackb
        return (unpackb(r, raw=False, strict_map_key=True) for r in self._rows)


def _dictionary(values: list[str]) -> bytes:
    codes: dict[str, int] = {}
    encoded = array("H", [codes.setdefault(v, len(codes)) for v in values])
    return _pack([list(codes), encoded.tobytes()])


def _encode_term(term: str) -> bytes:
    return term.encode("utf-8", "surrogatepass")


def _rows_by_value(values: list[Any], prefix: bytes, out: dict[bytes, list[int]]) -> None:
    by_value: defaultdict[Any, list[int]] = defaultdict(list)
    for i, value in enumerate(values):
        by_value[value].append(i)
    for value, rows in by_value.items():
        if value is not None:
            out[prefix + _encode_term(value)] = rows


def _merge_rows(out: dict[bytes, list[int]], term: bytes, rows: list[int]) -> None:
    found = out.get(term)
    out[term] = rows if found is None else sorted(set(found) | set(rows))


def _fit_long_terms(out: dict[bytes, list[int]]) -> None:
    """Terms past LMDB's key limit are stored hashed (``layout.stored_term``); merge their rows."""
    for term in [t for t in out if len(t) > layout.MAX_TERM_BYTES]:
        rows = out.pop(term)
        _merge_rows(out, layout.stored_term(term), rows)


def _posted_term_rows(levels: list[str], sources: list[str], tags: list[list[str]]) -> dict[bytes, list[int]]:
    """Stored term -> ascending rows, for the kinds that are always posted (level, source, tag)."""
    out: dict[bytes, list[int]] = {}
    _rows_by_value(levels, b"l:", out)
    _rows_by_value(sources, b"s:", out)
    tag_rows: defaultdict[str, list[int]] = defaultdict(list)
    for i, row_tags in enumerate(tags):
        for tag in row_tags:
            rows = tag_rows[tag]
            if not rows or rows[-1] != i:  # a tag listed twice in one record is one row
                rows.append(i)
    for tag, rows in tag_rows.items():
        out[b"t:" + _encode_term(tag)] = rows
    _fit_long_terms(out)
    return out


#: the stored form of a message token is b"w:" + token; message tokens are kept without the prefix
#: while sealing (most never need it: ~70 % occur once and only reach the bloom filter, which
#: hashes them as crc32(token, crc32(b"w:")) == crc32(b"w:" + token))
_TOKEN_PREFIX = b"w:"
_MAX_TOKEN_BYTES = layout.MAX_TERM_BYTES - len(_TOKEN_PREFIX)


def _token_rows(messages: list[str]) -> tuple[dict[bytes, list[int]], dict[bytes, list[int]]]:
    """(token -> ascending rows, for tokens stored as b"w:" + token; stored term -> rows, for the
    few tokens too long for a key, which are stored hashed)."""
    # ASCII messages (nearly all) tokenize as bytes: translate every byte that is not a letter or
    # digit to a space (lower-casing on the way), then split — ~2x faster than the regex and the
    # same tokens, because for ASCII text the regex's letters and digits are exactly [A-Za-z0-9].
    tokens: defaultdict[bytes, list[int]] = defaultdict(list)
    other_tokens: defaultdict[str, list[int]] = defaultdict(list)
    findall = _TOKEN_RE.findall
    table = ASCII_TOKEN_TABLE
    for i, message in enumerate(messages):
        if message.isascii():
            for token in set(message.encode().translate(table).split()):
                tokens[token].append(i)
        else:
            for token in set(findall(message.lower())):
                other_tokens[token].append(i)
    out = dict(tokens)
    for text, rows in other_tokens.items():
        _merge_rows(out, _encode_term(text), rows)
    long_terms: dict[bytes, list[int]] = {}
    for token in [t for t in out if len(t) > _MAX_TOKEN_BYTES]:
        _merge_rows(long_terms, layout.stored_term(_TOKEN_PREFIX + token), out.pop(token))
    return out, long_terms


def _term_rows(metadata: list[dict[str, Any]], threads: list[str | None], requests: list[str | None],
               users: list[str | None]) -> dict[bytes, list[int]]:
    """Stored term -> ascending rows for ids and metadata (posted only when repeated).  Values are
    grouped per field first and prefixed once per distinct value, not once per row."""
    out: dict[bytes, list[int]] = {}
    _rows_by_value(threads, b"h:", out)
    _rows_by_value(requests, b"r:", out)
    _rows_by_value(users, b"u:", out)
    # keyed with the value's type too: True == 1 == 1.0 in Python, but they render as different terms
    meta_rows: defaultdict[tuple[str, Any, type], list[int]] = defaultdict(list)
    for i, row_meta in enumerate(metadata):
        for key, value in row_meta.items():
            if value is not None:  # None means absent, as in storage.query.matches
                meta_rows[key, value, type(value)].append(i)
    meta_text = layout.meta_value_text
    term_meta = layout.term_meta
    for (key, value, _), rows in meta_rows.items():
        # 1 and 1.0 and True render differently, but "1" and 1 do not: merge
        _merge_rows(out, _encode_term(term_meta(key, meta_text(value))), rows)
    _fit_long_terms(out)
    return out


def _minute_level_counts(ts: list[int], levels: list[str]) -> dict[int, dict[str, int]]:
    """minute -> level -> count; ``ts`` ascending, so each minute is a contiguous row range."""
    out: dict[int, dict[str, int]] = {}
    n = len(ts)
    lo = 0
    while lo < n:
        minute = ts[lo] // MINUTE_NS
        hi = bisect_left(ts, (minute + 1) * MINUTE_NS, lo)
        out[minute] = interned_counts(Counter(levels[lo:hi]))
        lo = hi
    return out


def build_block(records: Iterable[Mapping[str, Any]], block_id: int) -> SealedBlock:
    rows = sorted(records, key=lambda r: (r["ts_ns"], r["id"]))
    n = len(rows)
    if n == 0 or n > MAX_BLOCK_ROWS:
        raise ValueError(f"a block holds 1..{MAX_BLOCK_ROWS} records, got {n}")

    ts = [r["ts_ns"] for r in rows]
    ids = [r["id"] for r in rows]
    levels = [r["level"] for r in rows]
    sources = [r["source"] for r in rows]
    tags = [r["tags"] for r in rows]
    messages = [r["message"] for r in rows]
    metadata = [r["metadata"] for r in rows]
    threads = [r["thread_id"] for r in rows]
    requests = [r["request_id"] for r in rows]
    users = [r["user_id"] for r in rows]

    comp = _compressor()
    pack = msgpack.Packer(use_bin_type=True).pack
    columns = {
        layout.COL_TS: comp.compress(_int64s(ts)),
        layout.COL_ID: comp.compress(_int64s(ids)),
        layout.COL_LEVEL: comp.compress(_dictionary(levels)),
        layout.COL_SOURCE: comp.compress(_dictionary(sources)),
        layout.COL_TAGS: comp.compress(_packed_rows(tags, pack)),
        layout.COL_MESSAGE: comp.compress(pack(messages)),
        layout.COL_METADATA: comp.compress(_packed_rows(metadata, pack)),
        layout.COL_THREAD: comp.compress(pack(threads)),
        layout.COL_REQUEST: comp.compress(pack(requests)),
        layout.COL_USER: comp.compress(pack(users)),
    }

    # level / source / tag values always get a posting list (and are counted in the header, so
    # they stay out of the bloom); every other term is in the bloom, and posted when repeated
    always = _posted_term_rows(levels, sources, tags)
    tokens, others = _token_rows(messages)
    others.update(_term_rows(metadata, threads, requests, users))
    postings = {term: encode_postings(term_rows, n) for term, term_rows in always.items()}
    postings.update({_TOKEN_PREFIX + token: encode_postings(term_rows, n) for token, term_rows in tokens.items()
                     if len(term_rows) > 1})
    postings.update({term: encode_postings(term_rows, n) for term, term_rows in others.items()
                     if len(term_rows) > 1})
    bloom = build_bloom(list(others), list(tokens), _TOKEN_PREFIX)

    level_counts: dict[str, int] = {}
    for value in levels:
        level_counts[value] = level_counts.get(value, 0) + 1
    source_counts: dict[str, int] = {}
    for value in sources:
        source_counts[value] = source_counts.get(value, 0) + 1
    tag_counts: dict[str, int] = {}
    for row_tags in tags:
        for tag in set(row_tags):
            tag_counts[tag] = tag_counts.get(tag, 0) + 1
    header = BlockHeader(block_id, ts[0], ts[-1], n, interned_counts(level_counts), interned_counts(source_counts),
                         interned_counts(tag_counts), _minute_level_counts(ts, levels))
    return SealedBlock(header, columns, postings, bloom)


def decode_column(column: int, data: bytes) -> Any:
    """Decompress and decode one stored column: a sequence with one value per row."""
    try:
        raw = _decompressor().decompress(data)
        if column in (layout.COL_TS, layout.COL_ID):
            values = array("q")
            values.frombytes(raw)
            return values
        if column in (layout.COL_LEVEL, layout.COL_SOURCE):
            distinct, codes_bytes = msgpack.unpackb(raw, raw=False)
            codes = array("H")
            codes.frombytes(codes_bytes)
            return [distinct[c] for c in codes]
        value = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        if column in (layout.COL_TAGS, layout.COL_METADATA):
            if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
                raise CorruptData(f"column {column} is not a list of packed rows")
            return PackedColumn(value)
    except CorruptData:
        raise
    except Exception as exc:  # zstd, msgpack and shape errors all mean the same: bad bytes on disk
        raise CorruptData(f"column {column} cannot be decoded: {exc}") from exc
    if not isinstance(value, list):
        raise CorruptData(f"column {column} is not a list")
    return value
