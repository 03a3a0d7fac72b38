"""End-to-end benchmark: the shardlog daemon (coordinator + shard processes) vs SQLite, same data,
same run.

    python -m bench.bench_e2e --n 1000000 [--json] [--seed 1] [--batch 5000] [--concurrency 4]
                              [--repeat 30] [--parts sqlite,http,cli,scaling] [--workdir /tmp] [--keep]

This module owns the daemon benchmark: it drives real ``shardlog serve`` processes the way users
do (HTTP ``POST /insert/jsonline``, the ``shardlog ingest`` CLI, RPC queries over the unix socket)
and measures what a user of the whole system pays.  It guarantees:

- The same workload as ``bench_storage`` (``bench.workload``: generate, query_params,
  expected_answers), stamped so the data ends a minute before now (nothing looks expired or in
  the future).  The SQLite baseline runs in the same run on the same records, in its own process,
  through ``bench_storage``'s engine child (durable ``SqliteBaseline``, one transaction per
  ``--batch`` records, the same batch size as one HTTP request).
- Every answer (ours and SQLite's) is compared with a plain scan of the generated data; a
  difference prints a line starting with ``MISMATCH`` and the exit code is 1.  The daemon assigns
  its own record ids, so its rows are mapped back to workload ids by content (timestamp, source,
  request id, message); rows with equal timestamps are compared in workload-id order, because the
  daemon breaks such ties by its own ids (concurrent requests may number them in another order).
- Peak RSS is the sum of ``VmRSS`` over the daemon's whole process tree (coordinator and every
  shard), sampled every ``SAMPLE_EVERY_S`` from start to stop; each process's ``VmHWM`` is read
  just before the stop.  The anonymous part (``RssAnon``: heaps, caches) is sampled apart from
  the file-backed part (``RssFile``: LMDB's memory map and the interpreter's shared libraries),
  because mapped LMDB pages count in RSS but are page cache the kernel can reclaim.  CPU seconds (utime + stime from ``/proc/<pid>/stat``) of every process,
  and of this client process, are taken at the start and end of each ingest, to show where the
  ingest time goes.

Parts (``--parts``, all by default): ``sqlite`` the baseline; ``http`` a 2-shard daemon ingesting
over HTTP with ``--concurrency`` requests in flight, then flush, bytes on disk and the 8 queries
through one persistent ``shardd.client.Client``; ``cli`` a fresh 2-shard daemon fed by
``shardlog ingest FILE`` (the whole command is timed, interpreter start included); ``scaling`` a
fresh 1-shard daemon ingesting over HTTP exactly as ``http`` does, for the 2-vs-1 shard ratio.
Daemons run one at a time and never overlap the SQLite child, so no part competes with another
for the two cores.

Ingest rounds (``--ingest-rounds K``, 3 by default): before the parts above, K-1 extra rounds
each ingest the same data once into SQLite and once into a fresh 2-shard daemon over HTTP
(alternating, each into a fresh store that is then deleted); the ``sqlite`` and ``http`` parts are
the last round.  The table's HTTP and SQLite ingest rates, and every ingest ratio, are the medians
over the rounds: on a shared 2-core machine one ingest can move by 10-20 %.

Ingest time is from the first request sent to the last acknowledgement (every ack is durable),
plus the final ``flush`` (shards seal their WAL tail into blocks), as ``bench_storage`` counts
SQLite's final checkpoint.  The HTTP client runs in this process on the same machine, as a local
log shipper would; its CPU share is reported.  Ratios are ours / SQLite's: for ingest rate
higher is better, for bytes, RSS and query times lower is better.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from bench import report
from bench.bench_storage import write_batches
from bench.workload import (
    JITTER_NS,
    QUERIES,
    STEP_NS,
    QueryParams,
    Record,
    expected_answers,
    generate,
    query_params,
    to_jsonl,
)
from shardd.client import Client
from storage import query as q
from storage import querytext
from storage import querywire
from storage.errors import ShardlogError
from storage.timefmt import format_timestamp, parse_timestamp

PARTS = ("sqlite", "http", "cli", "scaling")

#: Targets at N = 1,000,000 (the issue).
TARGET_INGEST_RATIO = 1.5
TARGET_QUERY_MEDIAN_MS = 5.0
#: "under 400 MB", read literally (decimal); the report shows MiB too.
TARGET_RSS_BYTES = 400 * 10**6
#: Queries that must also be faster than SQLite's (group-by, histogram, top-N).
MUST_BEAT_SQLITE = ("count_by_source", "count_by_level", "top5_tags", "error_per_minute_1h")

#: How often the process tree's RSS is sampled.
SAMPLE_EVERY_S = 0.2
#: A daemon must answer ping within this after start, and exit within this after SIGTERM.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
#: Bound on one child (SQLite engine, CLI ingest): a hung child must not hang the run.
CHILD_TIMEOUT_S = 3600
#: Per-call deadline of the query client and of one HTTP request.
CALL_TIMEOUT_S = 120.0
#: The data ends this long before now, so the newest stamp is safely in the past.
END_MARGIN_NS = 60 * 10**9

_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Processes: the tree, RSS and CPU from /proc
# ---------------------------------------------------------------------------------------------


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants alive now (breadth first)."""
    pids = [root_pid]
    index = 0
    while index < len(pids):
        pid = pids[index]
        index += 1
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as children:
                    pids.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # it exited between the listing and the read
    return pids


