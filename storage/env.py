"""The LMDB environment of one store: opening it safely and keeping it healthy.

Owns the LMDB hygiene rules of DESIGN §4:
* durable commits: ``sync=True, metasync=True, writemap=False``;
* directories 0700, files 0600, one owning process (``flock`` on ``owner.lock``);
* the map starts at ``map_size_bytes`` and doubles on ``MapFullError`` up to ``max_size_bytes``, after
  which writes fail with ``StoreFull``.  Growing the map needs no transaction open in this process,
  so read transactions enter through ``ReadersGate`` and growth waits for them to leave;
* ``reader_check()`` at open (and by the store periodically) clears slots of dead readers;
* ``release_pages()`` drops this process's mappings of data-file pages it read (they stay in the
  kernel's page cache), so the shard's RSS tracks what it holds, not every page it ever touched.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import lmdb

from storage import layout
from storage.errors import FormatMismatch, StoreFull, StoreLocked


_MADV_DONTNEED = 4  # Linux


def _load_madvise() -> "ctypes._NamedFuncPointer | None":
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


def _read_only_mappings(path: str) -> list[tuple[int, int]]:
    """(start, end) of this process's read-only mappings of ``path``, from /proc/self/maps."""
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].rstrip("\n") == path and "w" not in fields[1]:
                start, end = fields[0].split("-")
                out.append((int(start, 16), int(end, 16)))
    return out


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def file_backed_rss() -> int | None:
    """Bytes of this process's resident file-backed (and shared) pages, from /proc/self/statm
    (one short line: cheap enough to read after every sealed block); None where there is none."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[2]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class ReadersGate:
    """Shared/exclusive gate: readers run concurrently; ``exclusive()`` waits for them to drain and
    keeps new ones out (used only to resize the map, which is rare)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def take_owner_lock(directory: Path, lock_name: str = layout.OWNER_LOCK_NAME, *,
                    busy: str = "{directory} is in use by another shardlog process (pid {pid}); stop it first "
                                "or use another --data-dir") -> int:
    """flock ``directory/lock_name``; StoreLocked (message ``busy``) if another process holds it.
    Returns the fd, kept open for the owner's life; the kernel drops the lock when the process dies."""
    path = directory / lock_name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            pid = path.read_text().strip() or "?"
        except OSError:
            pid = "?"
        raise StoreLocked(busy.format(directory=directory, pid=pid)) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class Env:
    """An open LMDB environment with the named databases of ``storage.layout``."""

    #: a read checks the mapped-pages budget at most this often (reading /proc costs ~10 us)
    BUDGET_CHECK_INTERVAL_S = 0.02

    def __init__(self, directory: Path, *, map_size_bytes: int, max_size_bytes: int,
                 max_mapped_bytes: int = 0) -> None:
        self.directory = directory
        self.max_size_bytes = max_size_bytes
        #: file-backed RSS above which read pages are unmapped (``release_over_budget``); 0 = never
        self.max_mapped_bytes = max_mapped_bytes
        self._budget_checked_at = 0.0
        self.gate = ReadersGate()
        fresh = not (directory / layout.MANIFEST_NAME).exists()
        if fresh and (directory / "data.mdb").exists():
            raise FormatMismatch(f"{directory} holds an LMDB file but no {layout.MANIFEST_NAME}; it is not a "
                                 "shardlog store; point --data-dir at a shardlog data dir or an empty directory")
        if not fresh:
            layout.check_manifest(directory)
        try:
            self.env = lmdb.open(
                str(directory),
                map_size=map_size_bytes,
                max_dbs=len(layout.ALL_DBS) + 2,
                sync=True,
                metasync=True,
                writemap=False,
                map_async=False,
                readahead=False,
                mode=0o600,
                max_readers=512,
                lock=True,
                subdir=True,
            )
        except lmdb.Error as exc:
            raise FormatMismatch(f"cannot open the LMDB store in {directory}: {exc}; check the directory "
                                 "and its permissions") from exc
        self.env.reader_check()
        self.dbs = {name: self.env.open_db(name) for name in layout.ALL_DBS}
        if fresh:
            layout.write_manifest(directory)
        # a store grown by an earlier run keeps its size: LMDB reports the larger of the two
        self.map_size_bytes = self.env.info()["map_size"]

    def db(self, name: bytes) -> "lmdb._Database":
        return self.dbs[name]

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        with self.gate.shared():
            txn = self.env.begin(buffers=False)
            try:
                yield txn
            finally:
                txn.abort()
                # still inside the shared gate, so the map cannot be remapped (grow) meanwhile
                self.release_over_budget()

    def over_budget(self, throttle: bool = True) -> bool:
        """Whether this process's file-backed RSS is over ``max_mapped_bytes`` (read from /proc at
        most every BUDGET_CHECK_INTERVAL_S unless ``throttle`` is False, which long scans use
        every so many blocks; between reads the answer is False)."""
        if not self.max_mapped_bytes:
            return False
        now = time.monotonic()
        if throttle and now - self._budget_checked_at < self.BUDGET_CHECK_INTERVAL_S:
            return False
        self._budget_checked_at = now
        mapped = file_backed_rss()
        return mapped is not None and mapped > self.max_mapped_bytes

    def release_over_budget(self, throttle: bool = True) -> None:
        """``release_pages()`` when ``over_budget(throttle)``.  The caller must keep ``grow()`` out:
        hold the readers gate (shared, as inside ``read()``) or the store's write lock."""
        if self.over_budget(throttle):
            self.release_pages()

    def grow(self) -> None:
        """Double the map (called after a MapFullError aborted a write); StoreFull at the cap."""
        if self.map_size_bytes >= self.max_size_bytes:
            raise StoreFull(f"store {self.directory} is full at {self.map_size_bytes} bytes; the limit is "
                            f"{self.max_size_bytes} bytes (max_store_bytes); raise it, shorten --retention, or "
                            "free disk space")
        new_size = min(self.map_size_bytes * 2, self.max_size_bytes)
        with self.gate.exclusive():
            self.env.set_mapsize(new_size)
        self.map_size_bytes = new_size

    def release_pages(self) -> int:
        """Unmap the data-file pages this process has read (``MADV_DONTNEED`` on LMDB's read-only
        map; Linux only, else a no-op).  With ``writemap=False`` the map holds no private or dirty
        pages, so nothing is lost: the pages stay in the page cache and the next read maps them again
        (a minor fault).  Without this a shard's RSS grows with its data file, because every page a
        commit or query ever read stays mapped.  The caller holds off ``grow()`` (which remaps).
        Returns the bytes of address space released."""
        if _madvise is None:
            return 0
        try:
            ranges = _read_only_mappings(str((self.directory / "data.mdb").resolve()))
        except OSError:
            return 0
        released = 0
        for start, end in ranges:
            if _madvise(start, end - start, _MADV_DONTNEED) == 0:
                released += end - start
        return released

    def bytes_on_disk(self) -> int:
        total = 0
        for name in ("data.mdb", "lock.mdb"):
            try:
                total += os.stat(self.directory / name).st_blocks * 512
            except FileNotFoundError:
                pass
        return total

    def close(self) -> None:
        self.env.close()
