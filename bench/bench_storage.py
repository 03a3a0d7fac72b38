"""Storage benchmark: one shardlog store vs SQLite on the same generated logs, in the same run.

    python -m bench.bench_storage --n 1000000 [--json] [--seed 1] [--batch 1000] [--repeat 30]
                                  [--workdir DIR] [--engines shardlog,sqlite] [--keep]

The parent generates the records once (``bench.workload``), computes the expected answers by a
plain scan, writes the records to a msgpack file and runs each engine in its own interpreter
(``python -m bench.bench_storage --engine NAME ...``), so each engine's peak RSS is its own and
holds one batch of input, not the whole data set.  A child ingests batch by batch (durable: each
call returns after a synced commit), seals / checkpoints, measures allocated bytes on disk, then
times every query of ``workload.QUERIES`` (warm-up, then ``--repeat`` runs) on the open store.

Only the engine calls are timed: reading and decoding the input file is not.  Ingest time
includes the final ``flush()`` (shardlog seals its tail into blocks) and the final WAL
checkpoint (SQLite folds its WAL into the database file).

Every answer is compared with the oracle and between engines; a difference prints a line
starting with ``MISMATCH`` and makes the exit code 1.  Ratios are ours ÷ SQLite's: for ingest
rate higher is better, for bytes, RSS and query times lower is better.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import msgpack

from bench import report
from bench.sqlite_baseline import SqliteBaseline
from bench.workload import (
    DEFAULT_START_NS,
    QUERIES,
    QueryParams,
    Record,
    expected_answers,
    generate,
    query_params,
)

ENGINES = ("shardlog", "sqlite")
OURS = "shardlog"
BASELINE = "sqlite"

#: Targets at N = 1,000,000 (the issue): ours ÷ SQLite.
TARGET_INGEST_RATIO = 1.3
TARGET_BYTES_RATIO = 0.5
#: A query passes when it is no slower than SQLite's or its median is under this.
TARGET_QUERY_FLOOR_MS = 2.0

#: Each child must finish within this (a hung engine must not hang the run).
CHILD_TIMEOUT_S = 3600


# ---------------------------------------------------------------------------------------------
# Engines: the same small surface over shardlog and SQLite
# ---------------------------------------------------------------------------------------------


class Engine(Protocol):
    def ingest(self, records: list[Record]) -> None: ...
    def finish_ingest(self) -> None: ...
    def bytes_on_disk(self) -> int: ...
    def queries(self, params: QueryParams) -> dict[str, Callable[[], Any]]: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


def _ids(rows: Sequence[Record]) -> list[int]:
    return [row["id"] for row in rows]


class SqliteEngine:
    def __init__(self, directory: Path) -> None:
        self.db = SqliteBaseline(directory)

    def ingest(self, records: list[Record]) -> None:
        self.db.ingest(records)

    def finish_ingest(self) -> None:
        self.db.finish_ingest()

    def bytes_on_disk(self) -> int:
        return self.db.bytes_on_disk()

    def queries(self, p: QueryParams) -> dict[str, Callable[[], Any]]:
        db = self.db
        return {
            "rare_token": lambda: _ids(db.search(token=p.rare_token, limit=100)),
            "common_error": lambda: _ids(db.search(token=p.common_token, level="ERROR", limit=100)),
            "warn_count_1h": lambda: db.count(level="WARN", from_ns=p.hour_from_ns, to_ns=p.hour_to_ns),
            "source_page2_6h": lambda: _ids(db.search(
                source=p.page_source, from_ns=p.six_hours_from_ns, to_ns=p.six_hours_to_ns,
                offset=p.page_offset, limit=p.page_limit,
            )),
            "count_by_source": lambda: db.count_by("source"),
            "count_by_level": lambda: db.count_by("level"),
            "top5_tags": lambda: [[tag, count] for tag, count in db.top_tags(5)],
            "error_per_minute_1h": lambda: [[b, c] for b, c in db.histogram(
                p.histogram_interval_ns, level="ERROR", from_ns=p.hour_from_ns, to_ns=p.hour_to_ns,
            )],
        }

    def stats(self) -> dict[str, Any]:
        return {"sqlite_version": sqlite3.sqlite_version}

    def close(self) -> None:
        self.db.close()


class ShardlogEngine:
    def __init__(self, directory: Path) -> None:
        # Imported here so the SQLite child never loads LMDB (and the parent never needs it).
        from storage import query as q
        from storage.aggregate import AggSpec, finalize, from_wire
        from storage.gctune import tune_gc
        from storage.store import Store

        tune_gc()  # as the shard process (shardd) runs the store
        self.q = q
        self.AggSpec = AggSpec
        self.finalize = finalize
        self.from_wire = from_wire
        self.store = Store.open(directory)
        self.directory = directory

    def ingest(self, records: list[Record]) -> None:
        self.store.ingest(records)

    def finish_ingest(self) -> None:
        self.store.flush()

    def bytes_on_disk(self) -> int:
        return report.allocated_bytes(self.directory)

    def queries(self, p: QueryParams) -> dict[str, Callable[[], Any]]:
        q, store, finalize, from_wire = self.q, self.store, self.finalize, self.from_wire
        hour = q.TimeRange(p.hour_from_ns, p.hour_to_ns)
        six_hours = q.TimeRange(p.six_hours_from_ns, p.six_hours_to_ns)
        by_source = self.AggSpec(group_by="source")
        by_level = self.AggSpec(group_by="level")
        top_tags = self.AggSpec(top=(("tags", 5),))
        per_minute = self.AggSpec(interval_ns=p.histogram_interval_ns)
        rare = q.Token(p.rare_token)
        common_error = q.And((q.Token(p.common_token), q.Field("level", "ERROR")))
        warn_hour = q.And((q.Field("level", "WARN"), hour))
        source_window = q.And((q.Field("source", p.page_source), six_hours))
        error_hour = q.And((q.Field("level", "ERROR"), hour))
        everything = q.MatchAll()

        def aggregate(node: Any, spec: Any) -> dict[str, Any]:
            # Store.aggregate returns the partial in wire form (what a shard sends); decoding
            # and finalizing it is the work the coordinator adds, so it is timed too.
            return finalize(from_wire(store.aggregate(node, spec)), spec)

        # want_total=False: the SQL returns only the page, so ours must not count every match.
        return {
            "rare_token": lambda: _ids(store.query(rare, sort="desc", limit=100, want_total=False)["rows"]),
            "common_error": lambda: _ids(store.query(common_error, sort="desc", limit=100, want_total=False)["rows"]),
            "warn_count_1h": lambda: store.count(warn_hour),
            "source_page2_6h": lambda: _ids(store.query(
                source_window, sort="desc", offset=p.page_offset, limit=p.page_limit, want_total=False,
            )["rows"]),
            "count_by_source": lambda: aggregate(everything, by_source)["group_by"],
            "count_by_level": lambda: aggregate(everything, by_level)["group_by"],
            "top5_tags": lambda: [list(pair) for pair in aggregate(everything, top_tags)["top"]["tags"]],
            "error_per_minute_1h": lambda: [
                list(pair) for pair in aggregate(error_hour, per_minute)["time_histogram"]
            ],
        }

    def stats(self) -> dict[str, Any]:
        return dict(self.store.stats())

    def close(self) -> None:
        self.store.close()


def open_engine(name: str, directory: Path) -> Engine:
    if name == "sqlite":
        return SqliteEngine(directory)
    if name == "shardlog":
        return ShardlogEngine(directory)
    raise ValueError(f"engine is {name!r}; it must be one of {', '.join(ENGINES)}")


# ---------------------------------------------------------------------------------------------
# Child: one engine, one process
# ---------------------------------------------------------------------------------------------


def write_batches(records: Sequence[Record], path: Path, batch: int) -> None:
    """Write ``records`` as one msgpack array per batch of ``batch`` records."""
    with open(path, "wb") as out:
        packer = msgpack.Packer()
        for start in range(0, len(records), batch):
            out.write(packer.pack(list(records[start:start + batch])))


def read_batches(path: Path) -> Iterator[list[Record]]:
    with open(path, "rb") as data:
        yield from msgpack.Unpacker(data, raw=False, max_buffer_size=1 << 30)


def _normalize(answer: Any) -> Any:
    """JSON round trip, so the child's answers compare with the parent's oracle exactly
    (tuples become lists, dict keys strings)."""
    return json.loads(json.dumps(answer))


def run_engine(args: argparse.Namespace) -> int:
    """The child: ingest ``--data`` into a fresh store, time the queries, write ``--out``."""
    params = QueryParams.from_dict(json.loads(Path(args.params).read_text()))
    rss_at_start = report.peak_rss_bytes()
    engine = open_engine(args.engine, Path(args.store))
    ingest_s = 0.0
    records = 0
    wall_started = time.perf_counter()
    for batch in read_batches(Path(args.data)):
        started = time.perf_counter()
        engine.ingest(batch)
        ingest_s += time.perf_counter() - started
        records += len(batch)
    started = time.perf_counter()
    engine.finish_ingest()
    finish_s = time.perf_counter() - started
    ingest_s += finish_s
    ingest_wall_s = time.perf_counter() - wall_started
    bytes_on_disk = engine.bytes_on_disk()
    print(f"[{args.engine}] ingested {records:,} records in {ingest_s:.1f} s "
          f"({records / ingest_s:,.0f} logs/s); {bytes_on_disk / max(records, 1):.1f} bytes/log",
          file=sys.stderr, flush=True)

    queries: dict[str, Any] = {}
    for name, fn in engine.queries(params).items():
        timing, answer = report.time_calls(fn, repeat=args.repeat, budget_s=args.budget)
        queries[name] = {"timing": timing.to_dict(), "answer": _normalize(answer)}
        print(f"[{args.engine}] {name}: median {timing.median_ms:.3f} ms over {timing.runs} runs",
              file=sys.stderr, flush=True)
    result = {
        "engine": args.engine,
        "records": records,
        "ingest_s": ingest_s,
        "finish_ingest_s": finish_s,
        "ingest_wall_s": ingest_wall_s,
        "logs_per_s": records / ingest_s if ingest_s > 0 else None,
        "bytes_on_disk": bytes_on_disk,
        "bytes_per_log": bytes_on_disk / records if records else None,
        "rss_at_start_bytes": rss_at_start,
        "peak_rss_bytes": report.peak_rss_bytes(),
        "engine_stats": _normalize(engine.stats()),
        "queries": queries,
    }
    engine.close()
    Path(args.out).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------
# Parent: generate, run children, compare, report
# ---------------------------------------------------------------------------------------------


def _run_child(engine: str, run_dir: Path, args: argparse.Namespace) -> dict[str, Any] | str:
    """Run one engine's child; its result, or an error line when it failed."""
    out = run_dir / f"result-{engine}.json"
    command = [
        sys.executable, "-m", "bench.bench_storage", "--engine", engine,
        "--data", str(run_dir / "records.msgpack"), "--params", str(run_dir / "params.json"),
        "--store", str(run_dir / f"store-{engine}"), "--out", str(out),
        "--repeat", str(args.repeat), "--budget", str(args.budget),
    ]
    # The child's progress goes to our stderr as it happens; stdout stays clean for --json.
    completed = subprocess.run(command, cwd=report.repo_root(), stdout=sys.stderr,
                               timeout=CHILD_TIMEOUT_S, check=False)
    if completed.returncode != 0 or not out.exists():
        return f"{engine} child exited with code {completed.returncode} (its stderr is above)"
    return json.loads(out.read_text())


