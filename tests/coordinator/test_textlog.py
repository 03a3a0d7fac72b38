"""coordinator.textlog: text log formats, year-less times, multi-line records, and text ingest
through the service, the CLI and the TCP listener of a real daemon.

The loghub corpus (tests/fixtures/loghub/text_*.log, 40 real lines per format) is checked against
text_expected.json, which make_text_expected.py derived from loghub's own structured CSV columns
(not from this parser).
"""

from __future__ import annotations

import json
import socket
import types
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.main import cli
from coordinator.config import Config
from coordinator.metrics import Metrics
from coordinator.service import Service
from coordinator.textlog import (YEARLESS_FUTURE_TOLERANCE_NS, TextParser, TextRecord, format_name, parse_line,
                                 parse_text)
from storage.record import normalize_record
from storage.timefmt import NS_PER_S, format_timestamp, parse_timestamp
from tests.daemon import Daemon, free_port
from tests.helpers import wait_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "loghub"
EXPECTED = json.loads((FIXTURES / "text_expected.json").read_text(encoding="utf-8"))
NOW_NS = parse_timestamp("2024-07-15T00:00:00Z")


def ns(text: str) -> int:
    value = parse_timestamp(text)
    assert value is not None, text
    return value


def stored(raw: dict[str, Any], now_ns: int = NOW_NS) -> dict[str, Any]:
    """What the daemon would store for a raw record, with the timestamp as RFC 3339."""
    record = normalize_record(raw, now_ns=now_ns)
    return {"timestamp": format_timestamp(record["ts_ns"]), "level": record["level"], "source": record["source"],
            "thread_id": record["thread_id"], "message": record["message"], "metadata": record["metadata"]}


def one(line: str, now_ns: int = NOW_NS) -> tuple[str, dict[str, Any]]:
    """(format name, stored record) of one line; an unknown line is kept whole, as TextParser does."""
    index, raw = parse_line(line, now_ns=now_ns)
    return format_name(index), stored(raw if raw is not None else {"message": line}, now_ns)


# --- the loghub corpus --------------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", sorted(EXPECTED["files"]))
def test_loghub_lines_parse_as_loghub_structured_them(file_name: str) -> None:
    expected = EXPECTED["files"][file_name]
    now_ns = ns(EXPECTED["now"])
    # split on LF only: the copied lines keep loghub's CRLF ends, which the parser must take off
    lines = (FIXTURES / file_name).read_bytes().decode("utf-8").split("\n")
    records = parse_text(lines, now_ns=now_ns)
    assert [r.line for r in records] == [e["line"] for e in expected]
    for record, want in zip(records, expected):
        got = {"line": record.line, **stored(record.raw, now_ns)}
        assert got == want, lines[record.line - 1]


def test_the_corpus_has_variety() -> None:
    # the expectations are only as good as what they cover: several levels and sources per format
    for file_name, records in EXPECTED["files"].items():
        assert len(records) >= 40, file_name
        if file_name != "text_linux.log":  # BSD syslog without PRI carries no level
            assert len({r["level"] for r in records}) >= 2, file_name
        if file_name != "text_apache_error.log":  # Apache 2.0 error logs name no module
            assert len({r["source"] for r in records}) >= 2, file_name


# --- year-less times ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("now", "line", "expected"), [
    # Dec -> Jan rollover: read just after New Year, December is last year's
    ("2025-01-01T00:10:00Z", "Dec 31 23:59:00 host app: x", "2024-12-31T23:59:00Z"),
    # a sender's clock a little fast at New Year's Eve: January is next year's
    ("2024-12-31T22:00:00Z", "Jan  1 00:00:30 host app: x", "2025-01-01T00:00:30Z"),
    ("2024-06-01T10:00:00Z", "Jun  1 12:00:00 host app: x", "2024-06-01T12:00:00Z"),
    ("2024-06-01T10:00:00Z", "Jun 15 12:00:00 host app: x", "2023-06-15T12:00:00Z"),
    ("2025-03-01T00:00:00Z", "Feb 29 08:00:00 host app: x", "2024-02-29T08:00:00Z"),
    ("2025-01-02T00:00:00Z", "12-31 23:00:00.250  10  11 I Tag: x", "2024-12-31T23:00:00.250Z"),
])
def test_a_time_without_a_year_takes_the_latest_year_not_in_the_future(now: str, line: str, expected: str) -> None:
    _, record = one(line, ns(now))
    assert record["timestamp"] == expected


