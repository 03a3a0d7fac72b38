"""The coordinator's operations, independent of transport (unix-socket RPC, HTTP, TCP lines).

Ingest: parse -> normalize + validate (storage.record) -> stamp ids -> route by stable hash
(coordinator.router) -> one frame per shard, concurrently -> acknowledge after every shard committed.
JSON lines skip the first three steps here: they are routed unparsed and each shard parses its share
(``_ingest_routed``, storage.jsonlines), which spreads the costliest step of ingest over the cores.
Each per-shard frame carries an idempotency key — the client's key plus the shard number, or a
coordinator-made one — so when a shard dies mid-request the coordinator waits for its restart and
resends the same frame, and the shard stores it at most once.  In-flight records are bounded; past the
bound a request waits briefly, then gets a retryable ``Overloaded``.

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
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import msgpack
import orjson

from coordinator.config import Config
from coordinator.hooks import HookRunner
from coordinator.metrics import Metrics
from coordinator.request import encode_cursor, parse_aggregate, parse_filter, parse_search
from coordinator.router import route, route_lines
from coordinator.supervisor import Supervisor
from coordinator.textlog import TextParser, TextRecord
from storage import aggregate as agg
from storage import query as q
from storage import querywire
from storage.jsonlines import json_error, limits_to_wire
from storage.errors import (BadQuery, BadRecord, BadRequest, Overloaded, ShardlogError, ShardUnavailable)
from storage.record import normalize_record, to_public
from storage.timefmt import format_timestamp

log = logging.getLogger("shardlog.service")

VERSION = "0.1.0"
#: recently ingested records kept for `tail -f`
TAIL_RING = 20_000
FOLLOW_GRACE_S = 60.0
MAX_TAIL_WAIT_S = 30.0
#: how long an overloaded ingest waits for room before answering Overloaded
ADMIT_WAIT_S = 2.0


@dataclass(slots=True)
class _Batch:
    """An ingest batch once normalized and routed: what is kept while the shards store it."""

    accepted: int
    rejected: list[dict[str, Any]]
    dropped: int
    #: (shard id, msgpack of that shard's records)
    frames: list[tuple[int, bytes]]
    #: the records, for tail followers only (empty when nobody follows)
    records: list[dict[str, Any]]


class Service:
    def __init__(self, config: Config, supervisor: Supervisor, metrics: Metrics, *, data_dir: str,
                 http_address: str | None = None) -> None:
        self.config = config
        self.supervisor = supervisor
        self.metrics = metrics
        self.n_shards = len(supervisor.slots)
        self.data_dir = data_dir
        self.http_address = http_address
        self._last_id = 0
        self._inflight = 0
        self._room = asyncio.Condition()
        self._boot = uuid.uuid4().hex[:8]
        #: (sequence number of the batch's last record, batch), oldest first; ~TAIL_RING records
        self._ring: deque[tuple[int, list[dict[str, Any]]]] = deque()
        self._ring_records = 0
        self._ring_seq = 0
        #: the ring is filled only while someone follows: an open HTTP tail stream, or a `tail` call
        #: in the last FOLLOW_GRACE_S seconds (tail -f polls every few seconds)
        self._subscribers = 0
        self._followed_until = 0.0
        self._ring_cond = asyncio.Condition()
        self._shard_inflight = [0] * self.n_shards
        self.alerts: Any = None
        #: daemon-side pre-ingest hooks from the config (imported once, here)
        self.hooks = HookRunner(config.hooks, errors=metrics.hook_errors, dropped=metrics.hook_dropped,
                                limits=config.limits)
        self._limits_wire = limits_to_wire(config.limits)
        #: records parsed and normalized by the shards (config parse_in; docs/design.md "Ingest")
        self.parse_in_shards = config.parse_in == "shards" or (
            config.parse_in == "auto" and self.n_shards >= (os.cpu_count() or 1))
        self._rpc: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "ping": self.ping, "ingest": self._rpc_ingest, "ingest_lines": self._rpc_ingest_lines,
            "query": self.query, "count": self.count, "aggregate": self.aggregate, "tail": self.tail,
            "stats": self.stats, "metrics": self._rpc_metrics, "flush": self.flush,
        }

    # --- ids ---------------------------------------------------------------------------------

    def _ids(self, n: int) -> range:
        """Unique, increasing ids: nanoseconds of the wall clock, bumped past the last one issued, so they
        stay unique across restarts as long as the clock does not jump back by more than the downtime."""
        first = max(self._last_id + 1, time.time_ns())
        self._last_id = first + n - 1
        return range(first, first + n)

    # --- ingest ------------------------------------------------------------------------------

    async def _admit(self, n: int) -> None:
        limit = self.config.max_inflight_records
        async with self._room:
            if self._inflight and self._inflight + n > limit:
                try:
                    await asyncio.wait_for(self._room.wait_for(lambda: not self._inflight or self._inflight + n <= limit),
                                           ADMIT_WAIT_S)
                except asyncio.TimeoutError:
                    raise Overloaded(f"{self._inflight} records are waiting to be stored; the limit is {limit} "
                                     "(max_inflight_records); retry after 1 s", retry_after_s=1) from None
            self._inflight += n
            self.metrics.inflight_records.set(self._inflight)

    async def _release(self, n: int) -> None:
        async with self._room:
            self._inflight -= n
            self.metrics.inflight_records.set(self._inflight)
            self._room.notify_all()

    def normalize(self, raws: list[Any], first_line: int, line_numbers: list[int] | None = None,
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        now_ns = time.time_ns()
        records: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        limits = self.config.limits
        for index, raw in enumerate(raws):
            try:
                records.append(normalize_record(raw, now_ns=now_ns, limits=limits))
            except BadRecord as exc:
                line = line_numbers[index] if line_numbers is not None else first_line + index
                rejected.append({"line": line, "reason": exc.message})
                self.metrics.rejected.labels(self.metrics.reason_label(exc.message)).inc()
        return records, rejected

    def _check_request(self, n: int, idempotency_key: Any) -> None:
        if n > self.config.max_batch_records:
            raise BadRequest(f"batch has {n} records; the limit is {self.config.max_batch_records} "
                             "(max_batch_records); send smaller batches")
        if idempotency_key is not None and (not isinstance(idempotency_key, str) or len(idempotency_key) > 1024):
            raise BadRequest("idempotency key must be a string of at most 1024 characters")

    async def ingest(self, raws: list[Any], *, idempotency_key: str | None = None, first_line: int = 1,
                     line_numbers: list[int] | None = None, pre_rejected: list[dict[str, Any]] | None = None,
                     json_native: bool = False) -> dict[str, Any]:
        """Normalize, route and store a batch; the answer comes once every target shard committed.

        ``json_native``: the caller parsed the records from JSON or text, so their values are what JSON
        can hold (no bytes, NaN or Infinity, which orjson would write as null); when the shards parse
        (``parse_in_shards``) the records go to them as JSON texts and are normalized there.  Records
        from the RPC (msgpack, which can hold those) are normalized here.

        Memory: while the shards store the batch (the longest part of a request) only the packed
        frames are kept, not the raw or normalized records; a caller that wants the raw records freed
        as well passes its only reference (see ``ingest_lines``)."""
        if not isinstance(raws, list):
            raise BadRequest(f"records must be a list of objects, got {type(raws).__name__}")
        self._check_request(len(raws), idempotency_key)
        if json_native and self.parse_in_shards and not self.hooks.active:
            numbers = line_numbers if line_numbers is not None else range(first_line, first_line + len(raws))
            texts = _json_texts(raws) if len(set(numbers)) == len(numbers) else None
            if texts is not None:
                del raws
                routed = route_lines(texts, self.n_shards, numbers=numbers)
                assert routed is not None  # every text is bytes
                lo, hi = (min(numbers), max(numbers)) if numbers else (first_line, first_line)
                return await self._ingest_routed(*routed, lo, hi, idempotency_key, pre_rejected or [])
        started = time.perf_counter()
        n = len(raws)
        await self._admit(n)
        try:
            batch = self._prepare(raws, first_line, line_numbers, pre_rejected, idempotency_key)
            del raws, line_numbers, pre_rejected
            await self._store([(i, "ingest", {"records_packed": packed}) for i, packed in batch.frames],
                              idempotency_key)
        finally:
            await self._release(n)
        self._ingested(batch.accepted, started)
        await self._publish(batch.records)
        # records a hook dropped are neither stored nor rejected: reported apart, only when there are any
        return {"accepted": batch.accepted, "rejected": batch.rejected,
                **({"dropped": batch.dropped} if batch.dropped else {})}

    async def _ingest_routed(self, parts: list[tuple[list[bytes], list[int]]], n_routed: int, lowest: int,
                             highest: int, idempotency_key: str | None,
                             pre_rejected: list[dict[str, Any]]) -> dict[str, Any]:
        """JSON texts routed unparsed: each shard parses, validates and normalizes its share
        (storage.jsonlines, the same code and wording as ``parse_lines`` + ``normalize``) and answers
        with its rejections.  Spreads the parsing over the shard processes instead of doing it all in
        the coordinator's one loop — the largest part of ingest CPU before storing.  Line numbers are
        distinct, from ``lowest`` to ``highest``; a record's id is its number plus a per-request base."""
        self._check_request(n_routed, idempotency_key)
        started = time.perf_counter()
        await self._admit(n_routed)
        try:
            ids = self._ids(highest - lowest + 1)
            follow = self._followed()
            common = {"id_base": ids.start - lowest, "now_ns": time.time_ns(), "limits": self._limits_wire,
                      **({"return_records": True} if follow else {})}
            results = await self._store([(i, "ingest_lines", {"lines": lines, "numbers": numbers, **common})
                                         for i, (lines, numbers) in enumerate(parts) if lines], idempotency_key)
        finally:
            await self._release(n_routed)
        accepted = sum(result.get("accepted", 0) for result in results)
        refused = [item for result in results for item in result.get("rejected", ())]
        for item in refused:
            self.metrics.rejected.labels(self.metrics.reason_label(item["reason"])).inc()
        rejected = sorted(pre_rejected + refused, key=lambda item: item["line"])
        self._ingested(accepted, started)
        records = sorted((r for result in results for r in result.get("records", ())), key=lambda r: r["id"]) \
            if follow else []
        await self._publish(records)
        return {"accepted": accepted, "rejected": rejected}

    async def _store(self, frames: list[tuple[int, str, dict[str, Any]]], idempotency_key: str | None) -> list[Any]:
        """Send each shard its frame (``(shard, op, args)``) concurrently, each keyed by the request's key
        plus the shard number; the shards' answers once all of them committed; then alerting."""
        key = idempotency_key if idempotency_key is not None else "auto:" + uuid.uuid4().hex
        results = await asyncio.gather(*(self._ingest_shard(i, op, {**args, "idempotency_key": f"{key}#{i}"})
                                         for i, op, args in frames), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                self.metrics.requests.labels("ingest", "error").inc()
                raise result
        if self.alerts is not None:
            try:
                self.alerts.observe(results)
            except Exception:  # the batch is durable already: alerting trouble must not fail it
                log.exception("alert evaluation failed for an ingested batch")
        return results

    def _ingested(self, accepted: int, started: float) -> None:
        self.metrics.ingested.inc(accepted)
        self.metrics.requests.labels("ingest", "ok").inc()
        self.metrics.ingest_latency.observe(time.perf_counter() - started)

    def _prepare(self, raws: list[Any], first_line: int, line_numbers: list[int] | None,
                 pre_rejected: list[dict[str, Any]] | None, idempotency_key: str | None) -> _Batch:
        """The CPU part of ingest: normalize, run hooks, assign ids, route, pack one frame per shard."""
        records, rejected = self.normalize(raws, first_line, line_numbers)
        dropped = 0
        if self.hooks.active:
            records, dropped = self.hooks.apply(records, time.time_ns())
        if pre_rejected:
            rejected = sorted(pre_rejected + rejected, key=lambda r: r["line"])
        for record, record_id in zip(records, self._ids(len(records))):
            record["id"] = record_id
        # packed once here; the shard writes these bytes to its WAL as they are
        frames = [(i, msgpack.packb(part, use_bin_type=True))
                  for i, part in enumerate(route(records, self.n_shards, idempotency_key)) if part]
        return _Batch(len(records), rejected, dropped, frames, records if self._followed() else [])

    async def _ingest_shard(self, shard_id: int, op: str, args: dict[str, Any]) -> Any:
        """Send one shard its part; if the shard dies meanwhile, wait for its restart and resend the same
        keyed frame (the shard stores it at most once) until the ingest deadline."""
        deadline = time.monotonic() + self.config.ingest_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                client = await self.supervisor.client(shard_id, wait_s=max(0.1, min(remaining, 10.0)))
                self._shard_inflight[shard_id] += 1
                self.metrics.shard_queue.labels(str(shard_id)).set(self._shard_inflight[shard_id])
                try:
                    return await client.call(op, args, timeout_s=max(0.1, remaining))
                finally:
                    self._shard_inflight[shard_id] -= 1
                    self.metrics.shard_queue.labels(str(shard_id)).set(self._shard_inflight[shard_id])
            except ShardUnavailable:
                if time.monotonic() >= deadline or self.supervisor.slots[shard_id].boot_failed:
                    raise ShardUnavailable(f"shard {shard_id} did not store the batch within "
                                           f"{self.config.ingest_timeout_s:.0f} s (ingest_timeout); nothing was "
                                           "acknowledged; retry with the same Idempotency-Key", retry_after_s=1)
                await asyncio.sleep(0.05)

    def parse_lines(self, lines: list[Any], fmt: str, first_line: int, *, text_parser: TextParser | None = None,
                    flush_text: bool = True) -> tuple[list[Any], list[int], list[dict[str, Any]]]:
        """JSON lines / text lines -> raw records, the numbers of their (first) lines, and lines rejected as
        unparsable.  ``text``: every line is text (coordinator.textlog: timestamps, levels, multi-line records
        joined); ``auto``: a line starting with ``{`` is JSON, the others text.  A caller streaming one input
        over several calls (a TCP connection) passes its own ``text_parser`` and ``flush_text=False`` until
        the input ends, so a stack trace split between calls stays one record."""
        if fmt not in ("jsonl", "text", "auto"):
            raise BadRequest(f"format {fmt!r} must be jsonl, text or auto")
        loads = orjson.loads
        json_only = fmt == "jsonl"
        if json_only:
            fast = _parse_json_lines(lines, first_line)
            if fast is not None:
                return fast
        raws: list[Any] = []
        numbers: list[int] = []
        rejected: list[dict[str, Any]] = []
        parser = text_parser
        if parser is None and not json_only:
            parser = TextParser(max_message_bytes=self.config.limits.max_message_bytes)

        def take(records: list[TextRecord]) -> None:
            for record in records:
                raws.append(record.raw)
                numbers.append(record.line)

        for index, line in enumerate(lines):
            number = first_line + index
            if not isinstance(line, (bytes, str)):
                rejected.append({"line": number, "reason": f"line must be text, got {type(line).__name__}"})
                continue
            stripped = line.strip()  # orjson parses bytes and str alike: no decoding on the JSON path
            if not stripped:
                continue
            if json_only or parser is None or (fmt == "auto" and stripped[:1] in (b"{", "{")):
                if parser is not None and parser.pending:
                    take(parser.flush())  # the text record before this line is complete
                try:
                    raws.append(loads(stripped))
                except orjson.JSONDecodeError as exc:
                    rejected.append({"line": number, "reason": json_error(exc)})
                    self.metrics.rejected.labels("json").inc()
                    continue
                numbers.append(number)
            else:
                take(parser.feed(line.decode("utf-8", "replace") if isinstance(line, bytes) else line, number))
        if parser is not None and flush_text:
            take(parser.flush())
        return raws, numbers, rejected

    async def ingest_lines(self, lines: list[Any], fmt: str = "jsonl", *, first_line: int = 1,
                           idempotency_key: str | None = None, text_parser: TextParser | None = None,
                           flush_text: bool = True) -> dict[str, Any]:
        if not isinstance(lines, list):
            raise BadRequest(f"lines must be a list of strings, got {type(lines).__name__}")
        if fmt == "jsonl" and self.parse_in_shards and not self.hooks.active:
            # the path a request takes depends only on it and the config (never on followers), so
            # a retry with the same idempotency key is routed exactly as the first attempt was
            routed = route_lines(lines, self.n_shards, first_line)
            if routed is not None:
                last_line = first_line + max(len(lines) - 1, 0)
                del lines
                return await self._ingest_routed(*routed, first_line, last_line, idempotency_key, [])
        raws, numbers, rejected = self.parse_lines(lines, fmt, first_line, text_parser=text_parser,
                                                   flush_text=flush_text)
        # hand the only references over: the lines and raw records are freed as soon as they are
        # normalized, not kept for the whole time the shards take to store the batch
        del lines
        stored = self.ingest(raws, idempotency_key=idempotency_key, line_numbers=numbers, pre_rejected=rejected,
                             json_native=True)
        del raws, numbers, rejected
        return await stored

    async def _rpc_ingest(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.ingest(args.get("records"), idempotency_key=args.get("idempotency_key"),
                                 first_line=_first_line(args))

    async def _rpc_ingest_lines(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.ingest_lines(args.get("lines"), str(args.get("format", "jsonl")), first_line=_first_line(args),
                                       idempotency_key=args.get("idempotency_key"))

    def _followed(self) -> bool:
        """Someone follows new records (tail -f): ingested batches are kept for them."""
        return bool(self._subscribers) or time.monotonic() <= self._followed_until

    async def _publish(self, records: list[dict[str, Any]]) -> None:
        """Keep an acknowledged batch for followers (tail -f): one ring entry per batch, numbered by
        the sequence number of its last record."""
        if not self._followed():
            if self._ring:  # nobody follows any more: free the copies
                self._ring.clear()
                self._ring_records = 0
            return  # nobody follows: keep no copies (tail without a cursor reads the store)
        if not records:
            return
        async with self._ring_cond:
            self._ring_seq += len(records)
            self._ring.append((self._ring_seq, records))
            self._ring_records += len(records)
            while self._ring_records - len(self._ring[0][1]) >= TAIL_RING:
                self._ring_records -= len(self._ring.popleft()[1])
            self._ring_cond.notify_all()

    def _ring_after(self, after: int) -> list[dict[str, Any]]:
        """Records of the ring numbered above ``after``, oldest first."""
        out: list[dict[str, Any]] = []
        for last_seq, batch in list(self._ring):
            if last_seq > after:
                first_seq = last_seq - len(batch) + 1
                out.extend(batch[max(0, after + 1 - first_seq):])
        return out

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
        self._followed_until = time.monotonic() + FOLLOW_GRACE_S
        cursor = params.get("cursor")
        node, _ = parse_filter({k: v for k, v in params.items() if k not in ("cursor", "wait_s", "limit")},
                               time.time_ns())
        limit = int(params.get("limit") or 10)
        if not cursor:
            seq = self._ring_seq
            result = await self.query({**{k: v for k, v in params.items() if k not in ("cursor", "wait_s")},
                                       "limit": limit, "sort": "desc"})
            return {"logs": list(reversed(result["logs"])), "cursor": f"{self._boot}:{seq}"}
        boot, _, seq_text = str(cursor).partition(":")
        if boot != self._boot or not seq_text.isdigit():
            return {"logs": [], "cursor": f"{self._boot}:{self._ring_seq}"}
        after = int(seq_text)
        wait_s = min(float(params.get("wait_s") or 0), MAX_TAIL_WAIT_S)
        deadline = time.monotonic() + wait_s
        while True:
            found = [r for r in self._ring_after(after) if q.matches(node, r)]
            newest = self._ring_seq
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return {"logs": [to_public(r) for r in found[-max(limit, 1000):]], "cursor": f"{self._boot}:{newest}"}
            after = newest
            async with self._ring_cond:
                try:
                    await asyncio.wait_for(self._ring_cond.wait_for(lambda: self._ring_seq > newest), remaining)
                except asyncio.TimeoutError:
                    pass

    async def subscribe(self, params: dict[str, Any]):
        """Async iterator of new matching logs (for the HTTP tail stream)."""
        node, _ = parse_filter(params, time.time_ns())
        after = self._ring_seq
        self._subscribers += 1
        try:
            async for record in self._follow(node, after):
                yield record
        finally:
            self._subscribers -= 1

    async def _follow(self, node: q.Node, after: int):  # noqa: ANN202 - an async generator
        while True:
            async with self._ring_cond:
                await self._ring_cond.wait_for(lambda: self._ring_seq > after)
            for record in self._ring_after(after):
                if q.matches(node, record):
                    yield to_public(record)
            after = self._ring_seq

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
        self.alerts = alerts
        self._rpc.update(alerts.ops)

    async def handle_rpc(self, op: str, args: dict[str, Any]) -> Any:
        method = self._rpc.get(op)
        if method is None:
            raise BadRequest(f"unknown operation {op!r}; expected one of {', '.join(sorted(self._rpc))}")
        return await method(args)


def _parse_json_lines(lines: list[Any], first_line: int) -> tuple[list[Any], list[int], list[dict[str, Any]]] | None:
    """``parse_lines`` for the common case — JSON lines, every line valid, blank lines only at
    the end — with the loop in C (``map``); None for anything else, which the general loop handles
    (and words the errors of)."""
    try:
        stripped = [line.strip() for line in lines]
    except (AttributeError, TypeError):
        return None
    while stripped and not stripped[-1]:
        stripped.pop()  # a body ending with a newline
    if not all(stripped):
        return None
    try:
        raws = list(map(orjson.loads, stripped))
    except (orjson.JSONDecodeError, TypeError):
        return None
    return raws, list(range(first_line, first_line + len(raws))), []


def _json_texts(raws: list[Any]) -> list[bytes] | None:
    """Each record as JSON text, for the shards to parse; None when one cannot be written as JSON
    (then the coordinator normalizes the batch, and words the problem)."""
    try:
        return list(map(orjson.dumps, raws))
    except (orjson.JSONEncodeError, TypeError):
        return None


def _first_line(args: dict[str, Any]) -> int:
    value = args.get("first_line", 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"first_line must be a non-negative integer, got {value!r}")
    return value
