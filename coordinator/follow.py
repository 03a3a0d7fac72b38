"""The ring of recently acknowledged records that `tail -f` followers read.

Records are kept only while someone follows: an open HTTP tail stream (``subscribe``), or a ``tail``
call in the last ``FOLLOW_GRACE_S`` seconds (``tail -f`` polls every few seconds).  Nobody following
means no copies: ``tail`` without a cursor reads the store.  Each acknowledged batch is one ring
entry, numbered by the sequence number of its last record; about ``TAIL_RING`` records are kept.
A cursor is ``<boot>:<seq>``: after a restart (another boot id) an old cursor starts afresh.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from typing import Any, AsyncIterator

from storage import query as q
from storage.record import to_public

#: recently ingested records kept for `tail -f`
TAIL_RING = 20_000
FOLLOW_GRACE_S = 60.0
MAX_TAIL_WAIT_S = 30.0


class FollowRing:
    def __init__(self) -> None:
        self.boot = uuid.uuid4().hex[:8]
        #: (sequence number of the batch's last record, batch), oldest first
        self._ring: deque[tuple[int, list[dict[str, Any]]]] = deque()
        self._records = 0
        self.seq = 0
        self._subscribers = 0
        self._followed_until = 0.0
        self._cond = asyncio.Condition()

    def followed(self) -> bool:
        """Someone follows new records: ingested batches are kept for them."""
        return bool(self._subscribers) or time.monotonic() <= self._followed_until

    def touch(self) -> None:
        """A ``tail`` call: keep records for the grace period (the next poll of ``tail -f``)."""
        self._followed_until = time.monotonic() + FOLLOW_GRACE_S

    def cursor(self, seq: int | None = None) -> str:
        return f"{self.boot}:{self.seq if seq is None else seq}"

    def parse_cursor(self, cursor: Any) -> int | None:
        """The sequence number of a cursor of this boot; None for another boot's or garbage."""
        boot, _, seq_text = str(cursor).partition(":")
        return int(seq_text) if boot == self.boot and seq_text.isdigit() else None

    async def publish(self, records: list[dict[str, Any]]) -> None:
        """Keep an acknowledged batch for followers (nothing when nobody follows)."""
        if not self.followed():
            if self._ring:  # nobody follows any more: free the copies
                self._ring.clear()
                self._records = 0
            return
        if not records:
            return
        async with self._cond:
            self.seq += len(records)
            self._ring.append((self.seq, records))
            self._records += len(records)
            while self._records - len(self._ring[0][1]) >= TAIL_RING:
                self._records -= len(self._ring.popleft()[1])
            self._cond.notify_all()

    def after(self, after: int) -> list[dict[str, Any]]:
        """Records of the ring numbered above ``after``, oldest first."""
        out: list[dict[str, Any]] = []
        for last_seq, batch in list(self._ring):
            if last_seq > after:
                first_seq = last_seq - len(batch) + 1
                out.extend(batch[max(0, after + 1 - first_seq):])
        return out

    async def wait_newer(self, seq: int, timeout_s: float) -> None:
        """Until a record numbered above ``seq`` arrives or ``timeout_s`` passes."""
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self.seq > seq), timeout_s)
            except asyncio.TimeoutError:
                pass

    async def poll(self, node: q.Node, after: int, wait_s: float, limit: int) -> tuple[list[dict[str, Any]], int]:
        """(matching public logs numbered above ``after``, the newest number seen), waiting up to
        ``wait_s`` (at most MAX_TAIL_WAIT_S) for the first; at most ``max(limit, 1000)``, the newest."""
        deadline = time.monotonic() + min(wait_s, MAX_TAIL_WAIT_S)
        while True:
            found = [r for r in self.after(after) if q.matches(node, r)]
            newest = self.seq
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return [to_public(r) for r in found[-max(limit, 1000):]], newest
            after = newest
            await self.wait_newer(newest, remaining)

    async def subscribe(self, node: q.Node) -> AsyncIterator[dict[str, Any]]:
        """New matching public logs as they are acknowledged (the HTTP tail stream)."""
        after = self.seq
        self._subscribers += 1
        try:
            while True:
                async with self._cond:
                    await self._cond.wait_for(lambda: self.seq > after)
                for record in self.after(after):
                    if q.matches(node, record):
                        yield to_public(record)
                after = self.seq
        finally:
            self._subscribers -= 1