def _oracle_year(now: datetime, month: int, day: int, clock: tuple[int, int, int]) -> datetime | None:
    for year in range(now.year + 1, now.year - 9, -1):
        try:
            moment = datetime(year, month, day, *clock, tzinfo=timezone.utc)
        except ValueError:
            continue
        if moment <= now + timedelta(seconds=YEARLESS_FUTURE_TOLERANCE_NS // NS_PER_S):
            return moment
    return None


@settings(max_examples=300, deadline=None)
@given(now=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1)),
       month=st.integers(1, 12), day=st.integers(1, 31), hour=st.integers(0, 23), minute=st.integers(0, 59),
       second=st.integers(0, 59))
def test_year_inference_matches_a_datetime_oracle(now: datetime, month: int, day: int, hour: int, minute: int,
                                                  second: int) -> None:
    now = now.replace(tzinfo=timezone.utc)
    now_ns = int(now.timestamp()) * NS_PER_S + now.microsecond * 1000
    months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    line = f"{months[month - 1]} {day:2d} {hour:02d}:{minute:02d}:{second:02d} host app: hello"
    name, record = one(line, now_ns)
    want = _oracle_year(now, month, day, (hour, minute, second))
    if want is None:  # an impossible date (Apr 31) is no syslog timestamp: the line is kept whole
        assert "_ts_invalid" in record["metadata"] and record["message"] == line, (name, record)
    else:
        assert record["timestamp"] == format_timestamp(int(want.timestamp()) * NS_PER_S)


# --- one line of each format --------------------------------------------------------------------------


