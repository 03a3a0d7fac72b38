"""The on-disk layout of one shard store: the only module that knows database names and key formats.

A store is a directory (0700) holding ``MANIFEST.json`` and one LMDB environment (files 0600)::

    DIR/MANIFEST.json      {"format": "shardlog-store", "format_version": 1, ...}
    DIR/data.mdb, lock.mdb the LMDB environment with the named databases below
    DIR/owner.lock         flock()ed by the single process that owns the store

Named databases (keys are fixed-width big-endian integers so byte order is numeric order):

    meta      bytes name                      -> msgpack value (format version, ...)
    wal       u64 seq                         -> one ingest batch (see "WAL values" below)
    wal_done  u64 seq                         -> u32 rows of that batch already sealed into blocks
    headers   u64 block_id                    -> msgpack block header (storage.header)
    columns   u64 block_id ‖ u8 column        -> zstd-compressed column (storage.block)
    postings  u64 block_id ‖ term bytes       -> packed row offsets (storage.postings)
    blooms    u64 block_id                    -> bloom filter of the block's terms (storage.bloom)
    idem      key bytes                       -> msgpack {"ts_ns", "accepted"} (idempotency keys)
    idem_age  u64 ts_ns ‖ key bytes           -> b""  (to expire idempotency keys oldest first)

WAL values, told apart by their msgpack type (``wal_lines_value``, ``storage.store``):

    a list   the batch's records, normalized (as the coordinator sent them)
    a map    {"lines": [bytes], "numbers": [int], "id_base": int, "now_ns": int, "limits": {name: int}}:
             the JSON lines a shard parsed itself (shard op ingest_lines), only those it stored; the
             records are those lines normalized again at replay (``storage.jsonlines.replay_lines``)

Terms are ``<kind>:<value>`` strings (see ``term_*`` below).  LMDB keys are limited to 511 bytes, so a
term longer than ``MAX_TERM_BYTES`` is stored as a prefix plus a digest; such a term is inexact and the
query verifies candidate rows against the record itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import msgpack

from storage.errors import FormatMismatch

FORMAT_NAME = "shardlog-store"
#: Bump when any key or value format below changes; open() refuses other versions.
FORMAT_VERSION = 1

MANIFEST_NAME = "MANIFEST.json"
OWNER_LOCK_NAME = "owner.lock"

DB_META = b"meta"
DB_WAL = b"wal"
DB_WAL_DONE = b"wal_done"
DB_HEADERS = b"headers"
DB_COLUMNS = b"columns"
DB_POSTINGS = b"postings"
DB_BLOOMS = b"blooms"
DB_IDEM = b"idem"
DB_IDEM_AGE = b"idem_age"
ALL_DBS = (DB_META, DB_WAL, DB_WAL_DONE, DB_HEADERS, DB_COLUMNS, DB_POSTINGS, DB_BLOOMS, DB_IDEM, DB_IDEM_AGE)

U64 = struct.Struct(">Q")
U32 = struct.Struct(">I")
I64 = struct.Struct(">q")

#: meta key: the newest retention cutoff applied (i64 ns); older records are hidden from reads
META_RETENTION_CUTOFF = b"retention_cutoff_ns"
BLOCK_COLUMN = struct.Struct(">QB")

#: LMDB's default maximum key size is 511 bytes; 8 bytes go to the block id.
MAX_TERM_BYTES = 480
_HASHED_PREFIX_BYTES = 440

# Column numbers inside a block.  Never renumber: they are on disk.
COL_TS = 0
COL_ID = 1
COL_LEVEL = 2
COL_SOURCE = 3
COL_TAGS = 4
COL_MESSAGE = 5
COL_METADATA = 6
COL_THREAD = 7
COL_REQUEST = 8
COL_USER = 9
ALL_COLUMNS = tuple(range(10))

#: record field -> column holding it
FIELD_COLUMN = {
    "ts_ns": COL_TS,
    "id": COL_ID,
    "level": COL_LEVEL,
    "source": COL_SOURCE,
    "tags": COL_TAGS,
    "message": COL_MESSAGE,
    "metadata": COL_METADATA,
    "thread_id": COL_THREAD,
    "request_id": COL_REQUEST,
    "user_id": COL_USER,
}


def wal_lines_value(lines: list[bytes], numbers: list[int], id_base: int, now_ns: int,
                    limits: dict[str, int]) -> bytes:
    """The WAL value of a batch stored as the JSON lines it was parsed from (see the module doc):
    packing ~330-byte lines costs a tenth of packing the records they become."""
    return msgpack.packb({"lines": lines, "numbers": numbers, "id_base": id_base, "now_ns": now_ns,
                          "limits": limits}, use_bin_type=True)


def u64(value: int) -> bytes:
    return U64.pack(value)


def read_u64(data: bytes) -> int:
    return U64.unpack_from(data)[0]


def column_key(block_id: int, column: int) -> bytes:
    return BLOCK_COLUMN.pack(block_id, column)


@functools.lru_cache(maxsize=4096)
def term_bytes(term: str) -> tuple[bytes, bool]:
    """The stored form of a term and whether it is exact (False when hashed to fit a key).
    Cached: a query asks for the same few terms once per block it visits."""
    raw = term.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_TERM_BYTES:
        return raw, True
    return stored_term(raw), False


def stored_term(raw: bytes) -> bytes:
    """The stored form of a term's UTF-8 bytes: itself, or a prefix and a digest past the limit."""
    if len(raw) <= MAX_TERM_BYTES:
        return raw
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest().encode()
    return raw[:_HASHED_PREFIX_BYTES] + b"#" + digest


