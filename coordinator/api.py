"""The Python API (DESIGN §9): the seed engine's names and semantics, backed by the daemon.

``LogAnalyticsEngine`` keeps the seed's methods (``ingest_log``, ``query_logs``, ``aggregate_logs``,
``get_stats``, ...) but stores nothing itself: every call is an RPC over the coordinator's unix
socket (docs/rpc.md).  With no address it starts a private daemon on a temporary data dir and stops
it on ``close()``, context exit, garbage collection or interpreter exit; ``connect()`` uses a
running daemon instead.

Guarantees:

* Importing this module never loads LMDB (``lmdb`` stays out of ``sys.modules``): it uses only the
  wire protocol and the pure ``storage`` modules (errors, query model, time formats).
* Thread safety: one engine may be used from many threads.  The RPC client serializes calls on its
  own lock; the engine's own mutable state (the pre-ingest hooks) is guarded by ``_hooks_lock``, and
  each ingest works on a snapshot of the hooks.
* Ingest batches carry an idempotency key and are retried on ``ShardUnavailable`` / ``Overloaded``
  (``call_retrying``), so a daemon hiccup neither loses nor duplicates records.
* Errors are ``storage.errors`` classes (``BadQuery`` for a bad filter, ``ShardUnavailable`` when the
  daemon cannot be reached or did not start).

Alerting keeps the seed's signatures: ``add_alert_rule`` adds or replaces a rule in the daemon
(``alerts_add``); ``add_alert_notification_hook`` calls ``fn(alert_dict)`` for every alert fired
after it was added, from one background thread that long-polls ``alerts_watch`` on its own
connection (a hook that raises is logged and the thread goes on; ``close()`` stops it);
``get_alerts`` reads the daemon's alert history (newest last); ``persist_alerts_to_file`` /
``load_alerts_from_file`` write and read that history as JSON lines.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from coordinator.config import socket_path_for
from shardd.client import Client
from storage.errors import BadQuery, BadRecord, Overloaded, ShardlogError, ShardUnavailable
from storage.filters import filters_to_node
from storage.levels import normalize_level
from storage.querytext import format_query
from storage.record import TS_INVALID_KEY, TS_ORIGINAL_KEY
from storage.timefmt import format_timestamp, parse_timestamp

__all__ = [
    "AlertRule",
    "AlertSeverity",
    "LogAnalyticsEngine",
    "LogEntry",
    "call_retrying",
]

log = logging.getLogger(__name__)

#: Records per ingest call: big enough to amortize the durable commit, small enough that a retry
#: resends little and a frame stays far below the 64 MiB limit.
INGEST_BATCH_RECORDS = 5_000
#: Bytes of raw lines per ingest call, whatever the line count (a few huge lines must not make a
#: frame that the protocol refuses).
INGEST_BATCH_BYTES = 8 * 1024 * 1024
#: Retries of one ingest batch on a retryable error, with exponential backoff from RETRY_FIRST_DELAY_S.
RETRY_ATTEMPTS = 6
RETRY_FIRST_DELAY_S = 0.1
RETRY_MAX_DELAY_S = 5.0
#: How long close() waits after SIGTERM before SIGKILL.  The daemon's graceful stop seals and
#: syncs each shard; a few seconds is plenty on a healthy machine.
STOP_GRACE_S = 15.0
#: Lines of the private daemon's log quoted when it fails to start.
LOG_TAIL_LINES = 20
#: The alert-hook thread's long-poll: the daemon holds ``alerts_watch`` up to this long.
ALERT_WATCH_WAIT_S = 10.0
#: After a failed long-poll (daemon restarting), the hook thread waits this long, doubling up to 5 s.
ALERT_WATCH_RETRY_S = 0.2
#: Alert history entries read at once (the daemon keeps at most this many).
HISTORY_LIMIT = 100_000
#: Alerts per ``alerts_import`` call: far below the frame limit even with their sample logs.
ALERT_IMPORT_BATCH = 1_000
#: The project root (parent of the ``cli`` and ``coordinator`` packages), put on the private
#: daemon's PYTHONPATH so ``-m cli.main`` works even when shardlog is not pip-installed.
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

T = TypeVar("T")


# --- data classes -------------------------------------------------------------------------------


class AlertSeverity(str, Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


def _datetime_from_ns(ts_ns: int) -> datetime:
    # Integer arithmetic: a float of ns since 1970 has only ~0.25 µs of precision left.
    return _EPOCH + timedelta(microseconds=ts_ns // 1_000)


@dataclass
class LogEntry:
    """One log record as the seed engine's users know it.  A naive ``timestamp`` is UTC."""

    timestamp: datetime
    level: str
    message: str
    source: str = ""
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    thread_id: str | None = None
    request_id: str | None = None
    user_id: str | None = None
    #: assigned by the daemon at ingest; None for an entry not yet stored
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of DESIGN §2 with an RFC 3339 UTC timestamp."""
        ts_ns = parse_timestamp(self.timestamp)
        if ts_ns is None:
            raise BadRecord(f"timestamp {self.timestamp!r:.80} is not a datetime in the supported range; "
                            "give a datetime (naive = UTC)")
        return {
            "id": self.id,
            "timestamp": format_timestamp(ts_ns),
            "level": self.level,
            "message": self.message,
            "source": self.source,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "thread_id": self.thread_id,
            "request_id": self.request_id,
            "user_id": self.user_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LogEntry":
        """An entry from the JSON shape (as ``to_dict`` and the daemon produce it).  ``timestamp``
        may be any form DESIGN §2 accepts; a missing or unparsable one becomes now with
        ``metadata._ts_invalid`` (and the original in ``metadata._ts_original``).  ``level`` is normalized as the
        daemon stores it (``warning`` -> ``WARN``), so a pre-ingest hook sees the stored level."""
        if not isinstance(data, dict):
            raise BadRecord(f"a log entry must be a dict, got {type(data).__name__}")
        metadata = dict(data.get("metadata") or {})
        raw_ts = data.get("timestamp")
        ts_ns = None if raw_ts is None else parse_timestamp(raw_ts)
        if ts_ns is None:
            # As the daemon does (DESIGN §2): the ingest time, flagged, with the original kept.
            ts_ns = time.time_ns()
            metadata[TS_INVALID_KEY] = True
            if raw_ts is not None:
                metadata[TS_ORIGINAL_KEY] = str(raw_ts)
        tags = data.get("tags") or []
        record_id = data.get("id")
        return cls(
            timestamp=_datetime_from_ns(ts_ns),
            level=normalize_level(data.get("level")),
            message=str(data.get("message") or ""),
            source=str(data.get("source") or ""),
            tags=[tags] if isinstance(tags, str) else list(tags),
            metadata=metadata,
            thread_id=data.get("thread_id"),
            request_id=data.get("request_id"),
            user_id=data.get("user_id"),
            id=record_id if isinstance(record_id, int) and not isinstance(record_id, bool) else None,
        )


@dataclass
class AlertRule:
    """An alert rule as the seed defined it.  ``conditions`` is the seed's filter dict or a query
    string; ``group_by`` (a field such as ``source``) makes the rule count and fire per value."""

    name: str
    description: str = ""
    conditions: dict[str, Any] | str = field(default_factory=dict)
    severity: AlertSeverity = AlertSeverity.MEDIUM
    threshold: int = 1
    time_window: timedelta = timedelta(minutes=5)
    cooldown: timedelta = timedelta(minutes=10)
    enabled: bool = True
    group_by: str | None = None


# --- RPC helpers --------------------------------------------------------------------------------


def call_retrying(client: Client, op: str, args: dict[str, Any], *, attempts: int = RETRY_ATTEMPTS,
                  first_delay_s: float = RETRY_FIRST_DELAY_S, max_delay_s: float = RETRY_MAX_DELAY_S,
                  sleep: Callable[[float], None] = time.sleep) -> Any:
    """``client.call(op, args)``, retried on ``ShardUnavailable`` / ``Overloaded`` with exponential
    backoff (honouring ``retry_after_s``).  Only safe for idempotent calls: ingest must carry an
    idempotency key, so a batch the daemon stored before the connection dropped is not stored twice."""
    delay_s = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return client.call(op, args)
        except (ShardUnavailable, Overloaded) as err:
            if attempt == attempts:
                raise
            hinted = err.details.get("retry_after_s")
            wait_s = delay_s
            if isinstance(hinted, (int, float)) and not isinstance(hinted, bool) and hinted > 0:
                wait_s = max(wait_s, float(hinted))
            log.info("%s failed (%s); retry %d of %d in %.1f s", op, err.message, attempt, attempts - 1, wait_s)
            sleep(min(wait_s, max_delay_s))
            delay_s = min(delay_s * 2, max_delay_s)
    raise AssertionError("unreachable: the loop returns or raises")


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _interval_text(value: timedelta | str | int | float) -> str:
    """A request ``interval``: timedelta -> "90s" / "1500ms"; a number is seconds; text as is."""
    if isinstance(value, timedelta):
        total_us = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        if total_us <= 0:
            raise BadQuery(f"time_interval {value} must be positive, e.g. timedelta(minutes=1)")
        return f"{total_us // 1_000_000}s" if total_us % 1_000_000 == 0 else f"{total_us}us"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value}s"
    if isinstance(value, str):
        return value
    raise BadQuery(f"time_interval {value!r:.60} must be a timedelta, a number of seconds or text such as '1m'")


# --- the private daemon -------------------------------------------------------------------------


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no daemon log)"
    tail = text.strip().splitlines()[-lines:]
    return " | ".join(tail) if tail else "(the daemon log is empty)"


def _stop_private_daemon(clients: list[Client], process: subprocess.Popen[bytes] | None, log_file: Any,
                         tmp_dir: Path | None) -> None:
    """Stop order: close our connections, SIGTERM, wait up to STOP_GRACE_S, SIGKILL, reap, remove
    the temporary dir.  Module-level so ``weakref.finalize`` holds no reference to the engine."""
    for client in clients:
        client.close()
    if process is not None and process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("private shardlog daemon (pid %d) ignored SIGTERM for %.0f s; killing it",
                        process.pid, STOP_GRACE_S)
            process.kill()
            process.wait()
        except ProcessLookupError:
            pass
    if log_file is not None:
        log_file.close()
    if tmp_dir is not None:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _seconds_arg(value: timedelta | int | float | str) -> int | float | str:
    """A rule's window / cooldown for the daemon: a timedelta as seconds, numbers and text as given."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _time_ns(value: datetime | str | int | float, name: str) -> int:
    ts_ns = parse_timestamp(value)
    if ts_ns is None:
        raise BadQuery(f"{name} {value!r:.80} is not a datetime or timestamp; give a datetime (naive = UTC)")
    return ts_ns