def status_kib(pid: int, keys: Sequence[str]) -> dict[str, int]:
    """``{key: kB}`` of ``/proc/<pid>/status`` lines such as VmRSS, VmHWM; {} if it exited."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in keys:
                    found[name] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return {}
    return found


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds, or None if it exited."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_S


def process_role(pid: int, root_pid: int) -> str:
    """A readable name: ``coordinator`` for the root, ``shard K`` for a shard process."""
    if pid == root_pid:
        return "coordinator"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return f"pid {pid}"
    if "--shard-id" in args:
        position = args.index("--shard-id")
        if position + 1 < len(args):
            return f"shard {args[position + 1]}"
    return f"pid {pid}"


_RSS_KEYS = ("VmRSS", "RssAnon", "RssFile")


class TreeSampler:
    """Samples the summed VmRSS (and its anonymous / file-backed parts) of a process tree every
    ``SAMPLE_EVERY_S`` in a thread.

    ``peak_bytes`` and ``samples`` are only written by the sampler thread while it runs and read
    after ``stop()`` joined it, so they need no lock."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        #: key of _RSS_KEYS -> the largest sum over the tree seen in one sample
        self.peak_bytes = {key: 0 for key in _RSS_KEYS}
        self.samples = 0
        self.roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sample(self) -> dict[str, int]:
        """``{key: bytes summed over the tree}`` for each key of ``_RSS_KEYS``, now."""
        totals_kib = {key: 0 for key in _RSS_KEYS}
        for pid in process_tree(self.root_pid):
            if pid not in self.roles:
                self.roles[pid] = process_role(pid, self.root_pid)
            for key, kib in status_kib(pid, _RSS_KEYS).items():
                totals_kib[key] += kib
        return {key: kib * 1024 for key, kib in totals_kib.items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, size in self.sample().items():
                self.peak_bytes[key] = max(self.peak_bytes[key], size)
            self.samples += 1
            self._stop.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def memory_now(self) -> dict[str, dict[str, int]]:
        """``{role: {"VmHWM": bytes, "RssAnon": bytes, "RssFile": bytes}}`` of every process of
        the tree alive now."""
        found = {}
        for pid in process_tree(self.root_pid):
            values = status_kib(pid, ("VmHWM", "RssAnon", "RssFile"))
            if values:
                role = self.roles.get(pid) or process_role(pid, self.root_pid)
                found[role] = {key: kib * 1024 for key, kib in values.items()}
        return found

    def cpu(self) -> dict[str, float]:
        """``{role: CPU seconds so far}`` of the tree, plus ``client``."""
        usage: dict[str, float] = {}
        for pid in process_tree(self.root_pid):
            seconds = cpu_seconds(pid)
            if seconds is not None:
                usage[self.roles.get(pid) or process_role(pid, self.root_pid)] = seconds
        # This process (the HTTP client) and its waited-for children (the `shardlog ingest` CLI).
        times = os.times()
        usage["client"] = times.user + times.system + times.children_user + times.children_system
        return usage


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before.get(role, 0.0) for role in after}


# ---------------------------------------------------------------------------------------------
# One daemon
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_command(data_dir: Path, shards: int, http: str) -> list[str]:
    """``python -m cli.main serve ...`` when the CLI has ``serve``, else the daemon's entry point."""
    try:
        from cli.main import cli as shardlog_cli

        has_serve = "serve" in getattr(shardlog_cli, "commands", {})
    except ImportError:
        has_serve = False
    if has_serve:
        return [sys.executable, "-m", "cli.main", "serve", "--data-dir", str(data_dir),
                "--shards", str(shards), "--http", http]
    flags = {"data_dir": str(data_dir), "shards": shards, "http": http}
    return [sys.executable, "-c", "import sys; from coordinator.daemon import serve_main; "
            f"sys.exit(serve_main({flags!r}))"]