def posting_key(block_id: int, term: str) -> tuple[bytes, bool]:
    raw, exact = term_bytes(term)
    return U64.pack(block_id) + raw, exact


#: a block's key in headers and blooms, and the prefix of its keys in columns and postings
#: (``block_prefix``); a loop over many blocks binds ``BLOCK_KEY.pack`` once
BLOCK_KEY = U64


def block_prefix(block_id: int) -> bytes:
    return BLOCK_KEY.pack(block_id)


def idem_age_key(ts_ns: int, key: bytes) -> bytes:
    return U64.pack(ts_ns) + key


def idem_key(key: str) -> bytes:
    """Idempotency keys are client strings of any length: hash the long ones."""
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) <= 400:
        return raw
    return b"#" + hashlib.blake2b(raw, digest_size=32).hexdigest().encode()


# Terms.  One letter of kind, a colon, the value.  Message tokens are lower-case already.
def term_token(token: str) -> str:
    return "w:" + token


def term_level(level: str) -> str:
    return "l:" + level


def term_source(source: str) -> str:
    return "s:" + source


def term_tag(tag: str) -> str:
    return "t:" + tag


def term_request(value: str) -> str:
    return "r:" + value


def term_user(value: str) -> str:
    return "u:" + value


def term_thread(value: str) -> str:
    return "h:" + value


def meta_key_text(key: str) -> str:
    """A metadata key inside a term, with backslash and ``=`` escaped by a backslash, so
    ``{"a=b": "c"}`` and ``{"a": "b=c"}`` give different terms."""
    if "=" in key or "\\" in key:
        return key.replace("\\", "\\\\").replace("=", "\\=")
    return key


def term_meta(key: str, value: str) -> str:
    return "m:" + meta_key_text(key) + "=" + value


#: Term kinds that always get a posting list, even for one row: their values are few per block and
#: the block header already counts them, so "level:ERROR" never has to decode a block.
ALWAYS_POSTED_KINDS = ("l:", "s:", "t:")


def meta_value_text(value: Any) -> str:
    """How a metadata value is compared and indexed: the text a user would type."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# --- manifest -------------------------------------------------------------------------------------


def write_manifest(directory: Path, extra: dict[str, Any] | None = None) -> None:
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "created_ns": time.time_ns()}
    if extra:
        manifest.update(extra)
    tmp = directory / (MANIFEST_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(manifest, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / MANIFEST_NAME)


def check_manifest(directory: Path) -> dict[str, Any]:
    """Read and validate the manifest; FormatMismatch names what is wrong and what to do."""
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise FormatMismatch(f"{path} is not a readable shardlog manifest ({exc}); "
                             "point --data-dir at a shardlog data dir or an empty directory") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise FormatMismatch(f"{path} does not describe a shardlog store (format "
                             f"{manifest.get('format') if isinstance(manifest, dict) else manifest!r}); "
                             "point --data-dir at a shardlog data dir or an empty directory")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatMismatch(f"{directory} was written by store format {version!r}; this shardlog reads "
                             f"format {FORMAT_VERSION}; upgrade shardlog to open it")
    if version < FORMAT_VERSION:
        raise FormatMismatch(f"{directory} has store format {version}; this shardlog needs format "
                             f"{FORMAT_VERSION} and has no migration for it; export and re-ingest")
    return manifest