FORMAT_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("<34>Oct 11 22:14:15 mymachine su[77]: 'su root' failed", "syslog",
     {"timestamp": "2023-10-11T22:14:15Z", "level": "FATAL", "source": "su", "message": "'su root' failed",
      "metadata": {"facility": 4, "host": "mymachine", "proc_id": 77}}),
    ("Jun  3 07:00:01 CRON[123]: (root) CMD (run-parts)", "syslog",  # no host
     {"timestamp": "2024-06-03T07:00:01Z", "level": "INFO", "source": "CRON", "message": "(root) CMD (run-parts)",
      "metadata": {"proc_id": 123}}),
    ("<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 9 ID47 - An application event",
     "syslog5424", {"timestamp": "2003-10-11T22:14:15.003Z", "level": "INFO", "source": "evntslog",
                    "message": "An application event",
                    "metadata": {"host": "mymachine.example.com", "facility": 20, "proc_id": 9, "msgid": "ID47"}}),
    ("[Wed Oct 11 14:32:52.123456 2000] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187:5678] "
     "File does not exist: /usr/local/apache2/htdocs/favicon.ico", "apache_error",
     {"timestamp": "2000-10-11T14:32:52.123456Z", "level": "ERROR", "source": "core", "thread_id": "4328636416",
      "message": "[client 72.15.99.187:5678] File does not exist: /usr/local/apache2/htdocs/favicon.ico",
      "metadata": {"proc_id": 35708, "client": "72.15.99.187:5678"}}),
    ('127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326', "access",
     {"timestamp": "2000-10-10T20:55:36Z", "level": "INFO", "source": "",
      "message": '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326',
      "metadata": {"client": "127.0.0.1", "user": "frank", "method": "GET", "path": "/apache_pb.gif",
                   "protocol": "HTTP/1.0", "status": 200, "bytes": 2326}}),
    ('10.1.2.3 - - [01/Jan/2024:00:00:01 +0000] "POST /api HTTP/1.1" 503 - "https://x.example/" "curl/8.0"',
     "access", {"timestamp": "2024-01-01T00:00:01Z", "level": "ERROR", "source": "",
                "message": '10.1.2.3 - - [01/Jan/2024:00:00:01 +0000] "POST /api HTTP/1.1" 503 - '
                           '"https://x.example/" "curl/8.0"',
                "metadata": {"client": "10.1.2.3", "method": "POST", "path": "/api", "protocol": "HTTP/1.1",
                             "status": 503, "referer": "https://x.example/", "user_agent": "curl/8.0"}}),
    ("2024-02-03 04:05:06,789 [pool-1-thread-2] WARN  com.example.Cache - eviction slow", "iso",
     {"timestamp": "2024-02-03T04:05:06.789Z", "level": "WARN", "source": "com.example.Cache",
      "thread_id": "pool-1-thread-2", "message": "eviction slow", "metadata": {}}),
    ("2024-02-03 04:05:06.789  INFO 4242 --- [           main] o.s.b.w.e.tomcat.TomcatWebServer         : "
     "Tomcat started", "iso", {"timestamp": "2024-02-03T04:05:06.789Z", "level": "INFO",
                               "source": "o.s.b.w.e.tomcat.TomcatWebServer", "thread_id": "main",
                               "message": "Tomcat started", "metadata": {"proc_id": 4242}}),
    ("2024-02-03 04:05:06,789 - myapp.db - ERROR - connection lost", "iso",
     {"timestamp": "2024-02-03T04:05:06.789Z", "level": "ERROR", "source": "myapp.db",
      "message": "connection lost", "metadata": {}}),
    ("2024-02-03T04:05:06.5+02:00 [warning] disk almost full", "iso",
     {"timestamp": "2024-02-03T02:05:06.500Z", "level": "WARN", "source": "", "message": "disk almost full",
      "metadata": {}}),
    ("2024-02-03T04:05:06Z\tinfo\tserver started", "iso",
     {"timestamp": "2024-02-03T04:05:06Z", "level": "INFO", "source": "", "message": "server started",
      "metadata": {}}),
    ("2024-02-03T04:05:06.123456+00:00 web-1 nginx[811]: worker started", "iso",
     {"timestamp": "2024-02-03T04:05:06.123456Z", "level": "INFO", "source": "nginx", "message": "worker started",
      "metadata": {"host": "web-1", "proc_id": 811}}),
    ("2024-02-03T04:05:06Z Information about the release", "iso",  # "Information" is no level word
     {"timestamp": "2024-02-03T04:05:06Z", "level": "INFO", "source": "", "message": "Information about the release",
      "metadata": {}}),
    ("03-17 16:13:38.811 W/ActivityManager( 1702): Unable to start", "logcat",
     {"timestamp": "2024-03-17T16:13:38.811Z", "level": "WARN", "source": "ActivityManager",
      "message": "Unable to start", "metadata": {"proc_id": 1702}}),
    ("E0203 04:05:06.123456    1234 controller.go:114] sync failed", "glog",
     {"timestamp": "2024-02-03T04:05:06.123456Z", "level": "ERROR", "source": "", "thread_id": "1234",
      "message": "sync failed", "metadata": {"caller": "controller.go:114"}}),
    ("081109 203615 148 WARN dfs.DataNode: Slow BlockReceiver", "hdfs",
     {"timestamp": "2008-11-09T20:36:15Z", "level": "WARN", "source": "dfs.DataNode",
      "message": "Slow BlockReceiver", "metadata": {"proc_id": 148}}),
]


@pytest.mark.parametrize(("line", "name", "expected"), FORMAT_CASES, ids=[c[1] + str(i) for i, c in
                                                                        enumerate(FORMAT_CASES)])
def test_each_format_yields_time_level_source_and_fields(line: str, name: str, expected: dict[str, Any]) -> None:
    got_name, record = one(line)
    assert got_name == name
    assert record == {"thread_id": None, **expected}


@pytest.mark.parametrize(("line", "level", "source", "message"), [
    ("WARNING:root:low memory", "WARN", "root", "low memory"),
    ("ERROR: disk full", "ERROR", "", "disk full"),
    ("[DEBUG] cache miss", "DEBUG", "", "cache miss"),
])
def test_a_level_without_a_timestamp_gets_the_ingest_time(line: str, level: str, source: str, message: str) -> None:
    _, record = one(line)
    assert (record["level"], record["source"], record["message"]) == (level, source, message)
    assert record["metadata"]["_ts_invalid"] is True
    assert record["timestamp"] == format_timestamp(NOW_NS)


