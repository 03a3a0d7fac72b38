"""coordinator.logging_handler.ShardlogHandler against the real daemon (the session ``daemon``
fixture), against a daemon that is gone (a stale socket: connection refused), against one that
never answers (a socket that accepts connections but is never read), and with a scripted client
for the retry rules.
"""

from __future__ import annotations

import inspect
import logging
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.logging_handler import ShardlogHandler
from storage.errors import BadRequest, ShardUnavailable
from storage.timefmt import format_timestamp
from tests.daemon import REPO_ROOT, Daemon, short_root
from tests.helpers import wait_for

#: how long a test waits for a thread that must not be blocked; it normally takes milliseconds
NOT_BLOCKED_S = 20.0


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger("tests.handler." + uuid.uuid4().hex[:10])
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    return logger


def _logs(daemon: Daemon, source: str) -> list[dict[str, Any]]:
    return daemon.call("query", {"q": f'source:"{source}"', "sort": "asc", "limit": 1000})["logs"]


def _emit_in_thread(logger: logging.Logger, count: int) -> None:
    """Log ``count`` records from another thread; fail if that thread is still busy after
    NOT_BLOCKED_S (emit() blocked)."""
    thread = threading.Thread(target=lambda: [logger.info("record %d", i) for i in range(count)], daemon=True)
    thread.start()
    thread.join(NOT_BLOCKED_S)
    assert not thread.is_alive(), f"emitting {count} records did not finish within {NOT_BLOCKED_S:g} s: emit() blocks"


@pytest.fixture()
def sockets_dir() -> Iterator[Path]:
    root = short_root("slh")
    yield root
    for path in root.iterdir():
        path.unlink()
    root.rmdir()


def _stale_socket(directory: Path) -> Path:
    """A socket file nobody listens on: what a crashed daemon leaves (connect: refused)."""
    path = directory / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.close()
    return path


# --- import -----------------------------------------------------------------------------------------------


