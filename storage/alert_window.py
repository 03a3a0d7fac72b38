"""Sliding-window counts of one alert rule (or one group of a grouped rule).

Counts arrive per second of event time from the shards' ingest acknowledgements, in any order; the
coordinator asks for the sum over the window ``(now - window, now]``.  Seconds that can no longer be
in a window (older than it) are pruned; seconds far in the future are not kept (a sender with a
broken clock must not arm an alert for later).  Pure; the caller supplies ``now``.
"""

from __future__ import annotations


class WindowCounts:
    def __init__(self, window_s: int, future_s: int = 300) -> None:
        if window_s < 1:
            raise ValueError(f"window is {window_s} s; it must be at least 1 s")
        self.window_s = window_s
        self.future_s = future_s
        self._counts: dict[int, int] = {}

    def add(self, second: int, n: int, now_s: int) -> bool:
        """Count ``n`` matches in ``second``; False (and nothing kept) when that second is outside
        ``(now - window, now + future_s]``."""
        if second <= now_s - self.window_s or second > now_s + self.future_s:
            return False
        self._counts[second] = self._counts.get(second, 0) + n
        return True

    def total(self, now_s: int) -> int:
        """Matches in ``(now - window, now]``; prunes seconds that have left the window."""
        low = now_s - self.window_s
        stale = [s for s in self._counts if s <= low]
        for second in stale:
            del self._counts[second]
        return sum(n for s, n in self._counts.items() if s <= now_s)

    def __bool__(self) -> bool:
        return bool(self._counts)
