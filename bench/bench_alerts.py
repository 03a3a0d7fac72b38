"""Alerting cost on ingest: the daemon's ingest throughput with 0, 10 and 100 active alert rules.

    python -m bench.bench_alerts --n 200000 [--repeat 3] [--json] [--seed 1] [--batch 5000]
                                 [--concurrency 4] [--rules 0,10,100] [--profile DIR] [--workdir /tmp]

This module owns the alerting benchmark.  It guarantees:

- The same workload as the other benchmarks (``bench.workload``), stamped so the data ends a
  minute before now, so the rules' windows (5–15 min of event time) really hold the logs and rules
  really fire (and persist their alerts) during the run, as they would in production.
- Realistic rules from the workload's own vocabulary (``realistic_rules``): level rules, source
  rules, message-token and phrase rules, tag rules, metadata rules and combinations, a quarter of
  them with ``group_by`` (source, level, host, status); deterministic by seed, and the first 10
  rules are the 10-rule set.
- Each measured run starts a fresh 2-shard daemon on a fresh data dir (a store's size changes its
  ingest rate), adds the rules over RPC, ingests every record over HTTP (``POST /insert/jsonline``,
  ``--batch`` lines per request, ``--concurrency`` in flight), flushes, and stops.  Runs of the
  rule counts are interleaved (0, 10, 100, 100, 10, 0, ...) so a drift of the shared machine hits
  every count alike; the median of ``--repeat`` runs per count is compared with the 0-rule median
  of the same invocation.
- Reported: logs/s, the ratio to 0 rules, the cost (1 - ratio; target: 100 rules under 30 %), CPU
  seconds per process role, alerts fired.  ``--profile DIR`` runs py-spy on every shard and the
  coordinator during one extra run with the most rules and writes the hottest functions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from bench import report
from bench.bench_e2e import Daemon, _progress, ingest_http, process_tree, recent_start_ns
from bench.workload import SOURCES, TAGS, generate, to_jsonl
from shardd.client import Client

#: the issue's target: 100 active rules cost under 30 % of the ingest rate
TARGET_COST_100 = 0.30
DEFAULT_RULE_COUNTS = (0, 10, 100)
CALL_TIMEOUT_S = 120.0

# message words and phrases that the workload's templates write (bench/workload.py _TEMPLATES)
_TOKENS = ("timeout", "refused", "deadlock", "panic", "declined", "nullpointerexception", "traceback",
           "segmentation", "expired", "exceeded", "retrying", "slow", "unhandled", "memory", "failed")
_PHRASES = ("connection refused", "rate limit exceeded", "certificate expired", "out of memory",
            "circuit breaker", "authentication failed", "database timeout", "disk usage")
_GROUP_BY = ("source", "level", "host", "status")


def realistic_rules(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """``count`` alert rules as operators write them for this workload (see the module docstring)."""
    rng = random.Random(seed)
    shapes = [
        lambda: "level:ERROR",
        lambda: "level:FATAL",
        lambda: "level:>=WARN",
        lambda: f"source:{rng.choice(SOURCES)} level:ERROR",
        lambda: f"source:{rng.choice(SOURCES)}",
        lambda: rng.choice(_TOKENS),
        lambda: f"level:ERROR {rng.choice(_TOKENS)}",
        lambda: f'"{rng.choice(_PHRASES)}"',
        lambda: f"tag:{rng.choice(TAGS)} level:>=WARN",
        lambda: f"status:{rng.choice((500, 502, 503, 504, 429))}",
        lambda: f"source:{rng.choice(SOURCES)} {rng.choice(_TOKENS)}",
        lambda: f"{rng.choice(_TOKENS)} OR {rng.choice(_TOKENS)}",
    ]
    rules = []
    for i in range(count):
        rule: dict[str, Any] = {
            "name": f"bench-rule-{i:03d}",
            "query": shapes[i % len(shapes)](),
            "threshold": rng.choice((10, 50, 100, 500, 1000, 5000)),
            "window": rng.choice(("5m", "10m", "15m")),
            "cooldown": rng.choice(("1m", "10m")),
            "severity": rng.choice(("low", "medium", "high", "critical")),
        }
        if i % 4 == 3:
            rule["group_by"] = rng.choice(_GROUP_BY)
        rules.append(rule)
    return rules


def run_once(run_dir: Path, rules: list[dict[str, Any]], bodies: list[bytes], args: argparse.Namespace,
             label: str, profile_dir: Path | None = None) -> dict[str, Any]:
    """One daemon run: start, add ``rules``, ingest ``bodies`` over HTTP, flush, stop."""
    report.settle_disk()  # no run pays for the previous one's writeback
    daemon = Daemon(run_dir / label, 2)
    profilers: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        daemon.start()
        with Client(daemon.socket_path, timeout_s=CALL_TIMEOUT_S) as client:
            for rule in rules:
                client.call("alerts_add", {"rule": rule, "replace": True})
        if profile_dir is not None:
            profilers = start_profilers(daemon, profile_dir)
        result = ingest_http(daemon, bodies, args.concurrency, args.n)
        with Client(daemon.socket_path, timeout_s=CALL_TIMEOUT_S) as client:
            history = client.call("alerts_history", {"limit": 100_000})["alerts"]
        result["alerts_fired"] = len(history)
        result["alerts_by_rule"] = dict(Counter(a["rule"] for a in history).most_common(5))
    except BaseException:
        _progress(f"[{label}] failed; daemon log tail:\n{daemon.log_tail()}")
        raise
    finally:
        stop_profilers(profilers)
        memory = daemon.stop()
    result["peak_rss_sum_bytes"] = memory.get("peak_rss_sum_bytes")
    return result


# --- profiling ----------------------------------------------------------------------------------------


def start_profilers(daemon: Daemon, out_dir: Path) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    """py-spy on the coordinator and each shard (collapsed stacks, GIL-holding samples only)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out_dir.mkdir(parents=True, exist_ok=True)
    assert daemon.process is not None
    started = []
    for pid in process_tree(daemon.process.pid):
        role = "coordinator" if pid == daemon.process.pid else f"shard-{pid}"
        path = out_dir / f"{role}.collapsed.txt"
        process = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(path),
                                    "--rate", "200", "--nonblocking"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        started.append((role, process, path))
    time.sleep(1.0)  # py-spy attaches before the ingest starts (a one-off wait, not a test)
    return started


