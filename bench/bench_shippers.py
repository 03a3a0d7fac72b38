"""Shipper ingest benchmark: Elasticsearch bulk and Loki push (JSON, snappy protobuf) ingest rates as
ratios to ``POST /insert/jsonline``, same data, same run.

    python -m bench.bench_shippers --n 100000 [--rounds 3] [--batch 5000] [--concurrency 4]
                                   [--seed 1] [--formats jsonline,es-bulk,...] [--json] [--workdir /tmp]

This module owns the shipper-path benchmark.  It guarantees:

- The same records for every format (``bench.workload.generate``, stamped to end a minute before
  now), encoded as each sender would send them, with the bodies built before any timing starts:
  ``jsonline`` the workload's NDJSON (``workload.to_jsonl``, the baseline); ``es-bulk`` Elastic Common
  Schema documents as Filebeat / Vector write them (``@timestamp``, ``log.level``, ``host.name``,
  ``service.name`` nested, other fields top level) after ``{"create": {"_index": ...}}`` actions;
  ``es-bulk-flat`` the jsonline documents themselves after the same actions (the bulk framing's own
  cost, without the ECS mapping); ``loki-json`` and ``loki-protobuf`` one stream per (source, host,
  level) label set, as Promtail groups entries, the line as the entry, the record's other fields as
  structured metadata, protobuf compressed as one snappy block.  ``--batch`` records per request in
  every format.
- Each (format, round) ingests into a fresh 2-shard daemon (``bench_e2e.Daemon``: its own data dir,
  CPU sampled per process), ``--concurrency`` requests in flight, 429/503 retried after their
  Retry-After; the time runs from the first request to the last acknowledgement plus the final
  ``flush``, exactly as ``bench_e2e`` times jsonline.  Every run must store exactly N records
  (checked by the answers and by a ``count`` over RPC); otherwise the exit code is 1.
- Formats run in a rotated order each round, so slow drift of the machine does not favour one; the
  reported rate is the median over rounds, the ratio is a format's median over jsonline's median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cramjam
import orjson

from bench import report
from bench.bench_e2e import CALL_TIMEOUT_S, Daemon, cpu_delta, recent_start_ns
from bench.workload import Record, generate, rfc3339_ns, to_jsonl
from coordinator import loki
from shardd.client import Client

FORMATS = ("jsonline", "es-bulk", "es-bulk-flat", "loki-json", "loki-protobuf")
BASELINE = "jsonline"
#: The issue's target: every shipper path at least this fraction of the jsonline rate.
TARGET_RATIO = 0.7
ES_INDEX = "logs-bench"


@dataclass
class Encoded:
    """One format's request bodies, their headers and the URL path they go to."""

    path: str
    headers: dict[str, str]
    bodies: list[bytes]
    #: records in each body (Loki's 204 carries no count)
    counts: list[int]


# --- encoding ---------------------------------------------------------------------------------------


def ecs_document(record: Record) -> dict[str, Any]:
    """A record as an ECS document, the shape Filebeat and Vector's Elasticsearch sink send."""
    metadata = dict(record["metadata"])
    doc: dict[str, Any] = {"@timestamp": rfc3339_ns(record["ts_ns"]), "message": record["message"],
                           "log": {"level": record["level"].lower()}, "service": {"name": record["source"]}}
    host = metadata.pop("host", None)
    if host is not None:
        doc["host"] = {"name": host}
    if record["tags"]:
        doc["tags"] = record["tags"]
    for key in ("thread_id", "request_id", "user_id"):
        if record.get(key) is not None:
            doc[key] = record[key]
    doc.update(metadata)
    return doc


def encode_es(records: Sequence[Record], batch: int, flat: bool) -> Encoded:
    action = orjson.dumps({"create": {"_index": ES_INDEX}})
    documents = to_jsonl(records) if flat else [orjson.dumps(ecs_document(r)) for r in records]
    bodies, counts = [], []
    for start in range(0, len(documents), batch):
        chunk = documents[start:start + batch]
        bodies.append(b"".join(action + b"\n" + doc + b"\n" for doc in chunk))
        counts.append(len(chunk))
    return Encoded("/_bulk", {"Content-Type": "application/x-ndjson"}, bodies, counts)


