"""The coordinator's own small durable state (alert rules, their state, alert history) in LMDB.

Tables are named LMDB databases; values are msgpack.  Every write is one durable transaction
(``sync=True``), so what ``put`` returned is on disk — the coordinator persists an alert *before*
notifying anyone.  Kept apart from the shards' stores: ``DATA_DIR/state/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import lmdb
import msgpack

from storage.env import make_private_dir, take_owner_lock
from storage.errors import CorruptData, StoreFull

TABLES = (b"rules", b"rule_state", b"history", b"meta")
STATE_FORMAT = 1


class StateStore:
    def __init__(self, path: str | os.PathLike[str], *, map_size_bytes: int = 1 << 30) -> None:
        self.path = Path(path)
        make_private_dir(self.path)
        self._lock_fd = take_owner_lock(self.path)
        try:
            self.env = lmdb.open(str(self.path), map_size=map_size_bytes, max_dbs=len(TABLES) + 1, sync=True,
                                 metasync=True, writemap=False, mode=0o600, subdir=True)
        except lmdb.Error as exc:
            os.close(self._lock_fd)
            raise CorruptData(f"cannot open the state store {self.path}: {exc}") from exc
        self.env.reader_check()
        self.dbs = {name.decode(): self.env.open_db(name) for name in TABLES}
        version = self.get("meta", "format")
        if version is None:
            self.put("meta", "format", STATE_FORMAT)
        elif version != STATE_FORMAT:
            raise CorruptData(f"state store {self.path} has format {version!r}; this shardlog reads {STATE_FORMAT}")

    def get(self, table: str, key: str) -> Any:
        with self.env.begin() as txn:
            data = txn.get(key.encode(), db=self.dbs[table])
        return None if data is None else msgpack.unpackb(data, raw=False, strict_map_key=True)

    def items(self, table: str) -> list[tuple[str, Any]]:
        """Every (key, value) of a table, in key order."""
        with self.env.begin() as txn:
            return [(bytes(k).decode(), msgpack.unpackb(v, raw=False, strict_map_key=True))
                    for k, v in txn.cursor(db=self.dbs[table])]

    def put(self, table: str, key: str, value: Any) -> None:
        self.write([(table, key, value)])

    def delete(self, table: str, key: str) -> None:
        self.write([(table, key, None)])

    def write(self, changes: Iterable[tuple[str, str, Any]]) -> None:
        """Apply (table, key, value) changes in one durable transaction; value None deletes."""
        changes = list(changes)
        try:
            with self.env.begin(write=True) as txn:
                for table, key, value in changes:
                    if value is None:
                        txn.delete(key.encode(), db=self.dbs[table])
                    else:
                        txn.put(key.encode(), msgpack.packb(value, use_bin_type=True), db=self.dbs[table])
        except lmdb.MapFullError:
            raise StoreFull(f"state store {self.path} is full; prune the alert history") from None

    def trim(self, table: str, keep: int) -> None:
        """Keep only the newest ``keep`` entries (keys sort oldest first)."""
        with self.env.begin(write=True) as txn:
            db = self.dbs[table]
            excess = txn.stat(db)["entries"] - keep
            cursor = txn.cursor(db=db)
            if excess > 0 and cursor.first():
                for _ in range(excess):
                    if not cursor.delete():
                        break

    def close(self) -> None:
        self.env.close()
        os.close(self._lock_fd)
