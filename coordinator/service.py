"""The coordinator's operations, independent of transport (unix-socket RPC, HTTP, TCP lines).

Ingest is ``coordinator.ingest`` (``Service.ingest`` and ``ingest_lines`` hand over to it); `tail -f`
followers read ``coordinator.follow``.

Reads: parse the request once (coordinator.request), scatter to every shard under one deadline,
merge: rows by (timestamp, id) with heapq.merge, counts by sum, aggregations through
storage.aggregate's merge/finalize.  A shard that misses the deadline makes the answer
``partial: true`` (and names the shards), never a silently smaller one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable


from coordinator.config import Config
from coordinator.follow import FollowRing
from coordinator.ingest import Ingest
from coordinator.metrics import Metrics
from coordinator.request import encode_cursor, parse_aggregate, parse_filter, parse_search
from coordinator.supervisor import Supervisor
from storage import aggregate as agg
from storage import querywire
from storage.errors import BadQuery, BadRequest, ShardlogError, ShardUnavailable
from storage.record import to_public
from storage.timefmt import format_timestamp

log = logging.getLogger("shardlog.service")

VERSION = "0.1.0"
#: how long an overloaded ingest waits for room before answering Overloaded
ADMIT_WAIT_S = 2.0


class Service:
    def __init__(self, config: Config, supervisor: Supervisor, metrics: Metrics, *, data_dir: str,
                 http_address: str | None = None) -> None:
        self.config = config
        self.supervisor = supervisor
        self.metrics = metrics
        self.n_shards = len(supervisor.slots)
        self.data_dir = data_dir
        self.http_address = http_address
        #: recently acknowledged records for `tail -f` followers (kept only while someone follows)
        self.follow = FollowRing()
        #: the write path (coordinator.ingest)
        self.intake = Ingest(config, supervisor, metrics, self.follow)
        self._rpc: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "ping": self.ping, "ingest": self._rpc_ingest, "ingest_lines": self._rpc_ingest_lines,
            "query": self.query, "count": self.count, "aggregate": self.aggregate, "tail": self.tail,
            "stats": self.stats, "metrics": self._rpc_metrics, "flush": self.flush,
        }

    # --- ingest (coordinator.ingest) ------------------------------------------------------------

    async def ingest(self, raws: list[Any], **options: Any) -> dict[str, Any]:
        """``Ingest.ingest``: normalize, route and store a batch of records."""
        return await self.intake.ingest(raws, **options)

    async def ingest_lines(self, lines: list[Any], fmt: str = "jsonl", **options: Any) -> dict[str, Any]:
        """``Ingest.ingest_lines``: JSON or text lines."""
        return await self.intake.ingest_lines(lines, fmt, **options)

    async def ingest_documents(self, documents: list[bytes], indexes: list[str], **options: Any) -> dict[str, Any]:
        """``Ingest.ingest_documents``: Elasticsearch bulk documents."""
        return await self.intake.ingest_documents(documents, indexes, **options)

    async def _rpc_ingest(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.ingest(args.get("records"), idempotency_key=args.get("idempotency_key"),
                                 first_line=_first_line(args))

    async def _rpc_ingest_lines(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.ingest_lines(args.get("lines"), str(args.get("format", "jsonl")), first_line=_first_line(args),
                                       idempotency_key=args.get("idempotency_key"))

    # --- reads -------------------------------------------------------------------------------

    async def _scatter(self, op: str, args: dict[str, Any]) -> tuple[list[Any], list[int]]:
        """Call every shard under one deadline.  Returns per-shard results (None where it failed) and the
        failed shard ids.  A user error (bad query) from any shard is raised as is."""
        timeout_s = self.config.query_timeout_s

        async def one(shard_id: int) -> Any:
            client = await self.supervisor.client(shard_id, wait_s=min(5.0, timeout_s))
            return await client.call(op, args, timeout_s=timeout_s)

        tasks = [asyncio.ensure_future(one(i)) for i in range(self.n_shards)]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        results: list[Any] = []
        failed: list[int] = []
        for shard_id, task in enumerate(tasks):
            if task in pending or task.cancelled():
                results.append(None)
                failed.append(shard_id)
                continue
            exc = task.exception()
            if exc is None:
                results.append(task.result())
            elif isinstance(exc, (BadQuery, BadRequest)):
                raise exc
            else:
                log.warning("shard %d failed %s: %s", shard_id, op, exc)
                results.append(None)
                failed.append(shard_id)
        if len(failed) == self.n_shards:
            raise ShardUnavailable(f"no shard answered {op} within {timeout_s:.0f} s (query_timeout); retry shortly",
                                   retry_after_s=1)
        return results, failed

    async def query(self, params: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        request = parse_search(params, time.time_ns())
        window = request.offset + request.limit
        # each shard returns one row more than the page needs: if the merge holds more than the page,
        # another page exists (exact, whatever the shard count)
        args = {"filter": querywire.to_wire(request.node), "sort": "desc" if request.desc else "asc", "offset": 0,
                "limit": window + 1, "after": list(request.after) if request.after else None,
                "want_total": request.after is None}
        if request.after is not None:
            (results, failed), (count_results, count_failed) = await asyncio.gather(
                self._scatter("query", args), self._scatter("count", {"filter": args["filter"]}))
            total = sum(r["count"] for r in count_results if r is not None)
            failed = sorted(set(failed) | set(count_failed))
        else:
            results, failed = await self._scatter("query", args)
            total = sum(r["total"] for r in results if r is not None)
        streams = [r["rows"] for r in results if r is not None]
        merged = heapq.merge(*streams, key=lambda r: (r["ts_ns"], r["id"]), reverse=request.desc)
        rows = list(itertools.islice(merged, request.offset, window + 1))
        page = rows[:request.limit]
        more = request.limit > 0 and len(rows) > request.limit
        next_cursor = encode_cursor(page[-1]["ts_ns"], page[-1]["id"]) if more else None
        self.metrics.query_latency.labels("query").observe(time.perf_counter() - started)
        return {"total": total, "logs": [to_public(r) for r in page], "next_cursor": next_cursor,
                "partial": bool(failed), **({"failed_shards": failed} if failed else {})}

    async def count(self, params: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        node, _ = parse_filter(params, time.time_ns())
        results, failed = await self._scatter("count", {"filter": querywire.to_wire(node)})
        self.metrics.query_latency.labels("count").observe(time.perf_counter() - started)
        return {"count": sum(r["count"] for r in results if r is not None), "partial": bool(failed),
                **({"failed_shards": failed} if failed else {})}

    async def aggregate(self, params: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        request = parse_aggregate(params, time.time_ns())
        results, failed = await self._scatter("aggregate", {"filter": querywire.to_wire(request.node),
                                                            "spec": request.spec.to_wire()})
        merged = agg.new_partial(request.spec)
        if "time_histogram" in merged:
            merged["time_histogram"] = {}
        for result in results:
            if result is not None:
                agg.merge(merged, agg.from_wire(result))
        final = agg.finalize(merged, request.spec)
        if "time_histogram" in final:
            final["time_histogram"] = [[format_timestamp(b), c] for b, c in final["time_histogram"]]
        final["partial"] = bool(failed)
        if failed:
            final["failed_shards"] = failed
        self.metrics.query_latency.labels("aggregate").observe(time.perf_counter() - started)
        return final

    async def tail(self, params: dict[str, Any]) -> dict[str, Any]:
        """Newest matching logs; with a cursor, the logs ingested after it (long-poll up to wait_s)."""
        self.follow.touch()
        cursor = params.get("cursor")
        node, _ = parse_filter({k: v for k, v in params.items() if k not in ("cursor", "wait_s", "limit")},
                               time.time_ns())
        limit = int(params.get("limit") or 10)
        if not cursor:
            seq = self.follow.seq
            result = await self.query({**{k: v for k, v in params.items() if k not in ("cursor", "wait_s")},
                                       "limit": limit, "sort": "desc"})
            return {"logs": list(reversed(result["logs"])), "cursor": self.follow.cursor(seq)}
        after = self.follow.parse_cursor(cursor)
        if after is None:  # another boot's cursor (or garbage): start from now
            return {"logs": [], "cursor": self.follow.cursor()}
        logs, newest = await self.follow.poll(node, after, float(params.get("wait_s") or 0), limit)
        return {"logs": logs, "cursor": self.follow.cursor(newest)}

    def subscribe(self, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Async iterator of new matching logs (for the HTTP tail stream)."""
        node, _ = parse_filter(params, time.time_ns())
        return self.follow.subscribe(node)

    async def stats(self, _args: dict[str, Any] | None = None) -> dict[str, Any]:
        results, failed = await self._scatter("stats", {})
        by_level: dict[str, int] = {}
        by_source: dict[str, int] = {}
        by_tag: dict[str, int] = {}
        shards = []
        for slot, result in zip(self.supervisor.slots, results):
            entry = {"shard_id": slot.shard_id, "up": slot.up, "restarts": slot.restarts,
                     "pid": slot.process.pid if slot.process else None}
            if result is not None:
                for target, key in ((by_level, "by_level"), (by_source, "by_source"), (by_tag, "by_tag")):
                    for value, n in result.get(key, {}).items():
                        target[value] = target.get(value, 0) + n
                entry.update({k: result.get(k) for k in ("records", "blocks", "unsealed_records", "bytes_on_disk",
                                                         "min_ts", "max_ts")})
            shards.append(entry)
        total = sum(s.get("records") or 0 for s in shards)
        stored = [s for s in shards if s.get("min_ts") is not None]
        return {
            "total_logs": total,
            "by_level": dict(sorted(by_level.items(), key=lambda kv: -kv[1])),
            "by_source": dict(sorted(by_source.items(), key=lambda kv: -kv[1])),
            "by_tag": dict(sorted(by_tag.items(), key=lambda kv: -kv[1])),
            "bytes_on_disk": sum(s.get("bytes_on_disk") or 0 for s in shards),
            "oldest": format_timestamp(min(s["min_ts"] for s in stored)) if stored else None,
            "newest": format_timestamp(max(s["max_ts"] for s in stored)) if stored else None,
            "shards": shards,
            "partial": bool(failed),
            "data_dir": self.data_dir,
            "version": VERSION,
        }

    async def metrics_text(self) -> bytes:
        try:
            self.metrics.update_from_stats(await self.stats())
        except ShardlogError as exc:  # still expose what we have (shard_up=0 tells the story)
            log.warning("metrics: stats unavailable: %s", exc)
        for slot in self.supervisor.slots:
            self.metrics.shard_up.labels(str(slot.shard_id)).set(1 if slot.up else 0)
            self.metrics.shard_restarts.labels(str(slot.shard_id)).set(slot.restarts)
        return self.metrics.exposition()

    async def _rpc_metrics(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"text": (await self.metrics_text()).decode()}

    async def flush(self, _args: dict[str, Any] | None = None) -> dict[str, Any]:
        _, failed = await self._scatter("flush", {})
        if failed:
            raise ShardUnavailable(f"shards {failed} did not flush; retry")
        return {}

    async def retention(self, cutoff_ns: int) -> dict[str, int]:
        results, failed = await self._scatter("retention", {"cutoff_ns": cutoff_ns})
        dropped = {"dropped_blocks": 0, "dropped_records": 0}
        for result in results:
            if result is not None:
                for key in dropped:
                    dropped[key] += result.get(key, 0)
        return dropped

    async def ping(self, _args: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"pid": os.getpid(), "shards": self.n_shards, "version": VERSION, "data_dir": self.data_dir,
                "http": self.http_address, "ready": self.supervisor.all_up()}

    # --- RPC ---------------------------------------------------------------------------------

    def attach_alerts(self, alerts: Any) -> None:
        """Alerting (coordinator.alert_service.AlertService): ingest acks feed it, its ops join the RPC."""
        self.intake.alerts = alerts
        self._rpc.update(alerts.ops)

    async def handle_rpc(self, op: str, args: dict[str, Any]) -> Any:
        method = self._rpc.get(op)
        if method is None:
            raise BadRequest(f"unknown operation {op!r}; expected one of {', '.join(sorted(self._rpc))}")
        return await method(args)


def _first_line(args: dict[str, Any]) -> int:
    value = args.get("first_line", 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"first_line must be a non-negative integer, got {value!r}")
    return value