def _loki_streams(records: Sequence[Record]) -> dict[tuple[str, str, str], list[tuple[int, str, dict[str, str]]]]:
    """Entries grouped by label set (service_name, host, level), in arrival order within a stream."""
    streams: dict[tuple[str, str, str], list[tuple[int, str, dict[str, str]]]] = {}
    for record in records:
        metadata = dict(record["metadata"])
        host = str(metadata.pop("host", ""))
        structured = {key: str(value) for key, value in metadata.items()}
        for key in ("thread_id", "request_id", "user_id"):
            if record.get(key) is not None:
                structured[key] = record[key]
        if record["tags"]:
            structured["tags"] = ",".join(record["tags"])
        key = (record["source"], host, record["level"].lower())
        streams.setdefault(key, []).append((record["ts_ns"], record["message"], structured))
    return streams


def _labels_text(key: tuple[str, str, str]) -> str:
    source, host, level = key
    return f'{{service_name="{source}", host="{host}", level="{level}"}}'


def encode_loki_json(records: Sequence[Record], batch: int) -> Encoded:
    bodies, counts = [], []
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        streams = [{"stream": {"service_name": key[0], "host": key[1], "level": key[2]},
                    "values": [[str(ts_ns), line, structured] if structured else [str(ts_ns), line]
                               for ts_ns, line, structured in entries]}
                   for key, entries in _loki_streams(chunk).items()]
        bodies.append(orjson.dumps({"streams": streams}))
        counts.append(len(chunk))
    return Encoded("/loki/api/v1/push", {"Content-Type": "application/json"}, bodies, counts)


def encode_loki_protobuf(records: Sequence[Record], batch: int) -> Encoded:
    bodies, counts = [], []
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        request = loki.PushRequest()
        for key, entries in _loki_streams(chunk).items():
            stream = request.streams.add(labels=_labels_text(key).encode())
            for ts_ns, line, structured in entries:
                entry = stream.entries.add(line=line.encode())
                entry.timestamp.seconds, entry.timestamp.nanos = divmod(ts_ns, 10**9)
                for name, value in structured.items():
                    entry.structuredMetadata.add(name=name.encode(), value=value.encode())
        bodies.append(bytes(cramjam.snappy.compress_raw(request.SerializeToString())))
        counts.append(len(chunk))
    return Encoded("/loki/api/v1/push", {"Content-Type": "application/x-protobuf"}, bodies, counts)


def encode_jsonline(records: Sequence[Record], batch: int) -> Encoded:
    lines = to_jsonl(records)
    bodies = [b"\n".join(lines[start:start + batch]) for start in range(0, len(lines), batch)]
    counts = [len(lines[start:start + batch]) for start in range(0, len(lines), batch)]
    return Encoded("/insert/jsonline", {"Content-Type": "application/x-ndjson"}, bodies, counts)


ENCODERS: dict[str, Callable[[Sequence[Record], int], Encoded]] = {
    "jsonline": encode_jsonline,
    "es-bulk": lambda records, batch: encode_es(records, batch, flat=False),
    "es-bulk-flat": lambda records, batch: encode_es(records, batch, flat=True),
    "loki-json": encode_loki_json,
    "loki-protobuf": encode_loki_protobuf,
}


# --- sending ------------------------------------------------------------------------------------------


@dataclass
class Sent:
    accepted: int = 0
    retries: int = 0


def _accepted(fmt: str, status: int, payload: bytes, count: int) -> int:
    """Records a success answer acknowledges; RuntimeError for any answer that is not a full success."""
    if fmt == "jsonline" and status == 200:
        answer = json.loads(payload)
        if answer["rejected"]:
            raise RuntimeError(f"jsonline rejected records: {answer['rejected'][:3]}")
        return int(answer["accepted"])
    if fmt.startswith("es-bulk") and status == 200:
        answer = json.loads(payload)
        failed = [item for item in answer["items"] if next(iter(item.values()))["status"] != 201]
        if answer["errors"] or failed:
            raise RuntimeError(f"bulk items failed: {failed[:3]}")
        return len(answer["items"])
    if fmt.startswith("loki") and status == 204:
        return count
    raise RuntimeError(f"{fmt}: HTTP {status}: {payload[:300]!r}")


async def _post_all(base_url: str, fmt: str, encoded: Encoded, concurrency: int) -> Sent:
    import aiohttp

    sent = Sent()
    next_body = 0
    url = base_url + encoded.path
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)) as session:

        async def worker() -> None:
            nonlocal next_body
            while next_body < len(encoded.bodies):
                index = next_body
                next_body += 1
                while True:
                    async with session.post(url, data=encoded.bodies[index], headers=encoded.headers) as response:
                        payload = await response.read()
                        if response.status in (429, 503):
                            sent.retries += 1
                            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                            continue
                        sent.accepted += _accepted(fmt, response.status, payload, encoded.counts[index])
                        break

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent


