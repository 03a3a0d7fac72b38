"""Daemon-side pre-ingest hooks: ``hooks = ["module:function", ...]`` in the config file (or
``SHARDLOG_HOOKS="module:function,..."``).

This module owns naming, loading and running them.  The service runs them on every record of every
ingest path (RPC, HTTP, TCP, syslog, Loki, Elasticsearch) after normalization and before routing.
Guarantees:

- Every entry is checked when the config is loaded (form, importable, callable) and all problems
  are reported together; the functions are imported once, at daemon start.
- A hook is called with a copy of one record in the stored shape -- ``ts_ns`` (int ns since the
  epoch, UTC), ``level``, ``message``, ``source``, ``tags`` (list), ``metadata`` (flat dict),
  ``thread_id``, ``request_id``, ``user_id`` -- and returns the record to store (a dict: the same
  shape, changed or not, or any shape a sender may send, e.g. ``timestamp`` instead of ``ts_ns`` and
  extra top-level keys, which become metadata) or ``None`` to drop it.  Hooks run in the configured
  order, each on the previous one's result.
- What a hook returns is normalized and checked again like an incoming record, so a hook cannot
  store what a sender could not.
- A dropped record is counted (``shardlog_hook_dropped_total{hook}``) and reported as ``dropped``
  in the ingest answer, not as a rejection.  A hook that raises, or returns something that is not
  a valid record, is counted (``shardlog_hook_errors_total{hook}``) and logged -- at most once per
  ``LOG_EVERY_S`` per hook, with the number of errors not logged -- and the record goes on exactly
  as it was before that hook: a broken hook never loses data.
- Hooks run synchronously on the coordinator's event loop: they must be quick and must not block
  (no network calls); a slow hook slows every ingest.  A hook that drops records should decide from
  the record alone, so a retried request (same idempotency key) stores what its first attempt did.
"""

from __future__ import annotations

import importlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from storage.errors import BadRecord
from storage.record import DEFAULT_LIMITS, Limits, normalize_record
from storage.timefmt import format_timestamp

log = logging.getLogger("shardlog.hooks")

#: one log line per failing hook per this many seconds; the rest are counted into the next line
LOG_EVERY_S = 10.0

Hook = Callable[[dict[str, Any]], Any]
_SPEC_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", re.ASCII)
_HELP = "write each entry as 'module:function', e.g. hooks = [\"myhooks:enrich\"]"


def parse_hook_specs(value: Any) -> tuple[tuple[str, ...], list[str]]:
    """(well-formed entries, problems) of the ``hooks`` setting: a list of strings (TOML) or a
    comma-separated string (environment).  Malformed entries are problems, so the caller can still
    check the others and report everything together."""
    if isinstance(value, str):
        items: list[Any] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return (), [f"hooks must be a list of 'module:function' strings, got {type(value).__name__}; {_HELP}"]
    good = tuple(item for item in items if isinstance(item, str) and _SPEC_RE.fullmatch(item) is not None)
    bad = [item for item in items if item not in good]
    problems = [f"hooks entries {bad!r} are not 'module:function'; {_HELP}"] if bad else []
    return good, problems


def resolve_hook(spec: str) -> Hook:
    """Import ``module:function`` (the function may be a dotted attribute path); ValueError saying
    what is wrong and how to fix it."""
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while it is imported
        raise ValueError(f"hooks entry {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
                         "put it on the daemon's PYTHONPATH") from None
    for name in attribute.split("."):
        if not hasattr(target, name):
            raise ValueError(f"hooks entry {spec!r}: {module_name!r} has no attribute {attribute!r}; check the "
                             "function's name")
        target = getattr(target, name)
    if not callable(target):
        raise ValueError(f"hooks entry {spec!r}: {attribute!r} is a {type(target).__name__}, not a function")
    return target


def check_hooks(specs: Iterable[str]) -> list[str]:
    """Every problem with loading these hooks (empty when all import and are callable)."""
    problems = []
    for spec in specs:
        try:
            resolve_hook(spec)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


@dataclass
class _HookState:
    spec: str
    fn: Hook
    #: errors since the last log line, and when that was (monotonic s); touched only on the loop
    unlogged_errors: int = 0
    last_log_s: float = float("-inf")


class HookRunner:
    """The configured hooks of one daemon, applied to batches of normalized records.
    ``errors`` / ``dropped`` are Prometheus counters labeled by hook (or None in tests)."""

    def __init__(self, specs: Iterable[str], *, errors: Any = None, dropped: Any = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self._hooks = [_HookState(spec, resolve_hook(spec)) for spec in specs]
        self._errors = errors
        self._dropped = dropped
        self._limits = limits

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def apply(self, records: list[dict[str, Any]], now_ns: int) -> tuple[list[dict[str, Any]], int]:
        """(records to store, number dropped) after every hook ran on every record."""
        if not self._hooks:
            return records, 0
        kept: list[dict[str, Any]] = []
        dropped = 0
        for record in records:
            current: dict[str, Any] | None = record
            for hook in self._hooks:
                current = self._run(hook, current, now_ns)
                if current is None:
                    break
            if current is None:
                dropped += 1
            else:
                kept.append(current)
        return kept, dropped

    def _run(self, hook: _HookState, record: dict[str, Any], now_ns: int) -> dict[str, Any] | None:
        # the hook gets a copy: one that edits in place and then raises must not leave a half-edited record
        argument = {**record, "tags": list(record["tags"]), "metadata": dict(record["metadata"])}
        try:
            result = hook.fn(argument)
        except Exception as exc:
            self._failed(hook, f"raised {type(exc).__name__}: {exc}", record)
            return record
        if result is None:
            if self._dropped is not None:
                self._dropped.labels(hook.spec).inc()
            return None
        if not isinstance(result, dict):
            self._failed(hook, f"returned a {type(result).__name__}; return the record (a dict) or None", record)
            return record
        try:
            return self._normalize(result, now_ns)
        except BadRecord as exc:
            self._failed(hook, f"returned an invalid record: {exc.message}", record)
            return record

    def _normalize(self, result: dict[str, Any], now_ns: int) -> dict[str, Any]:
        raw = result
        ts_ns = result.get("ts_ns")
        if "ts_ns" in result:
            raw = {key: value for key, value in result.items() if key != "ts_ns"}
            if "timestamp" not in raw and type(ts_ns) is int:
                # as text: an int would be read as s/ms/µs/ns by magnitude, and a 1970 time is small
                try:
                    raw["timestamp"] = format_timestamp(ts_ns)
                except (OverflowError, ValueError):
                    raise BadRecord(f"ts_ns {ts_ns} is outside the storable range") from None
            elif "timestamp" not in raw:
                raise BadRecord(f"ts_ns must be an integer of ns since the epoch, got {type(ts_ns).__name__}")
        return normalize_record(raw, now_ns=now_ns, limits=self._limits)

    def _failed(self, hook: _HookState, what: str, record: dict[str, Any]) -> None:
        if self._errors is not None:
            self._errors.labels(hook.spec).inc()
        hook.unlogged_errors += 1
        now_s = time.monotonic()
        if now_s - hook.last_log_s >= LOG_EVERY_S:
            others = hook.unlogged_errors - 1
            log.warning("hook %s %s; the record was stored as it was before this hook (message %r)%s", hook.spec,
                        what, str(record.get("message", ""))[:80],
                        f"; {others} more errors of this hook since the last report" if others else "")
            hook.unlogged_errors = 0
            hook.last_log_s = now_s