class _AlertWatcher(threading.Thread):
    """The thread behind ``add_alert_notification_hook``: long-polls ``alerts_watch`` on its own
    client and calls every hook with each fired alert.  It holds no reference to the engine (so an
    engine that is dropped without ``close()`` is still collected, and its finalizer stops this).

    ``hooks`` is replaced, never mutated (a snapshot is read per batch of events); ``_stopping``
    ends the loop; closing the client wakes a long-poll in progress."""

    def __init__(self, client: Client) -> None:
        super().__init__(name="shardlog-alert-hooks", daemon=True)
        self.client = client
        self.hooks: tuple[Callable[[dict[str, Any]], None], ...] = ()
        self._stopping = threading.Event()
        # taken now, in the caller's thread: every alert fired after add_alert_notification_hook
        # returned reaches the hook
        self.cursor = int(client.call("alerts_watch", {})["cursor"])

    def request_stop(self) -> None:
        self._stopping.set()
        self.client.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.request_stop()
        if self is not threading.current_thread():  # a hook may close the engine
            self.join(timeout_s)

    def run(self) -> None:
        retry_s = ALERT_WATCH_RETRY_S
        while not self._stopping.is_set():
            try:
                answer = self.client.call("alerts_watch", {"cursor": self.cursor, "wait_s": ALERT_WATCH_WAIT_S})
            except ShardlogError as exc:
                if self._stopping.is_set():
                    return
                log.warning("alert notification hooks: cannot poll the daemon (%s); retrying in %.1f s",
                            exc.message, retry_s)
                self._stopping.wait(retry_s)
                retry_s = min(retry_s * 2, 5.0)
                continue
            retry_s = ALERT_WATCH_RETRY_S
            hooks = self.hooks
            for event in answer.get("events") or []:
                if event.get("status") != "firing":
                    continue
                for hook in hooks:
                    try:
                        hook(dict(event))
                    except Exception:  # one broken hook must not silence the others or later alerts
                        log.exception("alert notification hook %r failed for alert %r", hook, event.get("rule"))
            # a restarted daemon counts events from 0 again: follow its cursor
            self.cursor = int(answer.get("cursor", self.cursor))


