"""coordinator.api: the seed-compatible Python API against a real daemon.

Most tests use ``LogAnalyticsEngine.connect`` on the shared session daemon (tests/conftest.py) and a
unique source per test; one test starts a private daemon to check the start / stop lifecycle.
Filter semantics are checked against a plain Python oracle over the entries the test wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from coordinator.api import (
    AlertRule,
    AlertSeverity,
    LogAnalyticsEngine,
    LogEntry,
    call_retrying,
    read_line_chunks,
)
from storage.errors import BadQuery, Overloaded, ShardUnavailable
from storage.levels import SEVERITY
from tests.daemon import REPO_ROOT
from tests.daemon import Daemon as DaemonProcess

UTC = timezone.utc
T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def engine(daemon: DaemonProcess) -> Iterator[LogAnalyticsEngine]:
    with LogAnalyticsEngine.connect(str(daemon.socket_path)) as connected:
        yield connected


def unique_source() -> str:
    return "api-" + uuid.uuid4().hex[:12]


def make_entries(source: str) -> list[LogEntry]:
    """Eight entries, one minute apart, with a spread of levels, tags and words."""
    specs = [
        ("DEBUG", "cache warm", ["cache"]),
        ("INFO", "user login ok", ["auth"]),
        ("WARN", "slow query on orders", ["db"]),
        ("ERROR", "connection timeout to db", ["db", "net"]),
        ("INFO", "user logout", ["auth"]),
        ("ERROR", "disk full on node 3", ["disk"]),
        ("FATAL", "connection refused", ["net"]),
        ("TRACE", "timeout timer tick", []),
    ]
    return [LogEntry(timestamp=T0 + timedelta(minutes=i), level=level, message=message, source=source, tags=tags)
            for i, (level, message, tags) in enumerate(specs)]


def oracle(entries: list[LogEntry], keep: Callable[[LogEntry], bool]) -> list[str]:
    """Messages of the matching entries, newest first (the engine's default order)."""
    return [e.message for e in sorted(entries, key=lambda e: e.timestamp, reverse=True) if keep(e)]


# --- import hygiene -------------------------------------------------------------------------------


def test_importing_the_api_does_not_load_lmdb() -> None:
    code = "\n".join(("import sys, coordinator.api",
                      "from coordinator import LogAnalyticsEngine, LogEntry, AlertRule, AlertSeverity",
                      "print('lmdb' in sys.modules)"))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --- data classes ---------------------------------------------------------------------------------


def test_log_entry_round_trips_through_its_json_shape() -> None:
    entry = LogEntry(timestamp=datetime(2024, 1, 1, 14, 2, 0, 123000), level="ERROR", message="m", source="db",
                     tags=["a"], metadata={"k": 1}, request_id="r1", id=7)
    data = entry.to_dict()
    assert data["timestamp"] == "2024-01-01T14:02:00.123Z"  # naive datetime = UTC
    assert data["id"] == 7 and data["request_id"] == "r1" and data["thread_id"] is None
    json.dumps(data)  # JSON-serializable as is
    back = LogEntry.from_dict(data)
    assert back.timestamp == datetime(2024, 1, 1, 14, 2, 0, 123000, tzinfo=UTC)
    assert (back.level, back.message, back.source, back.tags, back.metadata, back.id) == \
        ("ERROR", "m", "db", ["a"], {"k": 1}, 7)


def test_log_entry_from_dict_accepts_other_timestamp_forms() -> None:
    assert LogEntry.from_dict({"timestamp": 1_704_117_720, "message": "x"}).timestamp == \
        datetime(2024, 1, 1, 14, 2, tzinfo=UTC)
    assert LogEntry.from_dict({"timestamp": "2024-01-01T15:02:00+01:00"}).timestamp == \
        datetime(2024, 1, 1, 14, 2, tzinfo=UTC)
    # unparsable: the daemon's rule (DESIGN §2), now + a flag + the original text
    before = datetime.now(UTC)
    flagged = LogEntry.from_dict({"timestamp": "yesterday-ish", "level": "warning", "tags": "solo"})
    assert flagged.timestamp >= before - timedelta(seconds=1)
    assert flagged.metadata == {"_ts_invalid": True, "_ts_original": "yesterday-ish"}
    assert flagged.level == "WARN" and flagged.tags == ["solo"]


def test_alert_types_keep_the_seed_defaults() -> None:
    rule = AlertRule(name="errors")
    assert (rule.severity, rule.threshold, rule.time_window, rule.cooldown, rule.enabled, rule.group_by) == \
        (AlertSeverity.MEDIUM, 1, timedelta(minutes=5), timedelta(minutes=10), True, None)
    assert AlertSeverity("critical") is AlertSeverity.CRITICAL and AlertSeverity.HIGH == "high"


# --- ingest and query -----------------------------------------------------------------------------


def test_ingest_and_query_with_seed_filters_match_a_plain_oracle(engine: LogAnalyticsEngine) -> None:
    source = unique_source()
    entries = make_entries(source)
    assert engine.ingest_logs(entries) == len(entries)
    mine: Callable[[LogEntry], bool] = lambda e: e.source == source  # noqa: E731
    cases: list[tuple[dict[str, Any], Callable[[LogEntry], bool]]] = [
        ({}, lambda e: True),
        ({"level": "ERROR"}, lambda e: e.level == "ERROR"),
        ({"level": ["warn", "FATAL"]}, lambda e: e.level in ("WARN", "FATAL")),
        ({"keyword": "timeout"}, lambda e: "timeout" in e.message.split()),
        ({"keywords": ["connection", "timeout"]}, lambda e: {"connection", "timeout"} <= set(e.message.split())),
        ({"tags": ["net", "disk"]}, lambda e: bool({"net", "disk"} & set(e.tags))),
        ({"min_severity": "ERROR"}, lambda e: SEVERITY[e.level] >= SEVERITY["ERROR"]),
        # both ends inclusive: minutes 2..4
        ({"start_time": T0 + timedelta(minutes=2), "end_time": T0 + timedelta(minutes=4)},
         lambda e: T0 + timedelta(minutes=2) <= e.timestamp <= T0 + timedelta(minutes=4)),
    ]
    for filters, keep in cases:
        got = engine.query_logs({**filters, "source": source})
        assert [e.message for e in got] == oracle(entries, lambda e: mine(e) and keep(e)), filters
    stored = engine.query_logs({"source": source})
    assert all(isinstance(e.id, int) for e in stored) and len({e.id for e in stored}) == len(entries)
    assert stored[0].timestamp == T0 + timedelta(minutes=7) and stored[0].tags == []


def test_query_string_sorting_and_paging(engine: LogAnalyticsEngine) -> None:
    source = unique_source()
    entries = make_entries(source)
    engine.ingest_logs(entries)
    errors = engine.query_logs(f"source:{source} level:>=ERROR")
    assert [e.message for e in errors] == oracle(entries, lambda e: SEVERITY[e.level] >= 40)
    ascending = engine.query_logs({"source": source}, sort_desc=False, page=2, page_size=3)
    assert [e.message for e in ascending] == [e.message for e in entries[3:6]]
    assert engine.query_logs({"source": source}, page=3, page_size=3)[-1].message == entries[0].message


def test_bad_filters_raise_bad_query(engine: LogAnalyticsEngine) -> None:
    with pytest.raises(BadQuery, match="unknown filter key"):
        engine.query_logs({"levle": "ERROR"})
    with pytest.raises(BadQuery, match="column"):
        engine.query_logs("level:ERROR (")
    with pytest.raises(BadQuery, match="sort_by"):
        engine.query_logs(None, sort_by="level")


def test_ingest_log_returns_whether_the_entry_was_accepted(engine: LogAnalyticsEngine) -> None:
    source = unique_source()
    assert engine.ingest_log({"timestamp": "2024-01-01T00:00:00Z", "message": "as a dict", "source": source})
    future = datetime.now(UTC) + timedelta(days=30)  # beyond max_future (2 days): rejected
    assert engine.ingest_log(LogEntry(timestamp=future, level="INFO", message="from the future", source=source)) is False
    assert [e.message for e in engine.query_logs({"source": source})] == ["as a dict"]


def test_pre_ingest_hooks_change_and_drop_entries(engine: LogAnalyticsEngine) -> None:
    source = unique_source()

    def redact(entry: LogEntry) -> LogEntry:
        entry.message = entry.message.replace("secret", "[redacted]")
        return entry

    def drop_debug(entry: LogEntry) -> LogEntry | None:
        return None if entry.level == "DEBUG" else entry

    engine.add_pre_ingest_hook(redact)
    engine.add_pre_ingest_hook(drop_debug)
    assert engine.ingest_log(LogEntry(T0, "DEBUG", "noise", source=source)) is False
    accepted = engine.ingest_logs([LogEntry(T0, "INFO", "the secret is out", source=source),
                                   {"timestamp": "2024-03-01T12:01:00Z", "level": "debug", "message": "x",
                                    "source": source}])
    assert accepted == 1
    assert [e.message for e in engine.query_logs({"source": source})] == ["the [redacted] is out"]
    with pytest.raises(TypeError):
        engine.add_pre_ingest_hook("not callable")  # type: ignore[arg-type]


def test_ingest_logs_from_file_counts_accepted_lines(engine: LogAnalyticsEngine, tmp_path: Path) -> None:
    source = unique_source()
    lines = [json.dumps({"timestamp": f"2024-01-01T00:00:0{i}Z", "message": f"line {i}", "source": source})
             for i in range(3)]
    path = tmp_path / "logs.jsonl"
    path.write_text(lines[0] + "\n{broken\n\n" + "\n".join(lines[1:]) + "\n")
    assert engine.ingest_logs_from_file(path) == 3
    assert engine.count_logs({"source": source}) == 3
    # with a hook the file is parsed here, and the hook sees every entry
    seen: list[str] = []
    engine.add_pre_ingest_hook(lambda entry: seen.append(entry.message) or entry)
    assert engine.ingest_logs_from_file(path) == 3
    assert seen == ["line 0", "line 1", "line 2"]


def test_eight_threads_ingest_concurrently(engine: LogAnalyticsEngine) -> None:
    source = unique_source()
    per_thread = 25
    errors: list[BaseException] = []
    results: list[bool] = []
    results_lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait(timeout=30)
            if n % 2 == 0:  # hooks added while other threads ingest must not break them
                engine.add_pre_ingest_hook(lambda entry: entry)
            for i in range(per_thread):
                ok = engine.ingest_log(LogEntry(T0 + timedelta(seconds=i), "INFO", f"t{n} m{i}", source=source))
                with results_lock:
                    results.append(ok)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "an ingest thread hung"
    assert errors == []
    assert results.count(True) == 8 * per_thread
    stored = engine.query_logs({"source": source}, page_size=1000)
    assert sorted(e.message for e in stored) == sorted(f"t{n} m{i}" for n in range(8) for i in range(per_thread))


# --- aggregations, stats, metrics -----------------------------------------------------------------


def test_aggregate_logs(engine: LogAnalyticsEngine) -> None:
    source = unique_source()
    entries = make_entries(source)
    engine.ingest_logs(entries)
    result = engine.aggregate_logs({"source": source}, group_by="level", time_interval=timedelta(minutes=4),
                                   top_n=2, top_field="tags")
    assert result["total"] == 8
    assert result["group_by"] == {"DEBUG": 1, "INFO": 2, "WARN": 1, "ERROR": 2, "FATAL": 1, "TRACE": 1}
    # tags: db 2, net 2, auth 2, cache 1, disk 1 -> the top 2 are two of the three tied at 2
    top = result["top"]["tags"]
    assert len(top) == 2 and all(count == 2 for _, count in top)
    assert {value for value, _ in top} <= {"db", "net", "auth"}
    # 4-minute buckets aligned to the epoch: 12:00 holds minutes 0-3, 12:04 minutes 4-7
    assert result["time_histogram"] == [["2024-03-01T12:00:00Z", 4], ["2024-03-01T12:04:00Z", 4]]
    assert result["partial"] is False
    histogram = engine.aggregate_logs(f"source:{source}", histogram_field="source")
    assert histogram["histogram"] == {source: 8}


def test_stats_and_metrics(engine: LogAnalyticsEngine) -> None:
    source = unique_source()
    engine.ingest_logs(make_entries(source)[:2])
    stats = engine.get_stats()
    assert stats["by_source"][source] == 2 and len(stats["shards"]) == 2
    assert json.loads(engine.export_metrics_json())["by_source"][source] == 2
    assert "# TYPE shardlog_" in engine.export_metrics_prometheus()


# --- connecting and the private daemon ------------------------------------------------------------


def test_connect_by_data_dir_and_to_nothing(daemon: DaemonProcess, tmp_path: Path) -> None:
    with LogAnalyticsEngine.connect(str(daemon.data_dir)) as by_dir:
        assert by_dir.get_stats()["total_logs"] >= 0
    with pytest.raises(ShardUnavailable, match="cannot connect"):
        LogAnalyticsEngine.connect(str(tmp_path / "nothing.sock"))
    with pytest.raises(ValueError, match="unix socket"):
        LogAnalyticsEngine.connect("http://127.0.0.1:9428")


def test_private_daemon_starts_serves_and_stops() -> None:
    engine = LogAnalyticsEngine(shards=2)
    try:
        process = engine._process
        assert process is not None and process.poll() is None
        data_dir = engine.data_dir
        assert data_dir is not None and data_dir.is_dir()
        assert engine.ingest_log(LogEntry(T0, "ERROR", "private one", source="p")) is True
        assert [e.message for e in engine.query_logs({"level": "ERROR"})] == ["private one"]
        assert engine.get_stats()["total_logs"] == 1  # nothing from the shared daemon leaks in
    finally:
        engine.close()
    assert process.poll() is not None  # stopped and reaped
    assert not data_dir.parent.exists()  # the temporary dir is removed
    assert engine.closed
    engine.close()  # idempotent


def test_private_daemon_that_cannot_start_raises_with_its_log(tmp_path: Path) -> None:
    data_dir = Path(tmp_path) / "d"
    data_dir.mkdir()
    (data_dir / "DATADIR.json").write_text("this is not a manifest")
    with pytest.raises(ShardUnavailable, match="exited with code") as info:
        LogAnalyticsEngine(data_dir=data_dir, startup_timeout_s=30)
    assert "its log ends" in info.value.message
    assert data_dir.is_dir()  # the caller's data dir is never removed


# --- pure helpers ---------------------------------------------------------------------------------


class FlakyClient:
    """Fails the first ``failures`` calls with ``error``, then answers ``{"ok": n}``."""

    path = "/fake.sock"

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def call(self, op: str, args: dict[str, Any]) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return {"ok": self.calls}


def test_call_retrying_backs_off_and_honours_retry_after() -> None:
    sleeps: list[float] = []
    client = FlakyClient(3, Overloaded("queues full", retry_after_s=0.5))
    assert call_retrying(client, "ingest", {}, first_delay_s=0.1, sleep=sleeps.append) == {"ok": 4}  # type: ignore[arg-type]
    assert sleeps == [0.5, 0.5, 0.5]  # retry_after_s beats the 0.1 / 0.2 / 0.4 backoff
    sleeps.clear()
    client = FlakyClient(2, ShardUnavailable("dropped"))
    call_retrying(client, "ingest", {}, first_delay_s=0.1, sleep=sleeps.append)  # type: ignore[arg-type]
    assert sleeps == [0.1, 0.2]


def test_call_retrying_gives_up_and_never_retries_user_errors() -> None:
    sleeps: list[float] = []
    client = FlakyClient(10, ShardUnavailable("down"))
    with pytest.raises(ShardUnavailable):
        call_retrying(client, "ingest", {}, attempts=3, sleep=sleeps.append)  # type: ignore[arg-type]
    assert client.calls == 3 and len(sleeps) == 2
    client = FlakyClient(1, BadQuery("bad"))
    with pytest.raises(BadQuery):
        call_retrying(client, "query", {}, sleep=sleeps.append)  # type: ignore[arg-type]
    assert client.calls == 1


def test_read_line_chunks() -> None:
    chunks = list(read_line_chunks(["a\n", "b\r\n", "c"], max_lines=2))
    assert chunks == [(1, ["a", "b"]), (3, ["c"])]
    assert list(read_line_chunks(["xx\n", "yy\n", "z\n"], max_lines=100, max_bytes=2)) == \
        [(1, ["xx"]), (2, ["yy"]), (3, ["z"])]
