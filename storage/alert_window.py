"""Sliding-window counts of one alert rule (or one group of a grouped rule).

Counts arrive per second of event time from the shards' ingest acknowledgements, in any order; the
coordinator asks for the sum over the window ``(now - window, now]``.  Seconds that can no longer be
in a window (older than it) are pruned; seconds far in the future are not kept (a sender with a
broken clock must not arm an alert for later).  Pure; the caller supplies ``now``.
"""

from __future__ import annotations

import heapq
from typing import Iterable


class WindowCounts:
    """Counts per second with a running sum: ``add`` and pruning are O(log n) (a heap of seconds),
    ``total`` is O(1) unless seconds ahead of ``now`` are held (clock skew, rare)."""

    def __init__(self, window_s: int, future_s: int = 300) -> None:
        if window_s < 1:
            raise ValueError(f"window is {window_s} s; it must be at least 1 s")
        self.window_s = window_s
        self.future_s = future_s
        self._counts: dict[int, int] = {}
        self._seconds: list[int] = []  # heap of the seconds in _counts
        self._sum = 0
        self._newest = None  # newest second held

    def add(self, second: int, n: int, now_s: int) -> bool:
        """Count ``n`` matches in ``second``; False (and nothing kept) when that second is outside
        ``(now - window, now + future_s]``."""
        return self.add_many(((second, n),), now_s)

    def add_many(self, entries: "Iterable[tuple[int, int]]", now_s: int) -> bool:
        """``add`` for many (second, n) pairs (one ingest ack brings one per second of its batch);
        True when any was kept."""
        low, high = now_s - self.window_s, now_s + self.future_s
        counts, heap, newest = self._counts, self._seconds, self._newest
        kept = False
        total = 0
        for second, n in entries:
            if second <= low or second > high:
                continue
            if second in counts:
                counts[second] += n
            else:
                counts[second] = n
                heapq.heappush(heap, second)
                if newest is None or second > newest:
                    newest = second
            total += n
            kept = True
        self._sum += total
        self._newest = newest
        return kept

    def total(self, now_s: int) -> int:
        """Matches in ``(now - window, now]``; prunes seconds that have left the window."""
        low = now_s - self.window_s
        while self._seconds and self._seconds[0] <= low:
            self._sum -= self._counts.pop(heapq.heappop(self._seconds))
        if not self._seconds:
            self._newest = None
        if self._newest is not None and self._newest > now_s:
            return self._sum - sum(n for s, n in self._counts.items() if s > now_s)
        return self._sum

    def __bool__(self) -> bool:
        return bool(self._counts)