# --- the engine ---------------------------------------------------------------------------------


PreIngestHook = Callable[[LogEntry], "LogEntry | None"]


class LogAnalyticsEngine:
    """The seed engine's API on top of a shardlog daemon (see the module docstring)."""

    def __init__(self, *, data_dir: str | os.PathLike[str] | None = None, shards: int = 2,
                 http: str | None = None, startup_timeout_s: float = 30.0,
                 _socket_path: str | os.PathLike[str] | None = None) -> None:
        #: guards _hooks (the list is replaced, never mutated, so ingest can snapshot it lock-free)
        self._hooks_lock = threading.Lock()
        self._hooks: tuple[PreIngestHook, ...] = ()
        #: started by the first add_alert_notification_hook; guarded by _hooks_lock
        self._alert_watcher: _AlertWatcher | None = None
        self._process: subprocess.Popen[bytes] | None = None
        #: every Client this engine opened (the socket path of a long data dir is known only once
        #: the daemon has bound it); the finalizer closes them all.  _client is the current one.
        self._clients: list[Client] = []
        if _socket_path is not None:  # connect(): somebody else's daemon, nothing to stop
            self.socket_path = Path(_socket_path)
            self.data_dir: Path | None = None
            self._client = self._open_client()
            self._finalizer = weakref.finalize(self, _stop_private_daemon, self._clients, None, None, None)
            try:
                self._client.call("ping")
            except BaseException:
                self._finalizer()
                raise
            return
        if shards < 1:
            raise ValueError(f"shards is {shards}; it must be at least 1")
        # Short /tmp path: the socket must fit in sun_path (107 bytes).
        tmp_dir = Path(tempfile.mkdtemp(prefix="shardlog-", dir="/tmp"))
        self.data_dir = Path(data_dir) if data_dir is not None else tmp_dir / "data"
        self.socket_path = socket_path_for(self.data_dir)
        self._client = self._open_client()
        log_path = tmp_dir / "daemon.log"
        log_file = open(log_path, "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(_PROJECT_ROOT), env.get("PYTHONPATH"))))
        command = [sys.executable, "-m", "cli.main", "serve", "--data-dir", str(self.data_dir),
                   "--shards", str(shards), "--http", http or ""]
        try:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                             stderr=subprocess.STDOUT, env=env)
        except OSError:
            log_file.close()
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        # Only the data dir we created is removed; a caller's data_dir is the caller's data.
        self._finalizer = weakref.finalize(self, _stop_private_daemon, self._clients, self._process, log_file,
                                           tmp_dir)
        try:
            self._wait_ready(startup_timeout_s, log_path)
        except BaseException:
            self._finalizer()
            raise

    def _open_client(self) -> Client:
        client = Client(self.socket_path)
        self._clients.append(client)
        return client

    def _wait_ready(self, timeout_s: float, log_path: Path) -> None:
        """Poll ``ping`` until the daemon answers with every shard up, the process exits, or the
        deadline passes."""
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        delay_s = 0.02
        last = "no answer yet"
        while True:
            code = self._process.poll()
            if code is not None:
                raise ShardUnavailable(f"the private shardlog daemon exited with code {code} while starting; "
                                       f"its log ends: {_log_tail(log_path)}", exit_code=code)
            # A long data dir records its socket path only once the daemon has bound it.
            if self.data_dir is not None:
                self.socket_path = socket_path_for(self.data_dir)
                if self._client.path != str(self.socket_path):
                    self._client.close()
                    self._client = self._open_client()
            try:
                answer = self._client.call("ping", timeout_s=max(0.5, min(5.0, deadline - time.monotonic())))
                if not isinstance(answer, dict) or answer.get("ready", True):
                    return
                last = "the daemon answers but not every shard is up"
            except ShardUnavailable as err:
                last = err.message
            if time.monotonic() >= deadline:
                raise ShardUnavailable(f"the private shardlog daemon did not become ready within {timeout_s:g} s "
                                       f"(startup_timeout_s; last: {last}); its log ends: {_log_tail(log_path)}")
            time.sleep(delay_s)  # polling interval, not a wait for an event we could block on
            delay_s = min(delay_s * 2, 0.25)

    @classmethod
    def connect(cls, socket_or_url: str | os.PathLike[str]) -> "LogAnalyticsEngine":
        """Use a running daemon: its socket path, or its data dir (whose socket is found as the CLI
        finds it).  Raises ``ShardUnavailable`` if it does not answer ``ping``."""
        text = os.fspath(socket_or_url)
        if isinstance(text, str) and text.startswith(("http://", "https://")):
            raise ValueError(f"{text!r}: the Python API speaks the daemon's unix socket, not HTTP; pass the "
                             "socket path (DATA_DIR/shardlog.sock) or the data dir")
        path = Path(text)
        if path.is_dir():
            path = socket_path_for(path)
        return cls(_socket_path=path)

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; stop the private daemon (if this engine started one) and remove its
        temporary dir.  Idempotent."""
        watcher = self._alert_watcher
        if watcher is not None:  # before the daemon goes, so the thread does not log its absence
            watcher.stop()
        self._finalizer()

    def __enter__(self) -> "LogAnalyticsEngine":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    # --- ingest -------------------------------------------------------------------------------

    def add_pre_ingest_hook(self, fn: PreIngestHook) -> None:
        """``fn(entry)`` runs in the caller's thread before an entry is sent; it returns the entry
        to send (possibly changed) or None to drop it.  Hooks run in the order they were added."""
        if not callable(fn):
            raise TypeError(f"a pre-ingest hook must be callable, got {type(fn).__name__}")
        with self._hooks_lock:
            self._hooks = (*self._hooks, fn)

    def _prepare(self, entries: Iterable[LogEntry | dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Wire records of ``entries`` after the hooks; dropped entries are skipped.  Without hooks a
        dict goes as is, so the daemon's field aliases and timestamp handling apply to it."""
        hooks = self._hooks  # one snapshot per call: a hook added meanwhile applies to the next call
        for entry in entries:
            if hooks:
                current: LogEntry | None = entry if isinstance(entry, LogEntry) else LogEntry.from_dict(entry)
                for hook in hooks:
                    current = hook(current)
                    if current is None:
                        break
                if current is None:
                    continue
                entry = current
            if isinstance(entry, LogEntry):
                record = entry.to_dict()
                record.pop("id")  # the daemon assigns ids; one sent in would land in metadata
                yield record
            elif isinstance(entry, dict):
                yield entry
            else:
                raise TypeError(f"a log entry must be a LogEntry or a dict, got {type(entry).__name__}")

    def _send_records(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        args = {"records": records, "idempotency_key": f"api-{uuid.uuid4().hex}"}
        return call_retrying(self._client, "ingest", args)

    def ingest_log(self, entry: LogEntry | dict[str, Any]) -> bool:
        """Store one entry durably; True if it was accepted, False if a hook dropped it or the
        daemon rejected it (the reason is logged)."""
        records = list(self._prepare([entry]))
        if not records:
            return False
        result = self._send_records(records)
        for item in result.get("rejected", []):
            log.warning("log entry rejected: %s", item.get("reason"))
        return int(result.get("accepted", 0)) == 1

    def ingest_logs(self, entries: Iterable[LogEntry | dict[str, Any]]) -> int:
        """Store many entries in batches; the number accepted."""
        accepted = 0
        for batch in _batches(self._prepare(entries), INGEST_BATCH_RECORDS):
            result = self._send_records(batch)
            accepted += int(result.get("accepted", 0))
            for item in result.get("rejected", []):
                log.warning("log entry %s of a batch rejected: %s", item.get("line"), item.get("reason"))
        return accepted

    def ingest_logs_from_file(self, path: str | os.PathLike[str]) -> int:
        """Store a JSON-lines file; the number accepted.  Without hooks the lines go to the daemon
        as they are (it parses them); with hooks each line is parsed here so the hooks see it."""
        if self._hooks:
            def entries() -> Iterator[dict[str, Any]]:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    for number, line in enumerate(handle, start=1):
                        if not line.strip():
                            continue
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as exc:
                            log.warning("%s line %d is not valid JSON (%s); skipped", path, number, exc)
            return self.ingest_logs(entries())
        accepted = 0
        run_id = uuid.uuid4().hex
        with open(path, encoding="utf-8", errors="replace") as handle:
            for chunk_no, (first_line, lines) in enumerate(read_line_chunks(handle)):
                args = {"lines": lines, "format": "jsonl", "first_line": first_line,
                        "idempotency_key": f"api-file-{run_id}-{chunk_no}"}
                result = call_retrying(self._client, "ingest_lines", args)
                accepted += int(result.get("accepted", 0))
                for item in result.get("rejected", []):
                    log.warning("%s line %s rejected: %s", path, item.get("line"), item.get("reason"))
        return accepted

    # --- queries ------------------------------------------------------------------------------

    @staticmethod
    def _query_text(filters: dict[str, Any] | str | None) -> str | None:
        """The ``q`` parameter: a query string as is, the seed's filter dict converted (times made
        absolute now, so ``-15m`` means the same on both sides)."""
        if filters is None or isinstance(filters, str):
            return filters or None
        if not isinstance(filters, dict):
            raise BadQuery(f"filters must be a dict, a query string or None, not {type(filters).__name__}")
        return format_query(filters_to_node(filters, now_ns=time.time_ns()))

    def query_logs(self, filters: dict[str, Any] | str | None = None, sort_by: str = "timestamp",
                   sort_desc: bool = True, page: int = 1, page_size: int = 100) -> list[LogEntry]:
        """One page of matching entries, newest first by default."""
        if sort_by not in ("timestamp", "_time", "time"):
            raise BadQuery(f"sort_by {sort_by!r} is not supported; logs are sorted by timestamp (sort_by='timestamp')")
        params: dict[str, Any] = {"sort": "desc" if sort_desc else "asc", "page": page, "page_size": page_size}
        text = self._query_text(filters)
        if text is not None:
            params["q"] = text
        result = self._client.call("query", params)
        return [LogEntry.from_dict(item) for item in result.get("logs", [])]

    def count_logs(self, filters: dict[str, Any] | str | None = None) -> int:
        text = self._query_text(filters)
        return int(self._client.call("count", {"q": text} if text else {})["count"])

    def aggregate_logs(self, filters: dict[str, Any] | str | None = None, group_by: str | None = None,
                       histogram_field: str | None = None, time_interval: timedelta | str | None = None,
                       top_n: int | None = None, top_field: str = "tags") -> dict[str, Any]:
        """Counts over the matching logs, in the shape of ``shardlog agg --output json`` (DESIGN §6):
        ``{"total", "group_by"?: {value: n}, "histogram"?: {value: n}, "top"?: {field: [[value, n], ...]},
        "time_histogram"?: [[RFC 3339 bucket start, n], ...], "partial"}``."""
        params: dict[str, Any] = {}
        text = self._query_text(filters)
        if text is not None:
            params["q"] = text
        if group_by is not None:
            params["group_by"] = group_by
        if histogram_field is not None:
            params["histogram"] = histogram_field
        if time_interval is not None:
            params["interval"] = _interval_text(time_interval)
        if top_n is not None:
            if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
                raise BadQuery(f"top_n is {top_n!r}; give a positive integer such as 5")
            params["top"] = f"{top_field}:{top_n}"
        result = self._client.call("aggregate", params)
        result.pop("failed_shards", None)
        return result

    # --- alerting -----------------------------------------------------------------------------

    def add_alert_rule(self, rule: AlertRule) -> None:
        """Add ``rule`` to the daemon, replacing a rule of the same name.  Raises ``BadQuery`` for
        an invalid rule (bad query, threshold < 1, window < 1 s, unknown group_by field, ...)."""
        if not isinstance(rule, AlertRule):
            raise TypeError(f"add_alert_rule takes an AlertRule, got {type(rule).__name__}")
        self._client.call("alerts_add", {"rule": self._rule_wire(rule), "replace": True})

    def _rule_wire(self, rule: AlertRule) -> dict[str, Any]:
        """The daemon's rule object (``alerts_add``) of a seed ``AlertRule``."""
        conditions = rule.conditions
        query = conditions if isinstance(conditions, str) else self._query_text(conditions or None) or ""
        severity = rule.severity.value if isinstance(rule.severity, Enum) else str(rule.severity)
        return {"name": rule.name, "description": rule.description, "query": query, "severity": severity,
                "threshold": rule.threshold, "window": _seconds_arg(rule.time_window),
                "cooldown": _seconds_arg(rule.cooldown), "enabled": rule.enabled, "group_by": rule.group_by}

    def add_alert_notification_hook(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """Call ``fn(alert)`` for every alert fired from now on (a dict: rule, message, severity,
        triggered_at, count, samples, window_s, group, query, ...), in a background thread.  Hooks
        run in the order they were added; one that raises is logged and the others still run."""
        if not callable(fn):
            raise TypeError(f"an alert notification hook must be callable, got {type(fn).__name__}")
        with self._hooks_lock:
            if self._alert_watcher is None:
                # its own connection: a long-poll must not hold the lock of the engine's client
                watcher = _AlertWatcher(Client(self.socket_path, timeout_s=ALERT_WATCH_WAIT_S + 30.0))
                watcher.start()
                # garbage collection without close(): the thread holds no reference to the engine
                weakref.finalize(self, watcher.request_stop)
                self._alert_watcher = watcher
            self._alert_watcher.hooks = (*self._alert_watcher.hooks, fn)

    def get_alerts(self, severity: AlertSeverity | str | None = None, start_time: datetime | None = None,
                   end_time: datetime | None = None, rule_name: str | None = None) -> list[dict[str, Any]]:
        """Fired alerts from the daemon's history, newest last; ``start_time`` / ``end_time`` bound
        ``triggered_at`` (both inclusive, naive = UTC)."""
        args: dict[str, Any] = {"limit": HISTORY_LIMIT}
        if start_time is not None:
            args["since"] = format_timestamp(_time_ns(start_time, "start_time"))
        end_ns = _time_ns(end_time, "end_time") if end_time is not None else None
        wanted = None
        if severity is not None:
            wanted = severity.value if isinstance(severity, Enum) else str(severity).lower()
        out = []
        for alert in self._client.call("alerts_history", args)["alerts"]:
            if wanted is not None and alert.get("severity") != wanted:
                continue
            if rule_name is not None and alert.get("rule") != rule_name:
                continue
            if end_ns is not None:
                fired_ns = parse_timestamp(alert.get("triggered_at"))
                if fired_ns is None or fired_ns > end_ns:
                    continue
            out.append(alert)
        return out

    def persist_alerts_to_file(self, path: str | os.PathLike[str]) -> None:
        """Write the daemon's alert history to ``path`` as JSON lines (replacing the file at once:
        a crash leaves the old file or the new one, never half of one)."""
        alerts = self._client.call("alerts_history", {"limit": HISTORY_LIMIT})["alerts"]
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                for alert in alerts:
                    handle.write(json.dumps(alert, ensure_ascii=False) + "\n")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def load_alerts_from_file(self, path: str | os.PathLike[str]) -> None:
        """Add the alerts of a JSON-lines file (as ``persist_alerts_to_file`` writes it) to the
        daemon's history.  Every line is checked first; a bad line raises ``BadRecord`` and nothing is
        imported.  Alerts already in the history (same key) are not doubled."""
        with open(path, encoding="utf-8", errors="replace") as handle:
            alerts = read_alerts_jsonl(handle, str(path))
        for start in range(0, len(alerts), ALERT_IMPORT_BATCH):
            self._client.call("alerts_import", {"alerts": alerts[start:start + ALERT_IMPORT_BATCH]})

    # --- stats and metrics --------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        return dict(self._client.call("stats"))

    def export_metrics_prometheus(self) -> str:
        return str(self._client.call("metrics")["text"])

    def export_metrics_json(self) -> str:
        return json.dumps(self.get_stats(), ensure_ascii=False)

    def flush(self) -> None:
        """Seal every shard's pending records into blocks (they are durable before this already)."""
        self._client.call("flush")


def read_line_chunks(handle: Iterable[str], *, max_lines: int = INGEST_BATCH_RECORDS,
                     max_bytes: int = INGEST_BATCH_BYTES) -> Iterator[tuple[int, list[str]]]:
    """``(first_line, lines)`` chunks of a text stream, line terminators removed, line numbers from 1.
    A chunk ends after ``max_lines`` lines or once it holds ``max_bytes`` characters."""
    lines: list[str] = []
    size = 0
    first_line = 1
    for number, line in enumerate(handle, start=1):
        if not lines:
            first_line = number
        text = line.rstrip("\r\n")
        lines.append(text)
        size += len(text)
        if len(lines) >= max_lines or size >= max_bytes:
            yield first_line, lines
            lines, size = [], 0
    if lines:
        yield first_line, lines


def read_alerts_jsonl(lines: Any, name: str) -> list[dict[str, Any]]:
    """Alert objects from JSON lines (as ``alerts export`` / ``persist_alerts_to_file`` write them),
    all checked before any is used: a bad line raises ``BadRecord`` naming the line."""
    alerts: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            alert = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadRecord(f"{name} line {number} is not valid JSON ({exc.msg} at column {exc.colno}); fix it "
                            "and import again (nothing was imported)") from None
        if not isinstance(alert, dict) or not isinstance(alert.get("rule"), str):
            raise BadRecord(f"{name} line {number} is not an alert object with a \"rule\" name; fix it and "
                            "import again (nothing was imported)")
        alerts.append(alert)
    return alerts