class Daemon:
    """A ``shardlog serve`` subprocess on its own data dir, with an RSS sampler on its tree."""

    def __init__(self, data_dir: Path, shards: int) -> None:
        self.data_dir = data_dir
        self.shards = shards
        self.port = free_port()
        self.socket_path = data_dir / "shardlog.sock"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.sampler: TreeSampler | None = None

    @property
    def insert_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/insert/jsonline"

    def start(self) -> None:
        # SHARDLOG_* from the caller's environment would change the daemon under test.
        env = {key: value for key, value in os.environ.items() if not key.startswith("SHARDLOG_")}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                serve_command(self.data_dir, self.shards, f"127.0.0.1:{self.port}"),
                cwd=report.repo_root(), stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        self.sampler = TreeSampler(self.process.pid)
        self.sampler.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon on {self.data_dir} exited with code "
                                   f"{self.process.returncode} at start:\n{self.log_tail()}")
            try:
                with Client(self.socket_path, timeout_s=2.0) as client:
                    if client.call("ping").get("ready", True):
                        return
            except ShardlogError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon on {self.data_dir} did not answer ping within "
                                   f"{START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no daemon log)"

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait; SIGKILL the tree if it hangs.  Returns the tree's memory figures."""
        memory: dict[str, Any] = {}
        if self.sampler is not None:
            memory["at_stop"] = self.sampler.memory_now()
        if self.process is not None and self.process.poll() is None:
            tree = process_tree(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for pid in tree:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.process.wait()
                memory["stop_error"] = f"daemon did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM; killed"
        if self.sampler is not None:
            self.sampler.stop()
            memory["peak_rss_sum_bytes"] = self.sampler.peak_bytes["VmRSS"]
            memory["peak_rss_anon_sum_bytes"] = self.sampler.peak_bytes["RssAnon"]
            memory["peak_rss_file_sum_bytes"] = self.sampler.peak_bytes["RssFile"]
            memory["rss_samples"] = self.sampler.samples
        return memory


# ---------------------------------------------------------------------------------------------
# Ingest
# ---------------------------------------------------------------------------------------------


@dataclass
class IngestOutcome:
    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    retries: int = 0


async def _post_bodies(url: str, bodies: Sequence[bytes], concurrency: int) -> IngestOutcome:
    """POST every body with ``concurrency`` requests in flight; 429/503 are retried after the
    Retry-After they carry (and counted), anything else non-200 is an error."""
    import aiohttp

    outcome = IngestOutcome()
    next_body = 0
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    headers = {"Content-Type": "application/x-ndjson"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=timeout) as session:

        async def worker() -> None:
            nonlocal next_body
            while next_body < len(bodies):
                body = bodies[next_body]
                next_body += 1
                while True:
                    async with session.post(url, data=body, headers=headers) as response:
                        payload = await response.read()
                        if response.status == 200:
                            answer = json.loads(payload)
                            outcome.accepted += int(answer["accepted"])
                            outcome.rejected.extend(answer["rejected"])
                            break
                        if response.status in (429, 503):
                            outcome.retries += 1
                            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                            continue
                        raise RuntimeError(f"POST {url} answered {response.status}: {payload[:300]!r}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcome


def ingest_http(daemon: Daemon, bodies: Sequence[bytes], concurrency: int, n: int) -> dict[str, Any]:
    """Ingest over HTTP, then flush; timed, with CPU per process over the ingest."""
    if daemon.sampler is None:
        raise RuntimeError("start the daemon before ingesting")
    cpu_before = daemon.sampler.cpu()
    started = time.perf_counter()
    outcome = asyncio.run(_post_bodies(daemon.insert_url, bodies, concurrency))
    acked_s = time.perf_counter() - started
    with Client(daemon.socket_path, timeout_s=CALL_TIMEOUT_S) as client:
        flush_started = time.perf_counter()
        client.call("flush")
        flush_s = time.perf_counter() - flush_started
    wall_s = time.perf_counter() - started
    cpu = cpu_delta(cpu_before, daemon.sampler.cpu())
    return _ingest_result(n, outcome.accepted, outcome.rejected, acked_s, flush_s, wall_s, cpu,
                          retries=outcome.retries)


def ingest_cli(daemon: Daemon, jsonl_path: Path, n: int) -> dict[str, Any]:
    """``shardlog ingest FILE --json`` against ``daemon``: the whole command is timed."""
    if daemon.sampler is None:
        raise RuntimeError("start the daemon before ingesting")
    command = [sys.executable, "-m", "cli.main", "ingest", str(jsonl_path), "--format", "jsonl",
               "--json", "--socket", str(daemon.socket_path)]
    cpu_before = daemon.sampler.cpu()
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=report.repo_root(), capture_output=True,
                               timeout=CHILD_TIMEOUT_S, check=False)
    acked_s = time.perf_counter() - started
    with Client(daemon.socket_path, timeout_s=CALL_TIMEOUT_S) as client:
        flush_started = time.perf_counter()
        client.call("flush")
        flush_s = time.perf_counter() - flush_started
    wall_s = time.perf_counter() - started
    cpu = cpu_delta(cpu_before, daemon.sampler.cpu())
    if completed.returncode != 0:
        raise RuntimeError(f"shardlog ingest exited with code {completed.returncode}: "
                           f"{completed.stderr.decode(errors='replace')[-500:]}")
    summary = json.loads(completed.stdout)
    result = _ingest_result(n, int(summary["accepted"]), summary["rejected"], acked_s, flush_s,
                            wall_s, cpu)
    result["cli_reported_logs_per_s"] = summary.get("logs_per_s")
    return result


def _ingest_result(n: int, accepted: int, rejected: list[dict[str, Any]], acked_s: float,
                   flush_s: float, wall_s: float, cpu: dict[str, float],
                   retries: int = 0) -> dict[str, Any]:
    ingest_s = acked_s + flush_s
    return {
        "records": n,
        "accepted": accepted,
        "rejected": len(rejected),
        "first_rejections": rejected[:3],
        "retries": retries,
        "acked_s": acked_s,
        "flush_s": flush_s,
        "ingest_s": ingest_s,
        "logs_per_s": accepted / ingest_s if ingest_s > 0 else None,
        "cpu_s": cpu,
        "wall_s": wall_s,
    }


# ---------------------------------------------------------------------------------------------
# Queries through the daemon, answers mapped back to workload ids
# ---------------------------------------------------------------------------------------------


def _row_key(ts_ns: int, source: Any, request_id: Any, message: Any) -> tuple[Any, ...]:
    return (ts_ns, source, request_id, message)


def expected_row_keys(records: Sequence[Record], expected: dict[str, Any]) -> dict[tuple[Any, ...], int]:
    """Content key -> workload id for every row an expected row answer holds (a few hundred), so
    the daemon's rows, which carry the daemon's ids, can be named by workload id."""
    wanted = {record_id for name in ("rare_token", "common_error", "source_page2_6h")
              for record_id in expected[name]}
    return {
        _row_key(r["ts_ns"], r["source"], r["request_id"], r["message"]): r["id"]
        for r in records if r["id"] in wanted
    }


def _duration_text(duration_ns: int) -> str:
    return f"{duration_ns // 10**9}s" if duration_ns % 10**9 == 0 else f"{duration_ns}ns"


class DaemonQueries:
    """The 8 benchmark queries as RPC calls on one persistent client, and the conversion of each
    answer to the shape of ``workload.expected_answers``."""

    def __init__(self, client: Client, params: QueryParams, row_ids: dict[tuple[Any, ...], int]) -> None:
        self.client = client
        self.row_ids = row_ids
        p = params
        hour = {"from": format_timestamp(p.hour_from_ns), "to": format_timestamp(p.hour_to_ns)}
        six_hours = {"from": format_timestamp(p.six_hours_from_ns), "to": format_timestamp(p.six_hours_to_ns)}
        level_error = q.Field("level", "ERROR")
        #: name -> (op, params, converter of the answer)
        self.calls: dict[str, tuple[str, dict[str, Any], Callable[[Any], Any]]] = {
            "rare_token": ("query", {"q": querytext.format_query(q.Token(p.rare_token)), "limit": 100},
                           self._rows),
            "common_error": ("query", {"q": querytext.format_query(q.And((q.Token(p.common_token), level_error))),
                                       "limit": 100}, self._rows),
            "warn_count_1h": ("count", {"q": querytext.format_query(q.Field("level", "WARN")), **hour},
                              lambda answer: answer["count"]),
            "source_page2_6h": ("query", {"q": querytext.format_query(q.Field("source", p.page_source)),
                                          **six_hours, "offset": p.page_offset, "limit": p.page_limit},
                                self._rows),
            "count_by_source": ("aggregate", {"group_by": "source"},
                                lambda answer: dict(sorted(answer["group_by"].items()))),
            "count_by_level": ("aggregate", {"group_by": "level"},
                               lambda answer: dict(sorted(answer["group_by"].items()))),
            "top5_tags": ("aggregate", {"top": "tags:5"},
                          lambda answer: [list(pair) for pair in answer["top"]["tags"]]),
            "error_per_minute_1h": ("aggregate", {"q": querytext.format_query(level_error), **hour,
                                                  "interval": _duration_text(p.histogram_interval_ns)},
                                    self._time_histogram),
        }

    def _rows(self, answer: dict[str, Any]) -> list[Any]:
        named: list[tuple[int, Any]] = []
        for log in answer["logs"]:
            ts_ns = parse_timestamp(log["timestamp"])
            key = _row_key(ts_ns, log["source"], log["request_id"], log["message"])
            named.append((ts_ns if ts_ns is not None else -1,
                          self.row_ids.get(key, f"unexpected row {log['timestamp']} {log['message'][:40]!r}")))
        stamps = [ts for ts, _ in named]
        if stamps != sorted(stamps, reverse=True):
            return [record_id for _, record_id in named]  # out of order: compare as is (a mismatch)
        # Equal timestamps: the daemon orders them by its ids, the scan by workload ids.
        named.sort(key=lambda item: (item[0], item[1] if isinstance(item[1], int) else -1), reverse=True)
        return [record_id for _, record_id in named]

    @staticmethod
    def _time_histogram(answer: dict[str, Any]) -> list[list[Any]]:
        return [[parse_timestamp(bucket), count] for bucket, count in answer["time_histogram"]]

    def functions(self) -> dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]]:
        """name -> (the timed call, the converter applied to its last answer)."""
        out = {}
        for name, (op, params, convert) in self.calls.items():
            out[name] = ((lambda op=op, params=params: self.client.call(op, params)),
                         (lambda answer, convert=convert: _whole(answer, convert)))
        return out


