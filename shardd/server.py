"""The shard process: one store, served over a unix socket with framed msgpack (shardd.protocol).

    python -m shardd --shard-id I --data-dir DIR --socket PATH [--parent-pid PID]

Operations (args -> result):
    ping        {}                                         -> {"shard_id", "pid"}
    ingest      {"records": [...] | "records_packed": msgpack bytes of that list, "idempotency_key": s?}
                                                           -> {"accepted": n, "duplicate": bool}
    ingest_lines {"lines": [JSON text], "numbers": [line number], "id_base", "now_ns", "limits",
                  "idempotency_key": s?, "return_records": bool?, "ecs_indexes": [index]?}
                                                           -> {"accepted", "duplicate", "rejected"?: [{"line",
                                                               "reason"}], "records"?: [...]}
                 (JSON lines parsed and normalized here, storage.jsonlines; record id = id_base + number;
                  with ecs_indexes the lines are ECS documents, mapped by storage.ecs first)
    query       {"filter": wire, "sort", "offset", "limit", "after": [ts, id]?, "want_total"}
                                                           -> {"rows": [...], "total": n | None}
    count       {"filter": wire}                           -> {"count": n}
    aggregate   {"filter": wire, "spec": AggSpec wire}     -> partial state (storage.aggregate)
    stats       {}                                         -> store stats
    retention   {"cutoff_ns": int}                         -> {"dropped_blocks", "dropped_records"}
    flush       {}                                         -> {}      (seal the tail into blocks)
    shutdown    {}                                         -> {}      (then the process exits 0)
    set_rules   {"rules": [RuleSpec wire, ...]}           -> {"rules": n}  (alert rules to count)
    rule_counts {"rule": RuleSpec wire, "from_ns", "to_ns"}
                                                           -> {"counts": [[second, group, n]], "samples": [...]}

An ingest acknowledgement also carries ``"alerts": {rule_id: {"counts", "samples"}}`` for the active
rules that matched records of the batch (storage.rule_match), unless the batch was a duplicate.

Exit codes: 0 after shutdown / SIGTERM / parent gone; ``EXIT_BOOT_FAILURE`` (78) when the store cannot
be opened (bad dir, foreign format, lock held): the coordinator stops restarting on it.
Reads run on a small thread pool so a long query does not stall ingest acknowledgements.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shardd import protocol
from storage import layout
from storage import query as q
from storage import querywire
from storage.aggregate import AggSpec
from storage.errors import BadRequest, ShardlogError
from storage.gctune import tune_gc
from storage.jsonlines import limits_from_wire, normalize_lines
from storage.rule_match import RuleSet, RuleSpec
from storage.store import Store, StoreConfig, check_records

log = logging.getLogger("shardlog.shardd")

EXIT_OK = 0
#: EX_CONFIG from sysexits.h: the store cannot be opened; restarting will not help
EXIT_BOOT_FAILURE = 78
PARENT_POLL_S = 1.0
#: at most this many stored records are counted when rebuilding one rule's window
RULE_COUNT_ROWS = 100_000
#: how long a thread may hold the interpreter lock while another waits (Python's default: 5 ms).
#: A shard runs two CPU-bound threads, the event loop parsing ingest batches and the sealer
#: building blocks; fewer forced hand-offs between them measured 2-4 % more ingest (medians of 6
#: alternating 600k-record runs, daemon CPU per log 16.5 -> 15.9 us).  Queries during a saturating
#: ingest wait behind whole parse batches anyway (rare-token p50 ~70-120 ms either way).
SWITCH_INTERVAL_S = 0.02


def _int_arg(args: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = args.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}, got {value!r}")
    return value


class ShardServer:
    def __init__(self, shard_id: int, store: Store, socket_path: str, parent_pid: int | None) -> None:
        self.shard_id = shard_id
        self.store = store
        self.socket_path = socket_path
        self.parent_pid = parent_pid
        self.readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"shard{shard_id}-read")
        self.stopping = asyncio.Event()
        self._connections = protocol.ConnectionSet(self.handle)
        self.rules = RuleSet()

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        if op == "ping":
            return {"shard_id": self.shard_id, "pid": os.getpid()}
        if op == "ingest":
            packed = args.get("records_packed")
            if packed is not None:
                # the records as one msgpack blob: decoded (with the frame's limits) to check and
                # index them, and written to the WAL as is, without packing them again
                if not isinstance(packed, bytes):
                    raise BadRequest(f"records_packed must be bytes, got {type(packed).__name__}")
                records = check_records(protocol.unpack(packed))
            else:
                records = check_records(args.get("records"))
            return await self._store(records, args, packed)
        if op == "ingest_lines":
            lines, numbers = args.get("lines"), args.get("numbers")
            if not isinstance(lines, list) or not isinstance(numbers, list) \
                    or not all(type(number) is int for number in numbers) or len(set(numbers)) != len(numbers):
                raise BadRequest("ingest_lines needs lines (a list of JSON texts) and numbers (their line numbers, "
                                 "distinct integers)")
            id_base = _int_arg(args, "id_base", 0, -(1 << 63), (1 << 63) - 1)
            now_ns = _int_arg(args, "now_ns", 0, -(1 << 63), (1 << 63) - 1)
            limits = args.get("limits", {})
            ecs_indexes = args.get("ecs_indexes")
            if ecs_indexes is not None and (not isinstance(ecs_indexes, list)
                                            or not all(type(index) is str for index in ecs_indexes)):
                raise BadRequest("ecs_indexes must be a list of index names, one per line")
            records, rejected, texts = normalize_lines(lines, numbers, id_base=id_base, now_ns=now_ns,
                                                       limits=limits_from_wire(limits), ecs_indexes=ecs_indexes)
            # the WAL keeps the texts of the stored records, not the records: packing them costs a
            # tenth as much, and replay normalizes them again to the same records
            if rejected:
                dropped = {rejection["line"] for rejection in rejected}
                kept = [number for number in numbers if number not in dropped]
            else:
                kept = numbers  # records come in line order, one per line that was not rejected
            wal = layout.wal_lines_value(texts, kept, id_base, now_ns, limits) if records else None
            result = await self._store(records, args, wal)
            if rejected:
                result = dict(result, rejected=rejected)
            if args.get("return_records"):  # someone follows new records (tail -f) at the coordinator
                result = dict(result, records=records)
            return result
        if op == "query":
            node = querywire.from_wire(args.get("filter", ["all"]))
            sort = args.get("sort", "desc")
            if sort not in ("asc", "desc"):
                raise BadRequest(f"sort must be 'asc' or 'desc', got {sort!r}")
            offset = _int_arg(args, "offset", 0, 0, 1 << 31)
            limit = _int_arg(args, "limit", 100, 0, 1 << 31)
            after = args.get("after")
            if after is not None and (not isinstance(after, list) or len(after) != 2
                                      or not all(isinstance(v, int) for v in after)):
                raise BadRequest(f"after must be [ts_ns, id], got {after!r:.100}")
            want_total = bool(args.get("want_total", True))
            return await loop.run_in_executor(self.readers, lambda: self.store.query(
                node, sort=sort, offset=offset, limit=limit, after=after, want_total=want_total))
        if op == "count":
            node = querywire.from_wire(args.get("filter", ["all"]))
            return {"count": await loop.run_in_executor(self.readers, self.store.count, node)}
        if op == "aggregate":
            node = querywire.from_wire(args.get("filter", ["all"]))
            spec = AggSpec.from_wire(args.get("spec"))
            return await loop.run_in_executor(self.readers, self.store.aggregate, node, spec)
        if op == "stats":
            stats = await loop.run_in_executor(self.readers, self.store.stats)
            stats["shard_id"] = self.shard_id
            return stats
        if op == "retention":
            cutoff = _int_arg(args, "cutoff_ns", 0, -(1 << 63), (1 << 63) - 1)
            return await loop.run_in_executor(None, self.store.drop_before, cutoff)
        if op == "flush":
            await loop.run_in_executor(None, self.store.flush)
            return {}
        if op == "set_rules":
            specs = args.get("rules")
            if not isinstance(specs, list):
                raise BadRequest(f"rules must be a list, got {type(specs).__name__}")
            self.rules = RuleSet([RuleSpec.from_wire(spec) for spec in specs])
            return {"rules": len(self.rules)}
        if op == "rule_counts":
            spec = RuleSpec.from_wire(args.get("rule"))
            lo = _int_arg(args, "from_ns", 0, -(1 << 63), (1 << 63) - 1)
            hi = _int_arg(args, "to_ns", 0, -(1 << 63), (1 << 63) - 1)
            return await loop.run_in_executor(self.readers, self._rule_counts, spec, lo, hi)
        if op == "shutdown":
            loop.call_soon(self.stopping.set)
            return {}
        raise BadRequest(f"unknown operation {op!r}; expected one of ping, ingest, ingest_lines, query, count, "
                         "aggregate, stats, retention, flush, set_rules, rule_counts, shutdown")

    async def _store(self, records: list[dict[str, Any]], args: dict[str, Any], packed: bytes | None) -> dict[str, Any]:
        """Store checked records durably; the ack carries the alert-rule matches of the batch."""
        key = args.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise BadRequest(f"idempotency_key must be a string, got {type(key).__name__}")
        future = self.store.submit(records, key, packed=packed)
        # count alert-rule matches while the writer commits; they ride back on the ack
        counts = self.rules.count(records) if len(self.rules) else {}
        result = await asyncio.wrap_future(future)
        if counts and not result.get("duplicate"):
            result = dict(result, alerts=counts)
        return result

    def _rule_counts(self, spec: RuleSpec, from_ns: int, to_ns: int) -> dict[str, Any]:
        """Per-second counts of one rule over stored records in [from_ns, to_ns) (rebuilding the
        coordinator's alert windows after a restart)."""
        node = q.and_nodes(spec.node, q.TimeRange(from_ns, to_ns))
        found = self.store.query(node, sort="desc", limit=RULE_COUNT_ROWS, want_total=False)["rows"]
        counted = RuleSet([RuleSpec(spec.rule_id, q.MatchAll(), spec.group_by)]).count(found)
        part = counted.get(spec.rule_id, {"counts": [], "samples": []})
        return {"counts": part["counts"], "samples": part["samples"], "truncated": len(found) == RULE_COUNT_ROWS}

    async def _watch_parent(self) -> None:
        while not self.stopping.is_set():
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.warning("shard %d: coordinator (pid %d) is gone; exiting", self.shard_id, self.parent_pid)
                self.stopping.set()
                return
            try:
                await asyncio.wait_for(self.stopping.wait(), PARENT_POLL_S)
            except asyncio.TimeoutError:
                pass

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._connections, path=self.socket_path,
                                                     limit=protocol.MAX_FRAME_BYTES)
        finally:
            os.umask(old_umask)
        watcher = asyncio.create_task(self._watch_parent())
        log.info("shard %d serving %s on %s (pid %d)", self.shard_id, self.store.path, self.socket_path, os.getpid())
        await self.stopping.wait()
        # Shutdown: stop accepting, let in-flight requests finish (their acks are durable once the
        # writer commits), then close the store so the WAL/blocks are consistent on disk.
        server.close()
        await self._connections.close()
        watcher.cancel()
        await loop.run_in_executor(None, self.store.close)
        self.readers.shutdown(wait=True)
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass


def _set_parent_death_signal() -> None:
    """Linux: get SIGTERM when the parent dies (the ppid poll covers other systems)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardd", description="shardlog shard process")
    parser.add_argument("--shard-id", type=int, required=True)
    parser.add_argument("--data-dir", required=True, help="this shard's store directory")
    parser.add_argument("--socket", required=True, help="unix socket path to serve on")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    parser.add_argument("--block-records", type=int, default=StoreConfig.block_records)
    parser.add_argument("--seal-after-s", type=float, default=StoreConfig.seal_after_s)
    parser.add_argument("--max-store-bytes", type=int, default=StoreConfig.max_store_bytes)
    parser.add_argument("--log-level", default=os.environ.get("SHARDLOG_LOG_LEVEL", "INFO"))
    ns = parser.parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s shard{ns.shard_id} %(levelname)s %(name)s: %(message)s")
    if ns.parent_pid is not None:
        _set_parent_death_signal()
        if os.getppid() != ns.parent_pid:
            return EXIT_OK  # the parent died before we got here
    tune_gc()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        config = StoreConfig(block_records=ns.block_records, seal_after_s=ns.seal_after_s,
                             max_store_bytes=ns.max_store_bytes)
        store = Store(Path(ns.data_dir), config)
    except (ShardlogError, OSError, ValueError) as exc:
        log.error("shard %d cannot open its store %s: %s", ns.shard_id, ns.data_dir, exc)
        print(f"shardd: cannot open store {ns.data_dir}: {exc}", file=sys.stderr)
        return EXIT_BOOT_FAILURE
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay runnable without it
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        server = ShardServer(ns.shard_id, store, ns.socket, ns.parent_pid)
        try:
            runner.run(server.run())
        except OSError as exc:
            log.error("shard %d cannot serve on %s: %s", ns.shard_id, ns.socket, exc)
            store.close()
            return EXIT_BOOT_FAILURE
    return EXIT_OK
