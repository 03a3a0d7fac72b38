"""The coordinator's write path: from a request's records or lines to an acknowledgement.

Two ways, chosen by the request and the config alone (docs/design.md "Ingest"):

- parsed here: parse -> normalize + validate (storage.record) -> hooks -> stamp ids -> route by stable
  hash (coordinator.router) -> one msgpack frame per shard;
- parsed by the shards (``parse_in = shards``, the default, unless hooks are configured): JSON texts —
  JSON lines, Elasticsearch bulk documents, and records parsed here from Loki, text or syslog written
  back as JSON — routed unparsed (``route_lines``); each shard parses and normalizes its share
  (storage.jsonlines), which spreads the costliest step of ingest over the cores.

Either way the frames go to their shards concurrently and the client is acknowledged after every shard
committed.  Each per-shard frame carries an idempotency key — the client's key plus the shard number,
or a coordinator-made one — so when a shard dies mid-request the coordinator waits for its restart
and resends the same frame, and the shard stores it at most once.  In-flight records are bounded;
past the bound a request waits briefly, then gets a retryable ``Overloaded``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from coordinator.config import Config
from coordinator.follow import FollowRing
from coordinator.hooks import HookRunner
from coordinator.metrics import Metrics
from coordinator.router import route, route_lines
from coordinator.supervisor import Supervisor
from coordinator.textlog import TextParser, TextRecord
from storage.errors import BadRecord, BadRequest, Overloaded, ShardUnavailable
from storage.jsonlines import ecs_raws, json_error, limits_to_wire
from storage.record import normalize_record

log = logging.getLogger("shardlog.ingest")

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


class Ingest:
    """The write path of one daemon: ids, admission (the in-flight bound), parsing where the config
    says, routing, and the per-shard sends with their retries."""

    def __init__(self, config: Config, supervisor: Supervisor, metrics: Metrics, follow: FollowRing) -> None:
        self.config = config
        self.supervisor = supervisor
        self.metrics = metrics
        self.follow = follow
        self.n_shards = len(supervisor.slots)
        self._last_id = 0
        #: records accepted but not yet acknowledged by every shard (bounded: max_inflight_records)
        self.inflight = 0
        self._room = asyncio.Condition()
        self._shard_inflight = [0] * self.n_shards
        #: coordinator.alert_service.AlertService, fed every acknowledged batch's rule counts
        self.alerts: Any = None
        #: daemon-side pre-ingest hooks from the config (imported once, here)
        self.hooks = HookRunner(config.hooks, errors=metrics.hook_errors, dropped=metrics.hook_dropped,
                                limits=config.limits)
        self._limits_wire = limits_to_wire(config.limits)
        #: records parsed and normalized by the shards (config parse_in; docs/design.md "Ingest")
        self.parse_in_shards = config.parse_in == "shards"

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
            if self.inflight and self.inflight + n > limit:
                try:
                    await asyncio.wait_for(self._room.wait_for(lambda: not self.inflight or self.inflight + n <= limit),
                                           ADMIT_WAIT_S)
                except asyncio.TimeoutError:
                    raise Overloaded(f"{self.inflight} records are waiting to be stored; the limit is {limit} "
                                     "(max_inflight_records); retry after 1 s", retry_after_s=1) from None
            self.inflight += n
            self.metrics.inflight_records.set(self.inflight)

    async def _release(self, n: int) -> None:
        async with self._room:
            self.inflight -= n
            self.metrics.inflight_records.set(self.inflight)
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
            distinct = line_numbers is None or len(set(line_numbers)) == len(line_numbers)
            texts = _json_texts(raws) if distinct else None
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
        await self.follow.publish(batch.records)
        # records a hook dropped are neither stored nor rejected: reported apart, only when there are any
        return {"accepted": batch.accepted, "rejected": batch.rejected,
                **({"dropped": batch.dropped} if batch.dropped else {})}

    async def ingest_documents(self, documents: list[bytes], indexes: list[str], *,
                               idempotency_key: str | None = None) -> dict[str, Any]:
        """Elasticsearch bulk documents (JSON texts, unparsed; coordinator.esbulk) with their indexes,
        numbered from 1 in the order given: mapped from ECS (storage.ecs), normalized and stored —
        by the shards when they parse, else here."""
        if self.parse_in_shards and not self.hooks.active:
            parts, n_routed = route_lines(documents, self.n_shards)  # type: ignore[misc]  # all bytes
            extra = [{"ecs_indexes": [indexes[number - 1] for number in numbers]} for _, numbers in parts]
            return await self._ingest_routed(parts, n_routed, 1, max(len(documents), 1), idempotency_key, [],
                                             extra=extra)
        raws, numbers, rejected = ecs_raws(documents, indexes)
        for _ in rejected:
            self.metrics.rejected.labels("json").inc()
        return await self.ingest(raws, idempotency_key=idempotency_key, line_numbers=numbers, pre_rejected=rejected)

    async def _ingest_routed(self, parts: list[tuple[list[bytes], list[int]]], n_routed: int, lowest: int,
                             highest: int, idempotency_key: str | None, pre_rejected: list[dict[str, Any]],
                             extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """JSON texts routed unparsed: each shard parses, validates and normalizes its share
        (storage.jsonlines, the same code and wording as ``parse_lines`` + ``normalize``) and answers
        with its rejections.  Spreads the parsing over the shard processes instead of doing it all in
        the coordinator's one loop — the largest part of ingest CPU before storing.  Line numbers are
        distinct, from ``lowest`` to ``highest``; a record's id is its number plus a per-request base.
        ``extra[i]``: more arguments for shard i's frame."""
        self._check_request(n_routed, idempotency_key)
        started = time.perf_counter()
        await self._admit(n_routed)
        try:
            ids = self._ids(highest - lowest + 1)
            follow = self.follow.followed()
            common = {"id_base": ids.start - lowest, "now_ns": time.time_ns(), "limits": self._limits_wire,
                      **({"return_records": True} if follow else {})}
            results = await self._store([(i, "ingest_lines", {"lines": lines, "numbers": numbers, **common,
                                                               **(extra[i] if extra else {})})
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
        await self.follow.publish(records)
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
        return _Batch(len(records), rejected, dropped, frames, records if self.follow.followed() else [])

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