def stop_profilers(profilers: list[tuple[str, subprocess.Popen[bytes], Path]]) -> None:
    import signal

    for _, process, _ in profilers:
        process.send_signal(signal.SIGINT)
    for _, process, _ in profilers:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def share(path: Path, function: str) -> float:
    """% of a collapsed-stack file's samples with ``function`` (e.g. "RuleSet.count") on the stack."""
    samples = inside = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if count_text.isdigit():
            samples += int(count_text)
            if any(frame.startswith(function + " ") for frame in stack.split(";")):
                inside += int(count_text)
    return 100 * inside / samples if samples else 0.0


def hottest(path: Path, top: int = 15) -> list[tuple[str, float, float]]:
    """``(function, self %, total %)`` of a py-spy collapsed-stack file, hottest self time first;
    total = samples with the function anywhere on the stack."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        # "matches (storage/query.py:1089)" -> "matches (storage/query.py)": one function, every line
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        samples += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    if not samples:
        return []
    return [(frame, 100 * n / samples, 100 * total_counts[frame] / samples)
            for frame, n in self_counts.most_common(top)]


# --- the run -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    base_dir = Path(args.workdir)
    base_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="alb-", dir=base_dir))
    load_at_start = " ".join(f"{value:.2f}" for value in os.getloadavg())
    try:
        start_ns = recent_start_ns(args.n)
        generated = time.perf_counter()
        lines = to_jsonl(generate(args.n, seed=args.seed, start_ns=start_ns))
        bodies = [b"\n".join(lines[i:i + args.batch]) for i in range(0, len(lines), args.batch)]
        del lines
        gc.collect()
        generate_s = time.perf_counter() - generated
        all_rules = realistic_rules(max(args.rules), args.seed)
        _progress(f"generated {args.n:,} records in {generate_s:.1f} s; rule counts {args.rules}, "
                  f"{args.repeat} runs each, in {run_dir}")
        order: list[int] = []
        for i in range(args.repeat):
            order += list(args.rules) if i % 2 == 0 else list(reversed(args.rules))
        runs: dict[int, list[dict[str, Any]]] = {count: [] for count in args.rules}
        # a discarded warm-up: the first daemon of a run pays for cold caches (imports, page cache)
        run_once(run_dir, [], bodies[:max(1, len(bodies) // 10)], args, "warm-up")
        for number, count in enumerate(order):
            result = run_once(run_dir, all_rules[:count], bodies, args, f"r{number}-{count}")
            if result["accepted"] != args.n:
                raise RuntimeError(f"{count} rules: {result['accepted']:,} of {args.n:,} accepted "
                                   f"(first rejections: {result['first_rejections']})")
            runs[count].append(result)
            _progress(f"[{count:>3} rules] {result['logs_per_s']:,.0f} logs/s, {result['alerts_fired']} alerts fired")
        profile: dict[str, Any] | None = None
        if args.profile:
            count = max(args.rules)
            profile_dir = Path(args.profile)
            _progress(f"profiling one more run with {count} rules into {profile_dir}")
            result = run_once(run_dir, all_rules[:count], bodies, args, "profile", profile_dir)
            paths = sorted(profile_dir.glob("*.collapsed.txt"))
            profile = {"logs_per_s": result["logs_per_s"],
                       "roles": {path.name.split(".")[0]: hottest(path) for path in paths},
                       "rule_count_share": {path.name.split(".")[0]: share(path, "RuleSet.count") for path in paths}}
        summary = summarize(args, runs, all_rules, generate_s, load_at_start, profile)
        print(json.dumps(summary) if args.json else render(summary))
        return 0
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def summarize(args: argparse.Namespace, runs: dict[int, list[dict[str, Any]]], rules: list[dict[str, Any]],
              generate_s: float, load_at_start: str, profile: dict[str, Any] | None) -> dict[str, Any]:
    baseline = statistics.median(r["logs_per_s"] for r in runs[min(runs)])
    counts = {}
    for count, results in runs.items():
        rate = statistics.median(r["logs_per_s"] for r in results)
        cpu: dict[str, float] = {}
        for role in ("coordinator", "shard 0", "shard 1", "client"):
            values = [r["cpu_s"].get(role) for r in results if r["cpu_s"].get(role) is not None]
            if values:
                cpu[role] = statistics.median(values)
        counts[count] = {"runs_logs_per_s": [r["logs_per_s"] for r in results], "median_logs_per_s": rate,
                         "ratio": rate / baseline, "cost": 1 - rate / baseline, "cpu_s": cpu,
                         "alerts_fired": statistics.median(r["alerts_fired"] for r in results)}
    return {"date": report.utc_now_iso(), "commit": report.git_commit(report.repo_root()),
            "machine": report.machine_info(), "load_at_start": load_at_start, "n": args.n, "seed": args.seed,
            "batch": args.batch, "concurrency": args.concurrency, "repeat": args.repeat, "generate_s": generate_s,
            "counts": counts, "rules": rules, "profile": profile,
            "target_met": counts.get(100, {}).get("cost", 0.0) < TARGET_COST_100 if 100 in counts else None}


def render(summary: dict[str, Any]) -> str:
    machine = summary["machine"]
    lines = [
        "shardlog alerting benchmark: ingest throughput with 0, 10 and 100 active alert rules, same data, same run",
        f"date {summary['date']}  commit {summary['commit']}  N {summary['n']:,}  seed {summary['seed']}  "
        f"batch {summary['batch']}  concurrency {summary['concurrency']}  runs per rule count {summary['repeat']}",
        f"machine {machine['platform']}, {machine['nproc']} CPUs, Python {machine['python']}; load average at "
        f"start {summary['load_at_start']}",
        "each run: a fresh 2-shard daemon and data dir, the rules added over RPC, HTTP POST /insert/jsonline until "
        "every record is acknowledged, then flush; runs of the rule counts interleaved; median of the runs.",
        f"ratio = logs/s with the rules / logs/s with 0 rules; cost = 1 - ratio (target: 100 rules under "
        f"{TARGET_COST_100:.0%}).",
        "",
    ]
    headers = ["rules", "logs/s (median)", "runs", "ratio", "cost", "CPU s coord", "CPU s shards", "alerts fired"]
    rows = []
    for count, data in sorted(summary["counts"].items(), key=lambda item: int(item[0])):
        cpu = data["cpu_s"]
        rows.append([str(count), report.fmt_count(data["median_logs_per_s"]),
                     " ".join(f"{rate / 1000:.1f}k" for rate in data["runs_logs_per_s"]),
                     report.fmt_ratio(data["ratio"]), f"{data['cost']:.1%}",
                     f"{cpu.get('coordinator', 0):.1f}", f"{cpu.get('shard 0', 0) + cpu.get('shard 1', 0):.1f}",
                     f"{data['alerts_fired']:.0f}"])
    lines.append(report.render_table(headers, rows))
    if summary["target_met"] is not None:
        lines.append("")
        lines.append(f"target (100 rules cost under {TARGET_COST_100:.0%}): "
                     f"{'MET' if summary['target_met'] else 'NOT MET'}")
    grouped = sum(1 for r in summary["rules"] if r.get("group_by"))
    lines.append("")
    lines.append("rules (first 10 = the 10-rule set): " + "; ".join(f"{r['name']}: {r['query']!r}"
                                                                     + (f" by {r['group_by']}" if r.get("group_by")
                                                                        else "") for r in summary["rules"][:10]))
    lines.append(f"of the {len(summary['rules'])} rules, {grouped} have group_by; the rules cycle through level, "
                 "source, token, phrase, tag, metadata and OR shapes (realistic_rules).")
    profile = summary.get("profile")
    if profile:
        lines.append("")
        lines.append(f"py-spy profile of one extra run with {max(int(c) for c in summary['counts'])} rules "
                     f"({profile['logs_per_s']:,.0f} logs/s under the profiler); hottest functions by self time:")
        for role, functions in profile["roles"].items():
            inside = profile["rule_count_share"].get(role, 0.0)
            lines.append(f"  {role}" + (f" ({inside:.0f}% of its samples inside RuleSet.count, the rule matching)"
                                        if role.startswith("shard") else "") + ":")
            for frame, self_pct, total_pct in functions[:12]:
                lines.append(f"    {self_pct:5.1f}% self {total_pct:5.1f}% total  {frame}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_alerts",
                                     description="Ingest throughput of the daemon with 0, 10 and 100 alert rules.")
    parser.add_argument("--n", type=int, default=200_000, help="records per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per rule count (interleaved)")
    parser.add_argument("--rules", default=",".join(map(str, DEFAULT_RULE_COUNTS)),
                        help="comma list of rule counts; the smallest is the baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=5000, help="lines per HTTP request")
    parser.add_argument("--concurrency", type=int, default=4, help="HTTP requests in flight")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="py-spy the daemon's processes during one extra run with the most rules")
    parser.add_argument("--workdir", default="/tmp", help="where run directories go (short path, real disk)")
    args = parser.parse_args(argv)
    try:
        args.rules = sorted({int(part) for part in args.rules.split(",") if part.strip()})
    except ValueError:
        parser.error(f"--rules {args.rules!r} must be a comma list of integers, e.g. 0,10,100")
    if not args.rules or args.rules[0] < 0 or args.rules[-1] > 1000:
        parser.error("--rules must hold counts from 0 to 1000 (the daemon's limit)")
    if args.n < 1 or args.repeat < 1 or not 1 <= args.batch <= 100_000 or args.concurrency < 1:
        parser.error("--n, --repeat, --concurrency must be >= 1 and --batch from 1 to 100000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