def compare(expected: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[str]:
    """MISMATCH lines: every engine's answer against the oracle (so two engines that both match
    it agree with each other).  When every engine differs from the oracle the same way, a line
    says so: then the oracle or the query parameters are the suspects."""
    lines = []
    for name in QUERIES:
        answers = {engine: result["queries"][name]["answer"] for engine, result in results.items()}
        wrong = {engine: answer for engine, answer in answers.items() if answer != expected[name]}
        for engine, answer in wrong.items():
            lines.append(f"MISMATCH {name}: {engine} answered {_brief(answer)}; "
                         f"a scan of the data gives {_brief(expected[name])}")
        values = list(wrong.values())
        if len(wrong) == len(answers) > 1 and all(v == values[0] for v in values):
            lines.append(f"MISMATCH {name}: every engine gives the same answer; check the scan "
                         "(workload.expected_answers)")
    return lines


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _query_passes(ours_ms: float | None, sqlite_ms: float | None) -> bool | None:
    if ours_ms is None or sqlite_ms is None:
        return None
    return ours_ms <= sqlite_ms or ours_ms < TARGET_QUERY_FLOOR_MS


def summarize_run(meta: dict[str, Any], results: dict[str, dict[str, Any]],
                  errors: list[str], mismatches: list[str]) -> dict[str, Any]:
    """The one JSON object of ``--json`` (also the source of the text table)."""
    ours = results.get(OURS)
    base = results.get(BASELINE)

    def field(result: dict[str, Any] | None, key: str) -> Any:
        return None if result is None else result.get(key)

    queries = {}
    for name, description in QUERIES.items():
        ours_t = ours["queries"][name]["timing"] if ours else None
        base_t = base["queries"][name]["timing"] if base else None
        ours_ms = ours_t["median_ms"] if ours_t else None
        base_ms = base_t["median_ms"] if base_t else None
        queries[name] = {
            "description": description,
            OURS: ours_t,
            BASELINE: base_t,
            "ratio": report.ratio(ours_ms, base_ms),
            "target_met": _query_passes(ours_ms, base_ms),
        }
    ingest_ratio = report.ratio(field(ours, "logs_per_s"), field(base, "logs_per_s"))
    bytes_ratio = report.ratio(field(ours, "bytes_per_log"), field(base, "bytes_per_log"))
    targets = {
        "ingest_ratio_at_least": TARGET_INGEST_RATIO,
        "bytes_ratio_at_most": TARGET_BYTES_RATIO,
        "query_ratio_at_most_1_or_median_ms_under": TARGET_QUERY_FLOOR_MS,
        "ingest_met": None if ingest_ratio is None else ingest_ratio >= TARGET_INGEST_RATIO,
        "bytes_met": None if bytes_ratio is None else bytes_ratio <= TARGET_BYTES_RATIO,
        "queries_met": None if not (ours and base) else all(
            q["target_met"] for q in queries.values()),
    }
    engines = {
        name: {key: value for key, value in result.items() if key != "queries"}
        for name, result in results.items()
    }
    return {
        "benchmark": "storage",
        **meta,
        "engines": engines,
        "ingest_ratio": ingest_ratio,
        "bytes_ratio": bytes_ratio,
        "rss_ratio": report.ratio(field(ours, "peak_rss_bytes"), field(base, "peak_rss_bytes")),
        "queries": queries,
        "targets": targets,
        "mismatches": mismatches,
        "errors": errors,
    }


def render_text(summary: dict[str, Any]) -> str:
    machine = summary["machine"]
    memory = report.fmt_bytes(machine["memory_bytes"]) if machine["memory_bytes"] else "unknown"
    head = [
        "shardlog storage benchmark: one store vs SQLite, same data, same run",
        f"date {summary['date']}  commit {summary['commit']}  N {summary['n']:,}  "
        f"seed {summary['seed']}  batch {summary['batch']}  repeat {summary['repeat']}",
        f"machine {machine['platform']}, {machine['nproc']} CPUs, {memory} RAM, "
        f"Python {machine['python']}, SQLite {machine['sqlite']}",
        f"data: {summary['n']:,} records generated in {summary['generate_s']:.1f} s; "
        f"rare token {summary['params']['rare_token']!r} "
        f"({summary['params']['rare_token_records']} records), common token "
        f"{summary['params']['common_token']!r} ({summary['params']['common_token_fraction']:.0%})",
        "ratio = shardlog / SQLite.  ingest: higher is better; bytes, RSS, times: lower is better.",
        "bytes = allocated on disk (st_blocks * 512) after the final flush / WAL checkpoint.  "
        "Each engine starts after os.sync().",
        "",
    ]
    engines = summary["engines"]
    ours, base = engines.get(OURS, {}), engines.get(BASELINE, {})
    rows = [
        ["ingest logs/s (durable)", report.fmt_count(ours.get("logs_per_s")),
         report.fmt_count(base.get("logs_per_s")), report.fmt_ratio(summary["ingest_ratio"])],
        ["bytes/log on disk", _fmt_float(ours.get("bytes_per_log")),
         _fmt_float(base.get("bytes_per_log")), report.fmt_ratio(summary["bytes_ratio"])],
        ["peak RSS", report.fmt_bytes(ours.get("peak_rss_bytes")),
         report.fmt_bytes(base.get("peak_rss_bytes")), report.fmt_ratio(summary["rss_ratio"])],
        # The interpreter and imports alone, so the engine's own share of the peak is visible.
        ["  of which at start", report.fmt_bytes(ours.get("rss_at_start_bytes")),
         report.fmt_bytes(base.get("rss_at_start_bytes")), ""],
    ]
    table = report.render_table(["", OURS, BASELINE, "ratio"], rows)
    qrows = []
    for name, entry in summary["queries"].items():
        o, b = entry[OURS] or {}, entry[BASELINE] or {}
        met = {True: "yes", False: "NO", None: "n/a"}[entry["target_met"]]
        qrows.append([
            name,
            report.fmt_ms(o.get("median_ms")), report.fmt_ms(o.get("p90_ms")),
            report.fmt_ms(o.get("p99_ms")),
            report.fmt_ms(b.get("median_ms")), report.fmt_ms(b.get("p90_ms")),
            report.fmt_ms(b.get("p99_ms")),
            report.fmt_ratio(entry["ratio"]), met,
        ])
    qtable = report.render_table(
        ["query (ms)", "ours p50", "p90", "p99", "sqlite p50", "p90", "p99", "ratio p50", "target"],
        qrows,
    )
    targets = summary["targets"]
    verdict = [
        "",
        "targets (N = 1,000,000): "
        f"ingest >= {TARGET_INGEST_RATIO}x: {_yes(targets['ingest_met'])}; "
        f"bytes <= {TARGET_BYTES_RATIO}x: {_yes(targets['bytes_met'])}; "
        f"every query <= 1.0x or < {TARGET_QUERY_FLOOR_MS:g} ms: {_yes(targets['queries_met'])}",
    ]
    descriptions = ["", "queries:"] + [f"  {name}: {text}" for name, text in QUERIES.items()]
    tail = [""] + summary["errors"] + summary["mismatches"] if (
        summary["errors"] or summary["mismatches"]) else ["", "answers: every engine run matches a scan "
                                                          "of the generated data on every query"]
    return "\n".join(head + [table, "", qtable] + verdict + descriptions + tail)


def _fmt_float(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _yes(value: bool | None) -> str:
    return {True: "met", False: "NOT MET", None: "n/a"}[value]


def run_parent(args: argparse.Namespace) -> int:
    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    for name in engines:
        if name not in ENGINES:
            print(f"--engines has {name!r}; it must be a comma list of {', '.join(ENGINES)}",
                  file=sys.stderr)
            return 2
    base_dir = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir())
    base_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=base_dir))
    try:
        started = time.perf_counter()
        records = generate(args.n, seed=args.seed, start_ns=args.start_ns)
        generate_s = time.perf_counter() - started
        params = query_params(records)
        expected = expected_answers(records, params)
        (run_dir / "params.json").write_text(json.dumps(params.to_dict()))
        write_batches(records, run_dir / "records.msgpack", args.batch)
        del records
        gc.collect()
        print(f"generated {args.n:,} records in {generate_s:.1f} s; running "
              f"{', '.join(engines)} in {run_dir}", file=sys.stderr, flush=True)

        results: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        for engine in engines:
            report.settle_disk()
            outcome = _run_child(engine, run_dir, args)
            if isinstance(outcome, str):
                errors.append(f"ERROR {outcome}")
            else:
                results[engine] = outcome
        mismatches = compare(expected, results)
        meta = {
            "date": report.utc_now_iso(),
            "commit": report.git_commit(report.repo_root()),
            "machine": report.machine_info(),
            "n": args.n,
            "seed": args.seed,
            "batch": args.batch,
            "repeat": args.repeat,
            "generate_s": generate_s,
            "params": params.to_dict(),
        }
        summary = summarize_run(meta, results, errors, mismatches)
        if args.json:
            print(json.dumps(summary, indent=None))
        else:
            print(render_text(summary))
        for line in errors + mismatches:  # loud on stderr too, even with --json
            print(line, file=sys.stderr)
        return 1 if errors or mismatches else 0
    finally:
        if args.keep:
            print(f"kept {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_storage",
        description="shardlog storage engine vs SQLite on the same generated logs.",
    )
    parser.add_argument("--n", type=int, default=100_000, help="records to generate")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start-ns", type=int, default=DEFAULT_START_NS,
                        help="event time of the first record, ns since the epoch")
    parser.add_argument("--batch", type=int, default=1000, help="records per ingest call / transaction")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per query (after a warm-up)")
    parser.add_argument("--budget", type=float, default=report.DEFAULT_BUDGET_S,
                        help="seconds of timed runs per query at most (fewer runs for a slow query)")
    parser.add_argument("--workdir", help="where to create the run directory (default: the temp dir)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma list of engines to run")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    # Internal: the child process of one engine.
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n < 1000:
        parser.error(f"--n is {args.n}; it must be >= 1000 so the query parameters exist")
    if args.batch < 1:
        parser.error(f"--batch is {args.batch}; it must be >= 1")
    if args.repeat < 1:
        parser.error(f"--repeat is {args.repeat}; it must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine:
        return run_engine(args)
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