@pytest.mark.parametrize("line", ["just some words", "error connecting (lower case, no timestamp)",
                                  "{not json at all", "Jun 31 10:00:00 host app: no such date",
                                  "9999-99-99 99:99:99 garbage"])
def test_an_unknown_line_is_kept_whole_with_the_ingest_time(line: str) -> None:
    records = parse_text([line + "\n"], now_ns=NOW_NS)
    assert records == [TextRecord(1, {"message": line})]
    assert stored(records[0].raw)["timestamp"] == format_timestamp(NOW_NS)


# --- multi-line records -------------------------------------------------------------------------------

JAVA_TRACE = [
    "2024-02-03 04:05:06,000 ERROR [main] com.example.Job: job failed",
    "java.lang.IllegalStateException: boom",
    "\tat com.example.Job.run(Job.java:42)",
    "\tat java.base/java.lang.Thread.run(Thread.java:833)",
    "Caused by: java.io.IOException: disk full",
    "\tat com.example.Disk.write(Disk.java:7)",
    "\t... 2 more",
    "2024-02-03 04:05:07,000 INFO [main] com.example.Job: retrying",
]
PYTHON_TRACE = [
    "2024-02-03 04:05:08,000 - worker - ERROR - task crashed",
    "Traceback (most recent call last):",
    '  File "/app/worker.py", line 10, in run',
    "    result = compute()",
    "ZeroDivisionError: division by zero",
    "",
    "2024-02-03 04:05:09,000 - worker - INFO - next task",
]


def test_stack_traces_are_joined_to_their_first_line() -> None:
    records = parse_text(JAVA_TRACE + PYTHON_TRACE, now_ns=NOW_NS)
    assert [r.line for r in records] == [1, 8, 9, 15]
    assert records[0].raw["message"] == "\n".join(["job failed", *JAVA_TRACE[1:7]])
    assert records[0].raw["level"] == "ERROR" and records[0].raw["source"] == "com.example.Job"
    assert records[1].raw["message"] == "retrying"
    assert records[2].raw["message"] == "\n".join(["task crashed", *PYTHON_TRACE[1:5]])
    assert records[3].raw["message"] == "next task"


def test_feed_returns_a_record_once_the_next_one_starts_and_flush_returns_the_last() -> None:
    parser = TextParser(NOW_NS)
    assert parser.feed(JAVA_TRACE[0]) == [] and parser.pending
    for line in JAVA_TRACE[1:7]:
        assert parser.feed(line) == []
    done = parser.feed(JAVA_TRACE[7])
    assert [r.line for r in done] == [1] and done[0].raw["message"].count("\n") == 6
    assert [r.line for r in parser.flush()] == [8]
    assert not parser.pending and parser.flush() == []


def test_explicit_line_numbers_count_on_and_blank_lines_keep_their_numbers() -> None:
    parser = TextParser(NOW_NS, first_line=100)
    out = parser.feed("first")
    out += parser.feed("   ")  # blank: skipped, but numbered
    out += parser.feed("second")
    out += parser.feed("third", line_no=500)
    out += parser.feed("fourth")
    out += parser.flush()
    assert [(r.line, r.raw["message"]) for r in out] == [(100, "first"), (102, "second"), (500, "third"),
                                                          (501, "fourth")]


def test_a_continuation_line_with_nothing_before_it_is_its_own_record() -> None:
    records = parse_text(["\tat a.B.c(B.java:1)", "   more indented"], now_ns=NOW_NS)
    assert [(r.line, r.raw) for r in records] == [(1, {"message": "\tat a.B.c(B.java:1)\n   more indented"})]


def test_an_exception_line_is_joined_only_when_it_is_no_known_format() -> None:
    records = parse_text(["2024-01-01T00:00:00Z ERROR failed", "com.x.FooException: bad", "unrelated line"],
                         now_ns=NOW_NS)
    assert [r.raw["message"] for r in records] == ["failed\ncom.x.FooException: bad", "unrelated line"]