def run_one(fmt: str, encoded: Encoded, run_dir: Path, n: int, concurrency: int) -> dict[str, Any]:
    """A fresh 2-shard daemon, ingest every body, flush, count; the timing and CPU per process."""
    report.settle_disk()  # no run pays for the previous one's writeback
    daemon = Daemon(Path(tempfile.mkdtemp(prefix=f"{fmt[:4]}-", dir=run_dir)) / "d", 2)
    try:
        daemon.start()
        assert daemon.sampler is not None
        cpu_before = daemon.sampler.cpu()
        started = time.perf_counter()
        sent = asyncio.run(_post_all(f"http://127.0.0.1:{daemon.port}", fmt, encoded, concurrency))
        with Client(daemon.socket_path, timeout_s=CALL_TIMEOUT_S) as client:
            client.call("flush")
            ingest_s = time.perf_counter() - started
            stored = int(client.call("count", {})["count"])
        cpu = cpu_delta(cpu_before, daemon.sampler.cpu())
    except BaseException:
        print(f"[{fmt}] failed; daemon log tail:\n{daemon.log_tail()}", file=sys.stderr)
        raise
    finally:
        daemon.stop()
    if sent.accepted != n or stored != n:
        raise RuntimeError(f"{fmt}: {sent.accepted:,} acknowledged and {stored:,} stored of {n:,} records")
    return {"ingest_s": ingest_s, "logs_per_s": n / ingest_s, "retries": sent.retries, "cpu_s": cpu}


# --- the run ---------------------------------------------------------------------------------------------


def _daemon_cpu_s(result: dict[str, Any]) -> float:
    """CPU seconds of the daemon's processes (coordinator and shards) over one run's ingest."""
    return sum(seconds for role, seconds in result["cpu_s"].items() if role != "client")


