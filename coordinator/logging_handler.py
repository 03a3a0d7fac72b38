"""``ShardlogHandler``: Python ``logging`` records shipped to a shardlog daemon over its unix socket.

This module owns the application side of Python logging -> shardlog.  Usage::

    import logging
    from coordinator import ShardlogHandler

    logging.getLogger().addHandler(ShardlogHandler(data_dir="/var/lib/shardlog"))

Guarantees:

- ``emit()`` never waits for the daemon: it formats the record, appends it to a bounded buffer
  (``max_buffer`` records) and returns.  When the buffer is full the record is dropped and counted
  in ``dropped``.  Only a background daemon thread does I/O.
- The thread sends batches (the ``ingest`` operation of ``shardd.protocol``) when ``batch_size``
  records are waiting or every ``flush_interval_s``.  Each batch carries its own idempotency key,
  so a retried batch is stored once.  A batch that fails with a retryable error (daemon restarting,
  overloaded, unreachable) is retried ``max_retries`` times with exponential backoff, then given up
  and counted in ``failed``; a permanent error gives up at once.  Records the daemon rejects (too
  large, ...) are counted in ``rejected``; stored ones in ``sent``.  ``last_error`` keeps the last
  error's message.  The handler never logs through ``logging`` itself (it could be its own target).
- ``flush(timeout_s)`` waits until every record queued before the call was handled;
  ``close()`` flushes (bounded by ``flush_timeout_s``), gives up what is left, and stops the thread.
  ``logging.shutdown()`` (run at interpreter exit) calls both.  After ``close()`` records are dropped.
- A record becomes: ``timestamp`` (``LogRecord.created``, µs precision), ``level`` (the level name;
  the daemon normalizes WARNING -> WARN), ``message`` (``self.format(record)``: with the default
  formatter the message with its arguments and, for exceptions, the traceback), ``source`` (the
  logger name), ``thread_id`` (the thread's name), metadata ``module``, ``func``, ``line``,
  ``process``, plus the handler's static ``tags``/``metadata``.  Attributes given with ``extra=``
  become fields (``request_id``, ``user_id``, ``tags``) or metadata (anything else; values that are
  not str/int/float/bool are sent as ``str(value)``).
- Importing this module loads neither LMDB nor the daemon (only ``shardd.client``,
  ``shardd.protocol`` and ``coordinator.config``'s path helpers).

The counters are plain ints, written by one thread each (``dropped`` by ``emit`` under the
handler's lock; ``sent``, ``failed``, ``rejected`` by the sender thread); reading them from any
thread is safe.  Not fork-safe: create the handler in the process that logs.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coordinator.config import default_data_dir, socket_path_for
from shardd.client import Client
from storage.errors import ShardlogError

ENV_SOCKET = "SHARDLOG_SOCKET"
ENV_DATA_DIR = "SHARDLOG_DATA_DIR"
#: the longest backoff between two attempts of one batch, whatever Retry-After says
MAX_BACKOFF_S = 5.0
#: how long ``close`` waits for the thread after giving up what was left
JOIN_TIMEOUT_S = 5.0

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
#: attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def resolve_socket(socket_path: str | os.PathLike[str] | None, data_dir: str | os.PathLike[str] | None) -> Path:
    """The daemon's socket as the CLI finds it: the given socket, the given data dir's socket,
    ``$SHARDLOG_SOCKET``, ``$SHARDLOG_DATA_DIR``'s socket, or the default data dir's socket."""
    if socket_path is not None:
        return Path(socket_path)
    if data_dir is not None:
        return socket_path_for(Path(data_dir))
    if os.environ.get(ENV_SOCKET):
        return Path(os.environ[ENV_SOCKET])
    if os.environ.get(ENV_DATA_DIR):
        return socket_path_for(Path(os.environ[ENV_DATA_DIR]))
    return socket_path_for(default_data_dir())


def _wire_value(value: Any) -> Any:
    """A value msgpack can carry and the daemon stores as metadata."""
    if isinstance(value, bool) or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _UINT64_MAX else str(value)
    return str(value)


class ShardlogHandler(logging.Handler):
    """A ``logging.Handler`` that ships records to a shardlog daemon in batches from a background
    thread (see the module docstring for the guarantees)."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, *,
                 data_dir: str | os.PathLike[str] | None = None, level: int | str = logging.NOTSET,
                 batch_size: int = 500, flush_interval_s: float = 1.0, max_buffer: int = 10_000,
                 max_retries: int = 3, retry_backoff_s: float = 0.2, timeout_s: float = 10.0,
                 flush_timeout_s: float = 10.0, tags: Sequence[str] = (),
                 metadata: Mapping[str, Any] | None = None) -> None:
        problems = [f"{name} must be positive, got {value!r}" for name, value in (
            ("batch_size", batch_size), ("flush_interval_s", flush_interval_s), ("max_buffer", max_buffer),
            ("timeout_s", timeout_s), ("flush_timeout_s", flush_timeout_s)) if not value > 0]
        if max_retries < 0 or retry_backoff_s < 0:
            problems.append(f"max_retries and retry_backoff_s must be >= 0, got {max_retries!r}, {retry_backoff_s!r}")
        if problems:
            raise ValueError("; ".join(problems))
        super().__init__(level)
        self.socket_path = resolve_socket(socket_path, data_dir)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.timeout_s = timeout_s
        self.flush_timeout_s = flush_timeout_s
        self.static_tags = list(tags)
        self.static_metadata = {str(k): _wire_value(v) for k, v in (metadata or {}).items()}
        #: records dropped because the buffer was full (or the handler closed); written by emit()
        self.dropped = 0
        #: records of batches given up after the retries; written by the sender thread
        self.failed = 0
        #: records the daemon stored / rejected; written by the sender thread
        self.sent = 0
        self.rejected = 0
        self.last_error: str | None = None
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        # records appended (by emit, under the handler lock) / handled (by the sender) so far:
        # flush() waits for handled to reach the appended count it saw
        self._queued_total = 0
        self._handled_total = 0
        self._progress = threading.Condition()  # guards nothing but the wait; signals _handled_total moves
        self._wake = threading.Event()      # "send now": a full batch, a flush, or close
        self._give_up = threading.Event()   # close: no more retries, count what is left as failed
        self._closed = False                # set under the handler lock; emit drops afterwards
        self._stopping = False
        self._run_id = uuid.uuid4().hex[:12]
        self._batch_no = 0
        self._client = Client(self.socket_path, timeout_s=timeout_s)
        self._thread = threading.Thread(target=self._run, name="shardlog-handler", daemon=True)
        self._thread.start()

    # --- the application's side (never blocks on I/O) ------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        if self._closed:
            self.dropped += 1
            return
        try:
            entry = self._entry(record)
        except Exception:
            self.handleError(record)
            return
        if len(self._buffer) >= self.max_buffer:
            self.dropped += 1
            return
        self._buffer.append(entry)
        self._queued_total += 1
        if len(self._buffer) == self.batch_size:
            self._wake.set()

    def _entry(self, record: logging.LogRecord) -> dict[str, Any]:
        metadata: dict[str, Any] = {**self.static_metadata, "module": record.module, "func": record.funcName,
                                    "line": record.lineno, "process": record.process}
        entry: dict[str, Any] = {
            # µs: LogRecord.created is a float of seconds, precise to about a µs
            "timestamp": round(record.created * 1_000_000) * 1_000,
            "level": record.levelname,
            "message": self.format(record),
            "source": record.name,
            "thread_id": record.threadName or str(record.thread),
            "metadata": metadata,
        }
        tags = list(self.static_tags)
        for key, value in vars(record).items():
            if key in _STANDARD_ATTRS or value is None:
                continue
            if key in ("request_id", "user_id"):
                entry[key] = str(value)
            elif key == "tags":
                tags.extend(str(tag) for tag in (value if isinstance(value, (list, tuple, set)) else [value]))
            else:
                metadata[key] = _wire_value(value)
        if tags:
            entry["tags"] = tags
        return entry

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every record queued before this call was handled, up to ``timeout_s``
        (default ``flush_timeout_s``).  True when they all reached the daemon; False on timeout or
        when some were given up meanwhile (see ``failed``)."""
        target = self._queued_total
        failed_before = self.failed
        if self._handled_total < target:
            self._wake.set()
            with self._progress:
                if not self._progress.wait_for(lambda: self._handled_total >= target,
                                               self.flush_timeout_s if timeout_s is None else timeout_s):
                    return False
        return self.failed == failed_before

    def close(self, timeout_s: float | None = None) -> None:
        """Flush (up to ``timeout_s``, default ``flush_timeout_s``), give up what is left, stop the
        thread.  Idempotent."""
        self.acquire()
        try:
            already = self._closed
            self._closed = True
        finally:
            self.release()
        if not already:
            if not self.flush(timeout_s):
                # the daemon is unreachable or slow: stop retrying, and wake a call blocked on the socket
                self._give_up.set()
                self._client.close()
            self._stopping = True
            self._wake.set()
            self._thread.join(JOIN_TIMEOUT_S)
            self._client.close()
        super().close()

    # --- the sender thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            while self._buffer:
                batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), self.batch_size))]
                try:
                    self._send(batch)
                except Exception as exc:  # a bug must not kill the thread and stall every flush()
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self.failed += len(batch)
                with self._progress:
                    self._handled_total += len(batch)
                    self._progress.notify_all()
            # _closed was set before _stopping, so no record can arrive after this empty buffer
            if self._stopping and not self._buffer:
                return

    def _send(self, batch: list[dict[str, Any]]) -> None:
        if self._give_up.is_set():
            self.failed += len(batch)
            return
        self._batch_no += 1
        args = {"records": batch, "idempotency_key": f"pylog-{self._run_id}-{self._batch_no}"}
        for attempt in range(self.max_retries + 1):
            try:
                result = self._client.call("ingest", args, timeout_s=self.timeout_s)
            except ShardlogError as exc:
                self.last_error = exc.message
                if not exc.retryable or attempt == self.max_retries or self._give_up.is_set():
                    self.failed += len(batch)
                    return
                hint = exc.details.get("retry_after_s")
                delay_s = hint if isinstance(hint, (int, float)) and hint > 0 else self.retry_backoff_s * 2 ** attempt
                # a close() in the meantime ends the wait (and the retries)
                if self._give_up.wait(min(float(delay_s), MAX_BACKOFF_S)):
                    self.failed += len(batch)
                    return
                continue
            answer = result if isinstance(result, dict) else {}
            rejected = answer.get("rejected") or []
            self.rejected += len(rejected)
            self.sent += int(answer.get("accepted", 0))
            if rejected:
                self.last_error = f"the daemon rejected a record: {rejected[0].get('reason')}"
            return