def test_a_joined_record_stops_growing_at_the_message_limit() -> None:
    lines = ["2024-01-01T00:00:00Z ERROR boom"] + [f"\tat frame{i:03d}" for i in range(100)]
    records = parse_text(lines, now_ns=NOW_NS, max_message_bytes=200)
    assert len(records) > 1
    for record in records:
        assert len(record.raw["message"].encode()) <= 200
    # every line is somewhere, in order
    joined = "\n".join(r.raw["message"] for r in records)
    assert joined == "boom\n" + "\n".join(lines[1:])
    assert records[1].line == 1 + records[0].raw["message"].count("\n") + 1


# --- through the service ------------------------------------------------------------------------------


def _service() -> Service:
    # parse_lines needs only the config and the metrics; no shard is involved
    supervisor: Any = types.SimpleNamespace(slots=[])
    return Service(Config(), supervisor, Metrics(), data_dir="/nonexistent")


def test_auto_format_mixes_json_and_text_in_line_order() -> None:
    service = _service()
    lines = [JAVA_TRACE[0], JAVA_TRACE[2], '{"message": "json one"}', "plain", b"{broken", "\tat x"]
    raws, numbers, rejected = service.intake.parse_lines(lines, "auto", 10)
    # a JSON line (even a broken one) ends the text record before it: "\tat x" has nothing to join
    assert numbers == [10, 12, 13, 15]
    assert [r["message"] for r in raws] == ["job failed\n" + JAVA_TRACE[2], "json one", "plain", "\tat x"]
    assert [r["line"] for r in rejected] == [14]


def test_text_format_treats_a_brace_as_text() -> None:
    raws, numbers, rejected = _service().intake.parse_lines(['{"message": "x"}'], "text", 1)
    assert (raws, numbers, rejected) == ([{"message": '{"message": "x"}'}], [1], [])


def test_a_caller_owned_parser_keeps_its_open_record_across_calls() -> None:
    service = _service()
    parser = TextParser()
    raws, numbers, _ = service.intake.parse_lines(JAVA_TRACE[:3], "auto", 1, text_parser=parser, flush_text=False)
    assert raws == [] and parser.pending
    raws, numbers, _ = service.intake.parse_lines(JAVA_TRACE[3:], "auto", 4, text_parser=parser, flush_text=False)
    assert numbers == [1] and raws[0]["message"].count("\n") == 6
    raws, numbers, _ = service.intake.parse_lines([], "auto", 9, text_parser=parser)
    assert numbers == [8] and raws[0]["message"] == "retrying"


# --- a real daemon --------------------------------------------------------------------------------------


def _query(daemon: Daemon, q: str) -> list[dict[str, Any]]:
    return daemon.call("query", {"q": q, "sort": "asc", "limit": 100})["logs"]


def test_cli_ingest_format_text_end_to_end(daemon: Daemon, tmp_path: Path) -> None:
    marker = "m" + uuid.uuid4().hex[:12]
    lines = [line.replace("job failed", f"job failed {marker}").replace("retrying", f"retrying {marker}")
             for line in JAVA_TRACE]
    lines += [f"Jun 14 15:16:01 combo sshd(pam_unix)[19939]: session opened {marker}",
              f'{{"looks": "like json"}} {marker}',
              f"2024-02-03 04:05:10,000 WARN [main] a.B: {marker} " + "x" * 300_000]
    path = tmp_path / "app.log"
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli, ["ingest", str(path), "--format", "text", "--json", "--data-dir",
                                      str(daemon.data_dir)], env={"SHARDLOG_SOCKET": "", "SHARDLOG_DATA_DIR": ""},
                                catch_exceptions=False)
    summary = json.loads(result.stdout)
    assert result.exit_code == 1, result.output  # the 300 kB line is rejected; the others are stored
    assert summary["accepted"] == 4
    assert [(r["line"], "message is" in r["reason"]) for r in summary["rejected"]] == [(11, True)]
    logs = _query(daemon, marker)
    by_line = {log["message"].split("\n")[0]: log for log in logs}
    failed = by_line[f"job failed {marker}"]
    assert failed["timestamp"] == "2024-02-03T04:05:06Z" and failed["level"] == "ERROR"
    assert failed["source"] == "com.example.Job" and failed["thread_id"] == "main"
    assert failed["message"].split("\n")[1:] == JAVA_TRACE[1:7]
    assert by_line[f"retrying {marker}"]["timestamp"] == "2024-02-03T04:05:07Z"
    sshd = by_line[f"session opened {marker}"]
    assert sshd["timestamp"].endswith("-06-14T15:16:01Z") and sshd["source"] == "sshd(pam_unix)"
    assert sshd["metadata"] == {"host": "combo", "proc_id": 19939}
    braces = by_line[f'{{"looks": "like json"}} {marker}']
    assert braces["metadata"]["_ts_invalid"] is True
    assert len(logs) == 4