def summarize(meta: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per format: median and best rate over rounds and their ratios to jsonline, and the ratio of
    records per daemon CPU second (what the format costs the daemon, less disturbed than wall time
    when other work shares the two cores)."""
    done = {fmt: results for fmt, results in runs.items() if results}
    median = {fmt: statistics.median(r["logs_per_s"] for r in results) for fmt, results in done.items()}
    best = {fmt: max(r["logs_per_s"] for r in results) for fmt, results in done.items()}
    per_cpu = {fmt: statistics.median(meta["n"] / _daemon_cpu_s(r) for r in results) for fmt, results in done.items()}
    formats = {}
    for fmt, results in done.items():
        cpu: dict[str, float] = {}
        for result in results:
            for role, seconds in result["cpu_s"].items():
                group = "shards" if role.startswith("shard") else role
                cpu[group] = cpu.get(group, 0.0) + seconds / len(results)
        ratio = report.ratio(median[fmt], median.get(BASELINE))
        formats[fmt] = {"logs_per_s_median": median[fmt], "logs_per_s_best": best[fmt],
                        "logs_per_s": [r["logs_per_s"] for r in results],
                        "ratio_to_jsonline": ratio, "ratio_best": report.ratio(best[fmt], best.get(BASELINE)),
                        "logs_per_daemon_cpu_s": per_cpu[fmt],
                        "ratio_daemon_cpu": report.ratio(per_cpu[fmt], per_cpu.get(BASELINE)),
                        "meets_target": None if ratio is None else ratio >= TARGET_RATIO,
                        "cpu_s_mean": cpu, "retries": sum(r["retries"] for r in results),
                        "body_bytes": meta["body_bytes"].get(fmt)}
    return {**meta, "formats": formats}


def render_text(summary: dict[str, Any]) -> str:
    machine = summary["machine"]
    lines = [
        "shardlog shipper ingest benchmark: Elasticsearch bulk and Loki push vs /insert/jsonline, same data, same run",
        f"date {summary['date']}  commit {summary['commit']}  N {summary['n']:,}  seed {summary['seed']}  "
        f"batch {summary['batch']}  concurrency {summary['concurrency']}  rounds {summary['rounds']}",
        f"machine {machine['platform']}, {machine['nproc']} CPUs, Python {machine['python']}; load average at "
        f"start {summary['load_at_start']}, at end {summary.get('load_at_end', 'n/a')}",
        "each run: a fresh 2-shard daemon; time = first request to last ack + final flush.",
        "ratio = format / jsonline: of the median rate over rounds (the target, >= 0.70x), of the best round, and of "
        "records per daemon CPU second (coordinator + shards).",
        "",
    ]
    rows = []
    for fmt, result in summary["formats"].items():
        cpu = result["cpu_s_mean"]
        target = "" if fmt == BASELINE else ("yes" if result["meets_target"] else "NO")
        rows.append([fmt, f"{result['logs_per_s_median']:,.0f}", f"{result['logs_per_s_best']:,.0f}",
                     report.fmt_ratio(result["ratio_to_jsonline"]), target, report.fmt_ratio(result["ratio_best"]),
                     report.fmt_ratio(result["ratio_daemon_cpu"]), f"{cpu.get('coordinator', 0.0):.2f}",
                     f"{cpu.get('shards', 0.0):.2f}", report.fmt_bytes(result["body_bytes"]), str(result["retries"])])
    lines.append(report.render_table(
        ["format", "median logs/s", "best logs/s", "ratio", ">=0.7x", "ratio best", "ratio CPU",
         "coord CPU s", "shards CPU s", "bytes sent", "429/503"], rows))
    lines.append("")
    lines.append("CPU s: mean per run over the ingest (both shards summed).  bytes sent: all request bodies of one run.")
    lines.append("logs/s per round: " + "; ".join(
        f"{fmt} " + " / ".join(f"{rate:,.0f}" for rate in result["logs_per_s"])
        for fmt, result in summary["formats"].items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    base_dir = Path(args.workdir)
    base_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="ship-", dir=base_dir))
    load_at_start = " ".join(f"{value:.2f}" for value in os.getloadavg())
    try:
        records = generate(args.n, seed=args.seed, start_ns=recent_start_ns(args.n))
        encoded = {fmt: ENCODERS[fmt](records, args.batch) for fmt in args.formats}
        del records
        runs: dict[str, list[dict[str, Any]]] = {fmt: [] for fmt in args.formats}
        errors: list[str] = []
        for round_index in range(args.rounds):
            shift = round_index % len(args.formats)
            for fmt in args.formats[shift:] + args.formats[:shift]:
                try:
                    result = run_one(fmt, encoded[fmt], run_dir, args.n, args.concurrency)
                except (RuntimeError, OSError) as exc:
                    errors.append(f"ERROR {fmt} round {round_index + 1}: {exc}")
                    print(errors[-1], file=sys.stderr)
                    continue
                runs[fmt].append(result)
                print(f"[round {round_index + 1}] {fmt}: {result['logs_per_s']:,.0f} logs/s", file=sys.stderr)
        meta = {"date": report.utc_now_iso(), "load_at_end": " ".join(f"{value:.2f}" for value in os.getloadavg()), "commit": report.git_commit(report.repo_root()),
                "machine": report.machine_info(), "load_at_start": load_at_start, "n": args.n, "seed": args.seed,
                "batch": args.batch, "concurrency": args.concurrency, "rounds": args.rounds,
                "body_bytes": {fmt: sum(len(body) for body in enc.bodies) for fmt, enc in encoded.items()}}
        summary = summarize(meta, runs)
        print(json.dumps(summary) if args.json else render_text(summary))
        for line in errors:
            print(line, file=sys.stderr)
        return 1 if errors else 0
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_shippers",
                                     description="Shipper protocol ingest rates as ratios to /insert/jsonline.")
    parser.add_argument("--n", type=int, default=100_000, help="records per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per format (the median is reported)")
    parser.add_argument("--batch", type=int, default=5000, help="records per request, every format")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma list of {', '.join(FORMATS)}")
    parser.add_argument("--workdir", default="/tmp", help="where run directories go (a real disk, short path)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    args.formats = [fmt.strip() for fmt in args.formats.split(",") if fmt.strip()]
    unknown = [fmt for fmt in args.formats if fmt not in FORMATS]
    if unknown:
        parser.error(f"--formats has {unknown}; choose from {', '.join(FORMATS)}")
    if BASELINE not in args.formats:
        parser.error(f"--formats must include {BASELINE}, the baseline of every ratio")
    if args.n < 1 or args.rounds < 1 or args.concurrency < 1 or not 1 <= args.batch <= 100_000:
        parser.error("--n, --rounds and --concurrency must be >= 1 and --batch from 1 to 100000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