def _whole(answer: dict[str, Any], convert: Callable[[Any], Any]) -> Any:
    """``convert(answer)``, or a marker that cannot equal any expected answer when a shard was
    missing from it (a partial answer is never a pass)."""
    if answer.get("partial"):
        return f"partial answer: shards {answer.get('failed_shards')} did not answer"
    return convert(answer)


def shard_request(op: str, params: dict[str, Any], now_ns: int) -> dict[str, Any]:
    """The args the coordinator sends each shard for ``op`` with ``params`` (as
    ``coordinator.service`` builds them), so a shard can be timed on its own."""
    from coordinator.request import parse_aggregate, parse_filter, parse_search

    if op == "query":
        search = parse_search(params, now_ns)
        return {"filter": querywire.to_wire(search.node), "sort": "desc" if search.desc else "asc", "offset": 0,
                "limit": search.offset + search.limit, "after": None, "want_total": True}
    if op == "count":
        node, _ = parse_filter(params, now_ns)
        return {"filter": querywire.to_wire(node)}
    request = parse_aggregate(params, now_ns)
    return {"filter": querywire.to_wire(request.node), "spec": request.spec.to_wire()}


def time_shards_directly(daemon: Daemon, queries: DaemonQueries, repeat: int,
                         budget_s: float) -> dict[str, float | None]:
    """Per query, the slowest shard's median when called on its own socket with the args the
    coordinator would send: the shard's share of the query time (the rest is the coordinator's
    parse, scatter, merge and the second hop).  None where a shard cannot be reached this way."""
    medians: dict[str, float | None] = {}
    sockets = [daemon.data_dir / "run" / f"shard-{shard_id}.sock" for shard_id in range(daemon.shards)]
    if not all(path.exists() for path in sockets):
        return {name: None for name in queries.calls}
    clients = [Client(path, timeout_s=CALL_TIMEOUT_S) for path in sockets]
    try:
        for name, (op, params, _) in queries.calls.items():
            args = shard_request(op, params, time.time_ns())
            slowest: float | None = 0.0
            for client in clients:
                try:
                    timing, _ = report.time_calls(lambda c=client: c.call(op, args), repeat=repeat,
                                                  budget_s=budget_s / len(clients))
                except ShardlogError as exc:
                    _progress(f"[shardlog] {name}: shard called directly failed: {exc}")
                    slowest = None
                    break
                slowest = max(slowest or 0.0, timing.median_ms)
            medians[name] = slowest
    finally:
        for client in clients:
            client.close()
    return medians