@pytest.fixture(scope="module")
def tcp_daemon() -> Any:
    port = free_port()
    with Daemon(shards=1, config={"tcp": f"127.0.0.1:{port}"}, name="tcp-text") as process:
        yield process, port


def test_tcp_text_joins_a_trace_split_across_writes_and_flushes_when_idle(tcp_daemon: Any) -> None:
    process, port = tcp_daemon
    marker = "t" + uuid.uuid4().hex[:12]
    text = ("\n".join(JAVA_TRACE[:7]).replace("job failed", f"job failed {marker}") + "\n").encode()
    cut = text.index(b"Caused by") + 4  # in the middle of a continuation line
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(text[:cut])
        conn.sendall(text[cut:])
        # the connection stays open: the record is stored after the listener's idle flush
        logs = wait_for(lambda: _query(process, marker) or None, 20.0, "the idle flush of the open record")
        assert len(logs) == 1
        assert logs[0]["message"] == "\n".join([f"job failed {marker}", *JAVA_TRACE[1:7]])
        assert logs[0]["level"] == "ERROR" and logs[0]["timestamp"] == "2024-02-03T04:05:06Z"
        # JSON lines still work on the same connection, and a text record ends at EOF
        conn.sendall(json.dumps({"message": f"json {marker}", "level": "warn"}).encode() + b"\n")
        conn.sendall(f"2024-02-03 04:05:07,000 INFO [main] a.B: last {marker}\n\tat a.B.c(B.java:1)".encode())

    def three() -> list[dict[str, Any]] | None:
        found = _query(process, marker)
        return found if len(found) >= 3 else None

    logs = wait_for(three, 20.0, "the JSON line and the record closed by EOF")
    # ascending time: the two 2024 records, then the JSON one (no timestamp: the ingest time)
    assert [log["message"] for log in logs] == [f"job failed {marker}\n" + "\n".join(JAVA_TRACE[1:7]),
                                                f"last {marker}\n\tat a.B.c(B.java:1)", f"json {marker}"]


_JSON_LINE = st.one_of(
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=8)), max_size=3).map(
        lambda d: json.dumps(d).encode()),
    st.sampled_from([b"", b"   ", b"{", b"not json", b'{"a": 1} x', b"[1, 2]", b"7", b'"s"', b"\t{}\t"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_JSON_LINE, max_size=12), st.integers(1, 1000), st.booleans())
def test_jsonl_lines_parse_with_their_line_numbers(lines: list[bytes], first_line: int, as_text: bool) -> None:
    """The all-valid fast path and the general loop agree with a plain per-line reading: blank
    lines skipped, every other line a value or a rejection, each with its own line number."""
    batch = [line.decode() for line in lines] if as_text else list(lines)
    raws, numbers, rejected = _service().intake.parse_lines(batch, "jsonl", first_line)
    expected_raws, expected_numbers, expected_rejected = [], [], []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)  # the daemon's JSON parser (it reads integers past 64 bits as floats)
        except orjson.JSONDecodeError:
            expected_rejected.append(first_line + index)
            continue
        expected_raws.append(value)
        expected_numbers.append(first_line + index)
    assert raws == expected_raws
    assert numbers == expected_numbers
    assert [r["line"] for r in rejected] == expected_rejected