def test_importing_the_handler_does_not_load_lmdb() -> None:
    code = ("import sys; from coordinator import ShardlogHandler; import coordinator.logging_handler; "
            "print('lmdb' in sys.modules, 'coordinator.daemon' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


# --- a real daemon -------------------------------------------------------------------------------------


def test_records_arrive_with_their_fields(daemon: Daemon) -> None:
    handler = ShardlogHandler(daemon.socket_path, flush_interval_s=60.0, tags=["py"], metadata={"env": "test"})
    seen: list[logging.LogRecord] = []
    handler.addFilter(lambda record: seen.append(record) or True)
    logger = _logger(handler)
    try:
        line_warning = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        logger.warning("disk %s at %d%%", "/var", 91, extra={"request_id": "r-1", "customer": "acme",
                                                             "tags": ["billing"], "attempt": 3})
        try:
            1 / 0
        except ZeroDivisionError:
            logger.exception("division failed")
        logger.debug("details")
        assert handler.flush(timeout_s=30.0) is True
    finally:
        handler.close()
        logger.removeHandler(handler)
    assert (handler.sent, handler.dropped, handler.failed, handler.rejected) == (3, 0, 0, 0)
    logs = _logs(daemon, logger.name)
    assert [log["level"] for log in logs] == ["WARN", "ERROR", "DEBUG"]
    warning, failure, debug = logs
    assert warning["message"] == "disk /var at 91%"
    assert warning["timestamp"] == format_timestamp(round(seen[0].created * 1_000_000) * 1_000)
    assert warning["source"] == logger.name and warning["thread_id"] == threading.current_thread().name
    assert warning["request_id"] == "r-1" and warning["tags"] == ["py", "billing"]
    assert warning["metadata"] == {"env": "test", "module": "test_logging_handler",
                                   "func": "test_records_arrive_with_their_fields", "line": line_warning,
                                   "process": seen[0].process, "customer": "acme", "attempt": 3}
    assert failure["message"].startswith("division failed\nTraceback (most recent call last):")
    assert "ZeroDivisionError: division by zero" in failure["message"]
    assert debug["message"] == "details"


def test_batches_go_out_by_size_and_by_interval(daemon: Daemon) -> None:
    by_size = ShardlogHandler(daemon.socket_path, batch_size=5, flush_interval_s=600.0)
    by_time = ShardlogHandler(daemon.socket_path, batch_size=1000, flush_interval_s=0.05)
    try:
        size_logger, time_logger = _logger(by_size), _logger(by_time)
        for i in range(5):
            size_logger.info("sized %d", i)
        time_logger.info("timed")
        # no flush() here: the full batch and the interval must each send on their own
        wait_for(lambda: by_size.sent == 5, 30.0, "the full batch to be sent")
        wait_for(lambda: by_time.sent == 1, 30.0, "the interval to send the lone record")
        assert len(_logs(daemon, size_logger.name)) == 5 and len(_logs(daemon, time_logger.name)) == 1
    finally:
        by_size.close()
        by_time.close()


def test_close_flushes_stops_the_thread_and_later_records_are_dropped(daemon: Daemon) -> None:
    handler = ShardlogHandler(daemon.socket_path, batch_size=1000, flush_interval_s=600.0)
    logger = _logger(handler)
    for i in range(10):
        logger.info("queued %d", i)
    assert handler.sent == 0  # neither a full batch nor the interval yet
    handler.close()
    assert handler.sent == 10 and not handler._thread.is_alive()
    logger.info("after close")
    handler.close()  # idempotent
    assert (handler.dropped, handler.sent) == (1, 10)
    assert [log["message"] for log in _logs(daemon, logger.name)] == [f"queued {i}" for i in range(10)]


def test_a_record_the_daemon_rejects_is_counted(daemon: Daemon) -> None:
    handler = ShardlogHandler(daemon.socket_path, flush_interval_s=600.0)
    logger = _logger(handler)
    try:
        logger.info("fine")
        logger.info("x" * 300_000)  # over the daemon's 256 KiB message limit
        assert handler.flush(timeout_s=30.0) is True
    finally:
        handler.close()
    assert (handler.sent, handler.rejected, handler.failed) == (1, 1, 0)
    assert "message is" in (handler.last_error or "")


# --- no daemon -----------------------------------------------------------------------------------------


def test_emit_never_blocks_without_a_daemon_and_counts_what_it_drops(sockets_dir: Path) -> None:
    handler = ShardlogHandler(_stale_socket(sockets_dir), batch_size=1000, max_buffer=100, flush_interval_s=600.0,
                              retry_backoff_s=0.01)
    logger = _logger(handler)
    try:
        _emit_in_thread(logger, 150)
        # the sender never woke (no full batch, no interval): exactly the overflow was dropped
        assert (handler.dropped, len(handler._buffer)) == (50, 100)
        assert handler.flush(timeout_s=30.0) is False  # handled: given up after the retries
        assert (handler.failed, handler.sent) == (100, 0)
        assert "cannot connect" in (handler.last_error or "") or "refused" in (handler.last_error or "")
    finally:
        handler.close()
    assert not handler._thread.is_alive()


def test_emit_never_blocks_while_the_sender_is_stuck_and_close_unsticks_it(sockets_dir: Path) -> None:
    # a socket that accepts connections but never reads or answers: the sender's call hangs
    path = sockets_dir / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    handler = ShardlogHandler(path, batch_size=50, max_buffer=200, flush_interval_s=0.01, timeout_s=600.0)
    logger = _logger(handler)
    try:
        logger.info("first")
        wait_for(lambda: not handler._buffer, 30.0, "the sender to take the first batch")  # now stuck in a call
        _emit_in_thread(logger, 5000)
        assert handler.dropped == 5000 - 200 and len(handler._buffer) == 200
        handler.close(timeout_s=0.5)  # cannot flush: gives up, wakes the blocked call
        assert not handler._thread.is_alive()
        assert handler.failed == 201 and handler.sent == 0
    finally:
        listener.close()


# --- the retry rules, with a scripted client -----------------------------------------------------------


class _ScriptedClient:
    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.calls: list[dict[str, Any]] = []

    def call(self, op: str, args: dict[str, Any], *, timeout_s: float | None = None) -> Any:
        self.calls.append({"op": op, **args})
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("outcomes", "sent", "failed", "attempts"), [
    # two retryable failures, then stored: one batch, same idempotency key on every attempt
    ([ShardUnavailable("restarting"), ShardUnavailable("restarting"), {"accepted": 2, "rejected": []}], 2, 0, 3),
    # retryable every time: given up after max_retries (2) retries
    ([ShardUnavailable("down")] * 3, 0, 2, 3),
    # a permanent error: no retry
    ([BadRequest("batch too large")], 0, 2, 1),
])
def test_a_failed_batch_is_retried_then_given_up(outcomes: list[Any], sent: int, failed: int, attempts: int) -> None:
    handler = ShardlogHandler("/nonexistent/x.sock", flush_interval_s=600.0, max_retries=2, retry_backoff_s=0.001)
    client = _ScriptedClient(list(outcomes))
    handler._client.close()
    handler._client = client  # type: ignore[assignment]
    logger = _logger(handler)
    try:
        logger.info("one")
        logger.info("two")
        assert handler.flush(timeout_s=30.0) is (failed == 0)
    finally:
        handler.close()
    assert (handler.sent, handler.failed, len(client.calls)) == (sent, failed, attempts)
    assert len({call["idempotency_key"] for call in client.calls}) == 1
    assert [r["message"] for r in client.calls[0]["records"]] == ["one", "two"]


def test_bad_settings_are_refused_together() -> None:
    with pytest.raises(ValueError) as caught:
        ShardlogHandler("/nonexistent/x.sock", batch_size=0, max_buffer=-1)
    assert "batch_size" in str(caught.value) and "max_buffer" in str(caught.value)
