"""Alerting inside the daemon: keeps shards counting the active rules, feeds their counts to the
engine, runs the 1 s evaluation timer, rebuilds windows at start, hands events to the notifiers,
and serves the ``alerts_*`` RPC operations (docs/rpc.md).

Nothing here blocks ingest: the engine's work per acknowledgement is a few dict updates; the
durable state writes of fired and resolved alerts run in one writer thread, in order, and their
events are announced (watchers, notifiers, metrics) only once those writes are done; notifications
go to ``Notifier.send``, which only enqueues.  Reads of the state (history) wait for pending writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Protocol

from coordinator.alerts import AlertEngine, Rule
from coordinator.metrics import Metrics
from coordinator.supervisor import Supervisor
from shardd.client import AsyncClient
from storage.errors import BadQuery, BadRequest, ShardlogError
from storage.timefmt import parse_time_arg

log = logging.getLogger("shardlog.alerting")

TICK_S = 1.0
#: alert events kept for `alerts watch` followers
WATCH_RING = 1_000
MAX_WATCH_WAIT_S = 30.0
NS_PER_S = 1_000_000_000


class Notifier(Protocol):
    def send(self, event: dict[str, Any]) -> None:
        """Queue an alert event (fired or resolved) for delivery; never blocks."""

    async def close(self) -> None:
        """Deliver what is queued (bounded), then stop; whatever is left is logged as lost."""


class AlertService:
    def __init__(self, engine: AlertEngine, supervisor: Supervisor, metrics: Metrics,
                 notifiers: list[Notifier] | None = None) -> None:
        self.engine = engine
        self.supervisor = supervisor
        self.metrics = metrics
        self.notifiers = list(notifiers or [])
        self._events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=WATCH_RING)
        self._event_seq = 0
        self._event_cond = asyncio.Condition()
        self._task: asyncio.Task | None = None
        # the engine queues its state writes; _after() runs them here, off the event loop
        engine.deferred = []
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alert-state")
        supervisor.prepare = self._prepare_shard
        self._ops = {
            "alerts_add": self.rpc_add, "alerts_list": self.rpc_list, "alerts_remove": self.rpc_remove,
            "alerts_enable": self.rpc_enable, "alerts_disable": self.rpc_disable,
            "alerts_history": self.rpc_history, "alerts_import": self.rpc_import, "alerts_watch": self.rpc_watch,
        }

    @property
    def ops(self) -> dict[str, Any]:
        return self._ops

    # --- shards ----------------------------------------------------------------------------------

    def _rules_wire(self) -> dict[str, Any]:
        return {"rules": [spec.to_wire() for spec in self.engine.specs()]}

    async def _prepare_shard(self, client: AsyncClient) -> None:
        await client.call("set_rules", self._rules_wire(), timeout_s=10.0)

    async def _broadcast_rules(self) -> None:
        """Tell every connected shard the active rules (a restarting one gets them in prepare)."""
        args = self._rules_wire()
        for slot in self.supervisor.slots:
            if slot.up and slot.client is not None:
                try:
                    await slot.client.call("set_rules", args, timeout_s=10.0)
                except ShardlogError as exc:
                    log.warning("shard %d did not take the alert rules: %s", slot.shard_id, exc.message)

    # --- counts and evaluation -----------------------------------------------------------------

    def observe(self, shard_results: list[Any]) -> None:
        """Counts from ingest acknowledgements (one result per shard that took part)."""
        for result in shard_results:
            counts = result.get("alerts") if isinstance(result, Mapping) else None
            if counts:
                self._after(self.engine.observe(counts))

    def _after(self, events: list[dict[str, Any]]) -> None:
        """Run the state writes the engine queued (in the writer thread, in order), then announce
        ``events``: an alert is durable before anyone hears of it, and no fsync stalls the loop."""
        writes, self.engine.deferred = self.engine.deferred, []
        if not writes:
            self._publish(events)
            return

        def write_all() -> None:
            for write in writes:
                write()

        def announce(done: asyncio.Future[None]) -> None:
            if done.cancelled():
                return
            error = done.exception()
            if error is not None:
                log.error("alert state could not be written (%s); %d alert events are not announced",
                          error, len(events))
                return
            self._publish(events)

        asyncio.get_running_loop().run_in_executor(self._writer, write_all).add_done_callback(announce)

    async def _written(self) -> None:
        """Wait until every state write queued so far is done."""
        await asyncio.get_running_loop().run_in_executor(self._writer, lambda: None)

    def _publish(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event.get("status") == "firing":
                self.metrics.alerts_fired.labels(event["rule"], event["severity"]).inc()
            self._event_seq += 1
            self._events.append((self._event_seq, event))
            for notifier in self.notifiers:
                try:
                    notifier.send(event)
                except Exception:  # a broken notifier must never stop ingest
                    log.exception("notifier %r failed to queue an alert", notifier)
        if events:
            asyncio.ensure_future(self._wake_watchers())
        self.metrics.rules_firing.set(sum(1 for s in self.engine.groups.values() if s.firing))

    async def _wake_watchers(self) -> None:
        async with self._event_cond:
            self._event_cond.notify_all()

    async def rebuild(self) -> None:
        """At start: seed each enabled rule's window from the shards' stored records."""
        now_ns = time.time_ns()
        for rule in list(self.engine.rules.values()):
            if not rule.enabled:
                continue
            args = {"rule": rule.spec().to_wire(), "from_ns": now_ns - rule.window_s * NS_PER_S,
                    "to_ns": now_ns + 300 * NS_PER_S}
            counts: list[Any] = []
            samples: list[Any] = []
            for slot in self.supervisor.slots:
                try:
                    client = await self.supervisor.client(slot.shard_id)
                    part = await client.call("rule_counts", args, timeout_s=30.0)
                except ShardlogError as exc:
                    log.warning("cannot rebuild the window of rule %r from shard %d: %s", rule.name, slot.shard_id,
                                exc.message)
                    continue
                counts.extend(part.get("counts", []))
                samples.extend(part.get("samples", []))
            self.engine.rebuild(rule.name, counts, samples)
        fired, resolved = self.engine.tick()
        self._after(fired + resolved)

    async def run(self) -> None:
        """The 1 s timer: windows slide and cooldowns expire without waiting for the next log."""
        while True:
            await asyncio.sleep(TICK_S)
            try:
                fired, resolved = self.engine.tick()
                self._after(fired + resolved)
            except Exception:
                log.exception("alert evaluation failed; trying again in %.0f s", TICK_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="alerts-tick")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._written()  # queued alert state is durable before the state store closes
        self._writer.shutdown(wait=True)

    # --- RPC -----------------------------------------------------------------------------------

    async def rpc_add(self, args: dict[str, Any]) -> dict[str, Any]:
        """args: {"rule": {...}, "replace": bool}; without replace an existing name is refused."""
        rule = Rule.from_dict(args.get("rule"))
        self.engine.add_rule(rule, replace=bool(args.get("replace", False)))
        await self._broadcast_rules()
        return rule.to_dict()

    async def rpc_list(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"rules": self.engine.list_rules()}

    async def rpc_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        self.engine.remove_rule(_name(args))
        await self._broadcast_rules()
        return {}

    async def rpc_enable(self, args: dict[str, Any]) -> dict[str, Any]:
        rule = self.engine.set_enabled(_name(args), True)
        await self._broadcast_rules()
        return rule.to_dict()

    async def rpc_disable(self, args: dict[str, Any]) -> dict[str, Any]:
        rule = self.engine.set_enabled(_name(args), False)
        await self._broadcast_rules()
        return rule.to_dict()

    async def rpc_history(self, args: dict[str, Any]) -> dict[str, Any]:
        since = args.get("since")
        since_ns = parse_time_arg(str(since), now_ns=time.time_ns()) if since not in (None, "") else None
        limit = args.get("limit", 1000)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 100_000:
            raise BadQuery(f"limit {limit!r} must be an integer from 1 to 100000")
        await self._written()  # alerts fired by earlier requests are in the history
        return {"alerts": self.engine.history(since_ns, limit)}

    async def rpc_import(self, args: dict[str, Any]) -> dict[str, Any]:
        alerts = args.get("alerts")
        if not isinstance(alerts, list):
            raise BadRequest("alerts must be a list of alert objects")
        return {"imported": self.engine.import_history(alerts)}

    async def rpc_watch(self, args: dict[str, Any]) -> dict[str, Any]:
        """Alert events after ``cursor`` (long-poll up to wait_s); without a cursor: the current cursor."""
        cursor = args.get("cursor")
        if cursor is None:
            return {"events": [], "cursor": self._event_seq}
        if not isinstance(cursor, int) or isinstance(cursor, bool):
            raise BadRequest(f"cursor must be an integer, got {cursor!r}")
        wait_s = min(float(args.get("wait_s") or 0), MAX_WATCH_WAIT_S)
        if self._event_seq <= cursor and wait_s > 0:
            async with self._event_cond:
                try:
                    await asyncio.wait_for(self._event_cond.wait_for(lambda: self._event_seq > cursor), wait_s)
                except asyncio.TimeoutError:
                    pass
        events = [event for seq, event in list(self._events) if seq > cursor]
        return {"events": events, "cursor": self._event_seq}


def _name(args: Mapping[str, Any]) -> str:
    name = args.get("name")
    if not isinstance(name, str) or not name:
        raise BadQuery("give the alert rule's name")
    return name

