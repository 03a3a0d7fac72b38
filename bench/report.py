"""Measurement and reporting helpers shared by the benchmarks.

This module owns how a benchmark times a call (warm-up, then R runs; median / p90 / p99 in ms),
how it measures peak memory and disk use, what it says about the machine and the commit, and how
it renders a plain-text table.  It imports nothing of shardlog, so any benchmark (in-process or
through the daemon) can use it.

Peak RSS is a per-process high-water mark, so a benchmark that compares two engines runs each
one in its own process and reads it there (see ``peak_rss_bytes`` for why not ``ru_maxrss``).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

#: Cap on the time spent timing one query (after its warm-up): a slow query gets fewer runs
#: (never fewer than MIN_RUNS) so a large-N run still finishes in minutes.
DEFAULT_BUDGET_S = 20.0
MIN_RUNS = 5


@dataclass(frozen=True)
class Timing:
    """Latency of repeated calls, in milliseconds."""

    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Timing":
        return cls(**data)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile (``fraction`` in [0, 1]) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"percentile fraction is {fraction}; it must be within [0, 1]")
    position = (len(sorted_values) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    weight = position - low
    return sorted_values[low] * (1.0 - weight) + sorted_values[high] * weight


def summarize(durations_s: Sequence[float]) -> Timing:
    """Timing of a list of call durations given in seconds."""
    ordered = sorted(d * 1000.0 for d in durations_s)
    return Timing(
        runs=len(ordered),
        median_ms=statistics.median(ordered),
        p90_ms=percentile(ordered, 0.90),
        p99_ms=percentile(ordered, 0.99),
        min_ms=ordered[0],
        max_ms=ordered[-1],
    )


def time_calls(
    fn: Callable[[], Any],
    *,
    repeat: int = 30,
    warmup: int = 1,
    budget_s: float | None = DEFAULT_BUDGET_S,
) -> tuple[Timing, Any]:
    """Call ``fn`` ``warmup`` times untimed, then up to ``repeat`` times timed.  Returns the
    timing and the result of the last call.  With ``budget_s``, the number of timed runs is cut
    so they take about that long (at least ``MIN_RUNS``, judged from the slowest warm-up)."""
    if repeat < 1:
        raise ValueError(f"repeat is {repeat}; it must be >= 1 (--repeat)")
    result: Any = None
    slowest_warmup_s = 0.0
    for _ in range(warmup):
        started = time.perf_counter()
        result = fn()
        slowest_warmup_s = max(slowest_warmup_s, time.perf_counter() - started)
    runs = repeat
    if budget_s is not None and slowest_warmup_s > 0:
        runs = max(min(repeat, MIN_RUNS), min(repeat, int(budget_s / slowest_warmup_s)))
    durations_s = []
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        durations_s.append(time.perf_counter() - started)
    return summarize(durations_s), result


def settle_disk() -> None:
    """Write every dirty page back (``os.sync``) before a timed part, so no part pays for the
    writeback of what the previous one wrote (the generated input, the other engine's files)."""
    if hasattr(os, "sync"):
        os.sync()


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes.

    On Linux this is ``VmHWM`` from /proc/self/status, the high-water mark of the current
    address space.  ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used there because Linux carries
    it across ``execve``: a child started by a parent holding the generated data would report
    the parent's size.  Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS) is the fallback.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def allocated_bytes(directory: str | os.PathLike[str]) -> int:
    """Bytes allocated on disk (``st_blocks * 512``) by every file under ``directory``.  LMDB's
    data file is sparse, so its apparent size overstates what it uses; allocated bytes are the
    honest measure for every engine."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # e.g. an SQLite -shm file removed between walk and stat
                continue
    return total


def memory_total_bytes() -> int | None:
    """Physical memory from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def git_commit(repo_dir: str | os.PathLike[str]) -> str:
    """``git rev-parse --short HEAD`` in ``repo_dir``, with ``+dirty`` when the tree has
    changes; ``"uncommitted"`` when there is no commit or no git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo_dir, capture_output=True,
            text=True, timeout=10, check=False,
        )
        if head.returncode != 0 or not head.stdout.strip():
            return "uncommitted"
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir,
            capture_output=True, text=True, timeout=10, check=False,
        )
        dirty = "+dirty" if status.returncode == 0 and status.stdout.strip() else ""
        return head.stdout.strip() + dirty
    except (OSError, subprocess.SubprocessError):
        return "uncommitted"


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare runs: platform, CPU count, memory, Python, SQLite."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "memory_bytes": memory_total_bytes(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def repo_root() -> Path:
    """The work tree holding ``bench/`` (benchmarks run their children from here)."""
    return Path(__file__).resolve().parent.parent


# -- rendering ---------------------------------------------------------------------------------


def ratio(ours: float | None, baseline: float | None) -> float | None:
    """``ours / baseline``, or None when either is missing or the baseline is zero."""
    if ours is None or baseline is None or baseline == 0:
        return None
    return ours / baseline


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def fmt_count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells; the table has {len(headers)} columns")
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule] + [line(row) for row in rows])