def time_daemon_queries(daemon: Daemon, params: QueryParams, row_ids: dict[tuple[Any, ...], int],
                        repeat: int, budget_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The timed queries (timing, converted answer and the slowest shard's own median per name),
    and the timing of ``ping``: the floor every query pays (socket round trip, framing, the
    coordinator's dispatch)."""
    queries: dict[str, Any] = {}
    with Client(daemon.socket_path, timeout_s=CALL_TIMEOUT_S) as client:
        ping, _ = report.time_calls(lambda: client.call("ping"), repeat=max(repeat, 100), budget_s=budget_s)
        daemon_queries = DaemonQueries(client, params, row_ids)
        for name, (call, convert) in daemon_queries.functions().items():
            timing, answer = report.time_calls(call, repeat=repeat, budget_s=budget_s)
            queries[name] = {"timing": timing.to_dict(), "answer": json.loads(json.dumps(convert(answer)))}
            print(f"[shardlog] {name}: median {timing.median_ms:.3f} ms over {timing.runs} runs",
                  file=sys.stderr, flush=True)
        for name, median_ms in time_shards_directly(daemon, daemon_queries, repeat, budget_s).items():
            queries[name]["slowest_shard_median_ms"] = median_ms
    return queries, ping.to_dict()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def run_sqlite(run_dir: Path, args: argparse.Namespace, name: str = "sqlite", repeat: int | None = None,
               ) -> dict[str, Any]:
    """The baseline in its own interpreter: bench_storage's SQLite engine child (store ``run_dir/name``)."""
    out = run_dir / f"result-{name}.json"
    command = [
        sys.executable, "-m", "bench.bench_storage", "--engine", "sqlite",
        "--data", str(run_dir / "records.msgpack"), "--params", str(run_dir / "params.json"),
        "--store", str(run_dir / name), "--out", str(out),
        "--repeat", str(args.repeat if repeat is None else repeat), "--budget", str(args.budget),
    ]
    completed = subprocess.run(command, cwd=report.repo_root(), stdout=sys.stderr,
                               timeout=CHILD_TIMEOUT_S, check=False)
    if completed.returncode != 0 or not out.exists():
        raise RuntimeError(f"sqlite child exited with code {completed.returncode} (its stderr is above)")
    return json.loads(out.read_text())


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_daemon_part(name: str, data_dir: Path, shards: int,
                    work: Callable[[Daemon], dict[str, Any]]) -> dict[str, Any]:
    """Start a daemon, run ``work`` on it, stop it; the result with the tree's memory figures."""
    daemon = Daemon(data_dir, shards)
    _progress(f"[{name}] starting a {shards}-shard daemon on {data_dir}")
    try:
        daemon.start()
        result = work(daemon)
    except BaseException:
        _progress(f"[{name}] failed; daemon log tail:\n{daemon.log_tail()}")
        raise
    finally:
        memory = daemon.stop()
    result.update(memory)
    result["shards"] = shards
    return result


def compare(expected: dict[str, Any], engines: dict[str, dict[str, Any]]) -> list[str]:
    """MISMATCH lines: each engine's answer against the scan."""
    lines = []
    for name in QUERIES:
        for engine, queries in engines.items():
            if name not in queries:
                continue
            answer = queries[name]["answer"]
            if answer != expected[name]:
                lines.append(f"MISMATCH {name}: {engine} answered {_brief(answer)}; "
                             f"a scan of the data gives {_brief(expected[name])}")
    return lines


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 160 else text[:157] + "..."


def summarize_run(meta: dict[str, Any], parts: dict[str, dict[str, Any]], errors: list[str],
                  mismatches: list[str]) -> dict[str, Any]:
    """The one JSON object of ``--json`` (also the source of the text table)."""
    sqlite = parts.get("sqlite")
    http = parts.get("http")
    cli = parts.get("cli")
    one = parts.get("scaling")

    def get(part: dict[str, Any] | None, key: str) -> Any:
        return None if part is None else part.get(key)

    http_ingest = get(http, "ingest")
    rounds = meta.get("ingest_rounds") or {}
    # the median over the ingest rounds (the last round is the sqlite / http part itself)
    sqlite_rate = statistics.median(rounds["sqlite"]) if rounds.get("sqlite") else get(sqlite, "logs_per_s")
    queries = {}
    for name, description in QUERIES.items():
        ours_t = http["queries"][name]["timing"] if http and "queries" in http else None
        base_t = sqlite["queries"][name]["timing"] if sqlite else None
        ours_ms = ours_t["median_ms"] if ours_t else None
        base_ms = base_t["median_ms"] if base_t else None
        met: bool | None = None
        if ours_ms is not None:
            met = ours_ms < TARGET_QUERY_MEDIAN_MS
            if name in MUST_BEAT_SQLITE:
                met = met and base_ms is not None and ours_ms < base_ms
        queries[name] = {"description": description, "shardlog": ours_t, "sqlite": base_t,
                         "ratio": report.ratio(ours_ms, base_ms), "target_met": met,
                         "slowest_shard_median_ms": http["queries"][name].get("slowest_shard_median_ms")
                         if http and "queries" in http else None}
    http_rate = statistics.median(rounds["http"]) if rounds.get("http") else get(http_ingest, "logs_per_s")
    one_rate = get(get(one, "ingest"), "logs_per_s")
    cli_rate = get(get(cli, "ingest"), "logs_per_s")
    ingest_ratio = report.ratio(http_rate, sqlite_rate)
    peak_rss = get(http, "peak_rss_sum_bytes")
    targets = {
        "ingest_ratio_at_least": TARGET_INGEST_RATIO,
        "query_median_ms_under": TARGET_QUERY_MEDIAN_MS,
        "faster_than_sqlite": list(MUST_BEAT_SQLITE),
        "rss_sum_bytes_under": TARGET_RSS_BYTES,
        "ingest_met": None if ingest_ratio is None else ingest_ratio >= TARGET_INGEST_RATIO,
        "queries_met": None if http is None or "queries" not in http else all(
            entry["target_met"] for entry in queries.values()),
        "rss_met": None if peak_rss is None else peak_rss < TARGET_RSS_BYTES,
    }
    return {
        "benchmark": "e2e",
        **meta,
        "parts": {key: {k: v for k, v in value.items() if k != "queries"} for key, value in parts.items()},
        "ingest_ratio": ingest_ratio,
        "sqlite_logs_per_s": sqlite_rate,
        "http_logs_per_s": http_rate,
        "cli_ingest_ratio": report.ratio(cli_rate, sqlite_rate),
        "scaling_2_vs_1_shard": report.ratio(http_rate, one_rate),
        "bytes_ratio": report.ratio(get(http, "bytes_per_log"), get(sqlite, "bytes_per_log")),
        "rss_ratio": report.ratio(peak_rss, get(sqlite, "peak_rss_bytes")),
        "queries": queries,
        "targets": targets,
        "mismatches": mismatches,
        "errors": errors,
    }


def _fmt_float(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _mb(value: float | None) -> str:
    """Bytes as decimal MB (the targets' unit) and MiB."""
    return "n/a" if value is None else f"{value / 1e6:.0f} MB = {report.fmt_bytes(value)}"


def _yes(value: bool | None) -> str:
    return {True: "met", False: "NOT MET", None: "n/a"}[value]


def _cpu_table(title: str, ingest: dict[str, Any]) -> list[str]:
    cpu = ingest["cpu_s"]
    wall_s = ingest["wall_s"]
    rows = [[role, f"{seconds:.1f}", f"{100.0 * seconds / wall_s:.0f}%"]
            for role, seconds in sorted(cpu.items(), key=lambda item: -item[1])]
    rows.append(["total", f"{sum(cpu.values()):.1f}", f"{100.0 * sum(cpu.values()) / wall_s:.0f}%"])
    return ["", f"{title}: CPU over {wall_s:.1f} s of ingest + flush wall time "
                "(% of one core; 2 cores = 200%)",
            report.render_table(["process", "CPU s", "of wall"], rows)]


def render_text(summary: dict[str, Any]) -> str:
    machine = summary["machine"]
    memory = report.fmt_bytes(machine["memory_bytes"]) if machine["memory_bytes"] else "unknown"
    params = summary["params"]
    head = [
        "shardlog end-to-end benchmark: the daemon (coordinator + shards) vs SQLite, same data, same run",
        f"date {summary['date']}  commit {summary['commit']}  N {summary['n']:,}  seed {summary['seed']}  "
        f"batch {summary['batch']}  concurrency {summary['concurrency']}  repeat {summary['repeat']}",
        f"machine {machine['platform']}, {machine['nproc']} CPUs, {memory} RAM, "
        f"Python {machine['python']}, SQLite {machine['sqlite']}; load average at start "
        f"{summary['load_at_start']}",
        f"data: {summary['n']:,} records generated in {summary['generate_s']:.1f} s, from "
        f"{format_timestamp(summary['start_ns'])}; rare token {params['rare_token']!r} "
        f"({params['rare_token_records']} records), common token {params['common_token']!r} "
        f"({params['common_token_fraction']:.0%})",
        f"ingest: HTTP POST /insert/jsonline, {summary['batch']:,} lines per request, "
        f"{summary['concurrency']} requests in flight; CLI: `shardlog ingest FILE` (whole command); "
        f"SQLite: one durable transaction per {summary['batch']:,} records.",
        "ingest time = first request to last ack + final flush (SQLite: + final WAL checkpoint); "
        "each part starts after os.sync().",
        "ratio = shardlog / SQLite.  ingest: higher is better; bytes, RSS, times: lower is better.",
        "",
    ]
    parts = summary["parts"]
    sqlite, http, cli, one = (parts.get(k) or {} for k in ("sqlite", "http", "cli", "scaling"))

    def rate(part: dict[str, Any]) -> float | None:
        return (part.get("ingest") or {}).get("logs_per_s")

    sqlite_rate = summary["sqlite_logs_per_s"]
    rows = [
        ["ingest logs/s, HTTP, 2 shards", report.fmt_count(summary["http_logs_per_s"]),
         report.fmt_count(sqlite_rate), report.fmt_ratio(summary["ingest_ratio"])],
        ["ingest logs/s, CLI, 2 shards", report.fmt_count(rate(cli)), "",
         report.fmt_ratio(summary["cli_ingest_ratio"])],
        ["ingest logs/s, HTTP, 1 shard", report.fmt_count(rate(one)), "",
         report.fmt_ratio(report.ratio(rate(one), sqlite_rate))],
        ["bytes/log on disk", _fmt_float(http.get("bytes_per_log")),
         _fmt_float(sqlite.get("bytes_per_log")), report.fmt_ratio(summary["bytes_ratio"])],
        ["peak RSS, all processes summed", _mb(http.get("peak_rss_sum_bytes")),
         _mb(sqlite.get("peak_rss_bytes")), report.fmt_ratio(summary["rss_ratio"])],
    ]
    table = report.render_table(["", "shardlog", "sqlite", "ratio"], rows)
    lines = head + [table, "", f"scaling: 2 shards / 1 shard ingest rate = "
                               f"{report.fmt_ratio(summary['scaling_2_vs_1_shard'])}"]
    rounds = summary.get("ingest_rounds") or {}
    if len(rounds.get("http") or ()) > 1 or len(rounds.get("sqlite") or ()) > 1:
        lines.append("ingest rounds (logs/s; the rates and ratios above are their medians; CLI and 1 shard "
                     "ran once): " + "; ".join(
                         f"{engine} " + " / ".join(report.fmt_count(r) for r in rates)
                         for engine, rates in (("HTTP, 2 shards", rounds.get("http") or []),
                                               ("SQLite", rounds.get("sqlite") or []))))
    for label, part in (("HTTP, 2 shards", http), ("CLI, 2 shards", cli), ("HTTP, 1 shard", one)):
        if not part:
            continue
        at_stop = part.get("at_stop") or {}
        memory_text = "; ".join(
            f"{role} {report.fmt_bytes(values.get('VmHWM'))} (now anon {report.fmt_bytes(values.get('RssAnon'))}"
            f" + file {report.fmt_bytes(values.get('RssFile'))})" for role, values in sorted(at_stop.items()))
        lines.append(f"  {label}: peak RSS sum {_mb(part.get('peak_rss_sum_bytes'))} "
                     f"(anon {report.fmt_bytes(part.get('peak_rss_anon_sum_bytes'))}, file-backed "
                     f"{report.fmt_bytes(part.get('peak_rss_file_sum_bytes'))}; peaks of each sum) over "
                     f"{part.get('rss_samples', 0)} samples")
        lines.append(f"    VmHWM at stop: {memory_text}")
        ingest = part.get("ingest")
        if ingest:
            lines.append(f"    acked in {ingest['acked_s']:.1f} s + flush {ingest['flush_s']:.2f} s; "
                         f"{ingest['retries']} retried requests (429/503)")
    if http.get("ingest"):
        lines += _cpu_table("HTTP, 2 shards", http["ingest"])
    if one.get("ingest"):
        lines += _cpu_table("HTTP, 1 shard", one["ingest"])
    if cli.get("ingest"):
        lines += _cpu_table("CLI, 2 shards (the CLI process is counted in client)", cli["ingest"])
    qrows = []
    for name, entry in summary["queries"].items():
        o, b = entry["shardlog"] or {}, entry["sqlite"] or {}
        met = {True: "yes", False: "NO", None: "n/a"}[entry["target_met"]]
        qrows.append([
            name, report.fmt_ms(o.get("median_ms")), report.fmt_ms(o.get("p90_ms")),
            report.fmt_ms(o.get("p99_ms")), report.fmt_ms(b.get("median_ms")),
            report.fmt_ms(b.get("p90_ms")), report.fmt_ms(b.get("p99_ms")),
            report.fmt_ratio(entry["ratio"]), met, report.fmt_ms(entry["slowest_shard_median_ms"]),
        ])
    ping = http.get("ping") or {}
    lines += ["", "queries through the daemon: RPC over the unix socket, one persistent client; the "
                  f"floor (ping through the coordinator) is p50 {report.fmt_ms(ping.get('median_ms'))} / "
                  f"p99 {report.fmt_ms(ping.get('p99_ms'))} ms",
              report.render_table(["query (ms)", "ours p50", "p90", "p99", "sqlite p50", "p90", "p99",
                                   "ratio p50", "target", "shard p50"], qrows),
              "shard p50 = the slowest shard's median when called directly on its socket with the "
              "args the coordinator sends (diagnostic; the rest of 'ours' is the coordinator)"]
    targets = summary["targets"]
    lines += [
        "",
        "targets (N = 1,000,000): "
        f"ingest >= {TARGET_INGEST_RATIO}x SQLite: {_yes(targets['ingest_met'])}; "
        f"every query median < {TARGET_QUERY_MEDIAN_MS:g} ms and "
        f"{', '.join(MUST_BEAT_SQLITE)} faster than SQLite: {_yes(targets['queries_met'])}; "
        f"RSS sum < {_mb(TARGET_RSS_BYTES)}: {_yes(targets['rss_met'])} "
        "(not growing with N: compare runs at 1M and 3M)",
        "",
        "queries:",
    ]
    lines += [f"  {name}: {text}" for name, text in QUERIES.items()]
    problems = summary["errors"] + summary["mismatches"]
    lines += [""] + (problems if problems else
                     ["answers: the daemon and SQLite match a scan of the generated data on every query"])
    return "\n".join(lines)


def recent_start_ns(n: int) -> int:
    """A start stamp so the last record (n steps later, plus at most twice the jitter) lands
    ``END_MARGIN_NS`` before now; whole seconds, for a readable header."""
    start_ns = time.time_ns() - n * STEP_NS - 2 * JITTER_NS - END_MARGIN_NS
    return start_ns // 10**9 * 10**9


def prepare_data(args: argparse.Namespace, run_dir: Path, start_ns: int,
                 ) -> tuple[float, QueryParams, dict[str, Any], dict[tuple[Any, ...], int], list[bytes]]:
    """Generate, pick parameters, compute the expected answers, write the SQLite input and the
    JSONL file, and build the HTTP bodies; the records themselves are dropped before returning."""
    started = time.perf_counter()
    records = generate(args.n, seed=args.seed, start_ns=start_ns)
    generate_s = time.perf_counter() - started
    params = query_params(records)
    expected = expected_answers(records, params)
    row_ids = expected_row_keys(records, expected)
    (run_dir / "params.json").write_text(json.dumps(params.to_dict()))
    if "sqlite" in args.parts:
        write_batches(records, run_dir / "records.msgpack", args.batch)
    lines = to_jsonl(records)
    del records
    gc.collect()
    if "cli" in args.parts:
        with open(run_dir / "logs.jsonl", "wb") as out:
            for line in lines:
                out.write(line + b"\n")
    bodies = [b"\n".join(lines[start:start + args.batch]) for start in range(0, len(lines), args.batch)]
    del lines
    gc.collect()
    return generate_s, params, expected, row_ids, bodies


def run(args: argparse.Namespace) -> int:
    base_dir = Path(args.workdir)
    base_dir.mkdir(parents=True, exist_ok=True)
    # Short: the daemon's socket lives in the data dir and unix socket paths are ~107 bytes at most.
    run_dir = Path(tempfile.mkdtemp(prefix="e2e-", dir=base_dir))
    load_at_start = " ".join(f"{value:.2f}" for value in os.getloadavg())
    errors: list[str] = []
    parts: dict[str, dict[str, Any]] = {}
    try:
        start_ns = args.start_ns if args.start_ns is not None else recent_start_ns(args.n)
        generate_s, params, expected, row_ids, bodies = prepare_data(args, run_dir, start_ns)
        _progress(f"generated {args.n:,} records in {generate_s:.1f} s; parts {', '.join(args.parts)} "
                  f"in {run_dir}")

        def attempt(name: str, fn: Callable[[], dict[str, Any]]) -> None:
            report.settle_disk()  # no part pays for the previous one's writeback
            try:
                parts[name] = fn()
            except (RuntimeError, ShardlogError, OSError, subprocess.SubprocessError) as exc:
                errors.append(f"ERROR {name}: {exc}")
                _progress(f"ERROR {name}: {exc}")

        def ingest_only(daemon: Daemon) -> dict[str, Any]:
            return {"ingest": ingest_http(daemon, bodies, args.concurrency, args.n)}

        rounds: dict[str, list[float]] = {"sqlite": [], "http": []}
        if "sqlite" in args.parts and "http" in args.parts:
            for number in range(1, args.ingest_rounds):
                name = f"round{number}"
                attempt(f"sqlite {name}", lambda name=name: run_sqlite(run_dir, args, f"sqlite-{name}", repeat=1))
                attempt(f"http {name}", lambda name=name: run_daemon_part(
                    f"http {name}", run_dir / f"http-{name}", 2, ingest_only))
                for engine, key in (("sqlite", f"sqlite {name}"), ("http", f"http {name}")):
                    part = parts.pop(key, None)
                    rate = None if part is None else (part.get("logs_per_s") if engine == "sqlite"
                                                      else part["ingest"]["logs_per_s"])
                    if engine == "http" and part is not None and part["ingest"]["accepted"] != args.n:
                        errors.append(f"ERROR {key}: {part['ingest']['accepted']:,} of {args.n:,} records accepted")
                    elif rate is not None:
                        rounds[engine].append(rate)
                        _progress(f"[{key}] {rate:,.0f} logs/s")
                for leftover in (run_dir / f"sqlite-{name}", run_dir / f"http-{name}"):
                    shutil.rmtree(leftover, ignore_errors=True)

        if "sqlite" in args.parts:
            attempt("sqlite", lambda: run_sqlite(run_dir, args))

        def http_work(daemon: Daemon) -> dict[str, Any]:
            ingest = ingest_http(daemon, bodies, args.concurrency, args.n)
            _progress(f"[http] ingested {ingest['accepted']:,} in {ingest['ingest_s']:.1f} s "
                      f"({ingest['logs_per_s']:,.0f} logs/s)")
            bytes_on_disk = report.allocated_bytes(daemon.data_dir)
            queries, ping = time_daemon_queries(daemon, params, row_ids, args.repeat, args.budget)
            return {"ingest": ingest, "bytes_on_disk": bytes_on_disk, "bytes_per_log": bytes_on_disk / args.n,
                    "queries": queries, "ping": ping}

        def cli_work(daemon: Daemon) -> dict[str, Any]:
            return {"ingest": ingest_cli(daemon, run_dir / "logs.jsonl", args.n)}

        for name, shards, work in (("http", 2, http_work), ("cli", 2, cli_work), ("scaling", 1, ingest_only)):
            if name in args.parts:
                attempt(name, lambda name=name, shards=shards, work=work: run_daemon_part(
                    name, run_dir / name, shards, work))
                if name in parts and "ingest" in parts[name]:
                    ingest = parts[name]["ingest"]
                    _progress(f"[{name}] {ingest['logs_per_s']:,.0f} logs/s; peak RSS sum "
                              f"{report.fmt_bytes(parts[name].get('peak_rss_sum_bytes'))}")
                    if ingest["accepted"] != args.n or ingest["rejected"]:
                        errors.append(f"ERROR {name}: {ingest['accepted']:,} of {args.n:,} records accepted, "
                                      f"{ingest['rejected']} rejected (first: {ingest['first_rejections']})")
                if name in parts and parts[name].get("stop_error"):
                    errors.append(f"ERROR {name}: {parts[name]['stop_error']}")

        if "sqlite" in parts and parts["sqlite"].get("logs_per_s") is not None:
            rounds["sqlite"].append(parts["sqlite"]["logs_per_s"])
        if "http" in parts and "ingest" in parts["http"]:
            rounds["http"].append(parts["http"]["ingest"]["logs_per_s"])
        answers = {name: part["queries"] for name, part in (("shardlog", parts.get("http")),
                                                             ("sqlite", parts.get("sqlite")))
                   if part and "queries" in part}
        mismatches = compare(expected, answers)
        meta = {
            "date": report.utc_now_iso(),
            "commit": report.git_commit(report.repo_root()),
            "machine": report.machine_info(),
            "load_at_start": load_at_start,
            "n": args.n,
            "seed": args.seed,
            "start_ns": start_ns,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "repeat": args.repeat,
            "generate_s": generate_s,
            "params": params.to_dict(),
            "ingest_rounds": rounds,
        }
        summary = summarize_run(meta, parts, errors, mismatches)
        print(json.dumps(summary) if args.json else render_text(summary))
        for line in errors + mismatches:  # loud on stderr too, even with --json
            print(line, file=sys.stderr)
        return 1 if errors or mismatches else 0
    finally:
        if args.keep:
            _progress(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_e2e",
        description="The shardlog daemon end to end vs SQLite on the same generated logs.",
    )
    parser.add_argument("--n", type=int, default=100_000, help="records to generate")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start-ns", type=int, default=None,
                        help="event time of the first record (default: the data ends a minute ago)")
    parser.add_argument("--batch", type=int, default=5000,
                        help="lines per HTTP request = records per SQLite transaction")
    parser.add_argument("--concurrency", type=int, default=4, help="HTTP requests in flight")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per query (after a warm-up)")
    parser.add_argument("--ingest-rounds", type=int, default=3,
                        help="SQLite and HTTP ingests of the same data; their medians are reported")
    parser.add_argument("--budget", type=float, default=report.DEFAULT_BUDGET_S,
                        help="seconds of timed runs per query at most (fewer runs for a slow query)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma list of parts to run, of {', '.join(PARTS)}")
    parser.add_argument("--workdir", default="/tmp",
                        help="where the run directory is created: a real disk (not tmpfs) with a "
                             "short path (the daemon's unix socket lives there)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    args = parser.parse_args(argv)
    if args.n < 1000:
        parser.error(f"--n is {args.n}; it must be >= 1000 so the query parameters exist")
    if not 1 <= args.batch <= 100_000:
        parser.error(f"--batch is {args.batch}; it must be from 1 to 100000 (the daemon's max_batch_records)")
    if args.concurrency < 1:
        parser.error(f"--concurrency is {args.concurrency}; it must be >= 1")
    if args.repeat < 1:
        parser.error(f"--repeat is {args.repeat}; it must be >= 1")
    if args.ingest_rounds < 1:
        parser.error(f"--ingest-rounds is {args.ingest_rounds}; it must be >= 1 (1: one ingest per engine)")
    args.parts = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in args.parts if name not in PARTS]
    if unknown or not args.parts:
        parser.error(f"--parts has {', '.join(unknown) or 'nothing'}; give a comma list of {', '.join(PARTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
