"""The unsealed tail of a store: acknowledged batches not yet sealed into blocks, oldest first.

Each batch is one WAL entry (``WalEntry``); rows before its ``start`` are sealed already.  Sealing
takes the oldest rows a block at a time, and is pipelined (``storage.store``): the sealer builds the
next block while the writer commits the previous one, so rows can be *claimed* by a block in
flight — built or being committed, not yet visible as a block.  Claimed rows stay in the tail (a
reader still sees them there) until the block is shown (``seal``) or its commit fails
(``release``); the next claim skips them.

Pure bookkeeping: no locks, no I/O, no clock (callers pass ``now``).  The store calls every method
under its state lock.
"""

from __future__ import annotations

from typing import Any

#: (entry, first row, end row): a run of one entry's rows taken into a block
Taken = tuple["WalEntry", int, int]


class WalEntry:
    """One ingest batch in the WAL; rows before ``start`` are already sealed into blocks."""

    __slots__ = ("seq", "records", "start")

    def __init__(self, seq: int, records: list[dict[str, Any]], start: int = 0) -> None:
        self.seq = seq
        self.records = records
        self.start = start


class Tail:
    def __init__(self) -> None:
        self.entries: list[WalEntry] = []
        #: unsealed rows (claimed ones included)
        self.records = 0
        #: the oldest unsealed rows, claimed by a block being built or committed
        self.claimed = 0
        #: when the oldest unsealed row arrived (or the last block was shown), for sealing by age
        self.since = 0.0

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def unclaimed(self) -> int:
        return self.records - self.claimed

    def append(self, entries: list[WalEntry], now: float) -> None:
        """Committed batches (an entry replayed from the WAL may start past its sealed rows)."""
        if not self.entries and entries:
            self.since = now
        self.entries.extend(entries)
        self.records += sum(len(entry.records) - entry.start for entry in entries)

    def claim(self, block_records: int) -> tuple[list[Taken], int]:
        """Up to ``block_records`` of the oldest rows no block has claimed yet, and their number."""
        skip = self.claimed
        taken: list[Taken] = []
        count = 0
        for entry in self.entries:
            start = entry.start
            available = len(entry.records) - start
            if skip >= available:
                skip -= available
                continue
            start += skip
            skip = 0
            end = min(len(entry.records), start + block_records - count)
            taken.append((entry, start, end))
            count += end - start
            if count >= block_records:
                break
        self.claimed += count
        return taken, count

    def release(self, count: int) -> None:
        """A claimed block was not stored (its build or commit failed): its rows are unclaimed
        again.  The sealer, the only claimer, stops at a failure and every claim in flight is
        released before it claims again, so ``claim`` always skips exactly the rows of the blocks
        in flight."""
        self.claimed -= count

    def seal(self, taken: list[Taken], count: int, now: float) -> None:
        """A claimed block was stored and is shown: its rows leave the tail."""
        for entry, _, end in taken:
            entry.start = end
        entries = self.entries
        while entries and entries[0].start >= len(entries[0].records):
            del entries[0]
        self.records -= count
        self.claimed -= count
        self.since = now

    def rows(self) -> list[dict[str, Any]]:
        """Every unsealed row, oldest batch first (what a reader's snapshot holds)."""
        return [record for entry in self.entries for record in entry.records[entry.start:]]
