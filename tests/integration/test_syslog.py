"""The syslog listener of a real daemon (``syslog = "127.0.0.1:PORT"``), fed by real senders:
Python's ``logging.handlers.SysLogHandler`` over UDP and TCP, hand-made octet-counted and
newline-framed TCP frames, and rsyslog forwarding a file over TCP with both framings.

One daemon serves the module; each test isolates its records with a unique ``source`` (the syslog
tag or APP-NAME).  Every check waits for the exact number of records with a deadline, then checks
the fields of each.
"""

from __future__ import annotations

import calendar
import logging
import logging.handlers
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from storage.timefmt import parse_timestamp
from tests.daemon import Daemon, free_port, short_root
from tests.helpers import S_NS, wait_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "loghub"
ARRIVAL_TIMEOUT_S = 20.0
RSYSLOG_HOSTNAME = "sl-test-host"


@pytest.fixture(scope="module", params=["shards", "coordinator"])
def syslog_daemon(request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, int]]:
    """Every test runs against both places records can be parsed and normalized (config ``parse_in``)."""
    port = free_port()
    with Daemon(shards=2, config={"syslog": f"127.0.0.1:{port}", "parse_in": request.param},
                name=f"syslog-{request.param}") as daemon:
        yield daemon, port


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def wait_records(daemon: Daemon, source: str, expected: int) -> list[dict[str, Any]]:
    """The records of ``source`` (oldest first) once exactly ``expected`` have arrived; more is an error."""
    def arrived() -> bool:
        return int(daemon.call("count", {"source": source})["count"]) >= expected

    with daemon.logs_on_failure():
        wait_for(arrived, ARRIVAL_TIMEOUT_S, f"{expected} records of source {source}")
        answer = daemon.call("query", {"source": source, "sort": "asc", "limit": 10_000})
        assert answer["total"] == expected, f"{answer['total']} records of {source}, expected {expected}"
        return list(answer["logs"])


def rejected_frames(daemon: Daemon, transport: str, reason: str) -> float:
    text = daemon.call("metrics")["text"]
    for family in text_string_to_metric_families(text):
        if family.name == "shardlog_syslog_frames_rejected":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {"transport": transport, "reason": reason}:
                    return float(sample.value)
    return 0.0


def ts_ns(*fields: int) -> int:
    return calendar.timegm(fields + (0,) * (9 - len(fields))) * S_NS


def _bsd_year(month: int, day: int) -> int:
    """The year a year-less BSD date received now belongs to: the latest one not ahead of now
    (a day of slack for senders east of UTC)."""
    now_s = time.time()
    year = time.gmtime(now_s).tm_year
    return year if ts_ns(year, month, day) <= (now_s + 86_400) * S_NS else year - 1


def _octet(frame: bytes) -> bytes:
    return str(len(frame)).encode() + b" " + frame


def _wait_closed(sock: socket.socket, timeout_s: float = ARRIVAL_TIMEOUT_S) -> None:
    """Wait until the server closes ``sock`` (EOF or a reset)."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(4096):
            pass  # the listener sends nothing; anything read is ignored
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the listener did not close the connection within {timeout_s:g} s") from None


# --- Python logging ------------------------------------------------------------------------------

#: Python level -> syslog severity (SysLogHandler.mapPriority) -> shardlog level
PY_LEVELS = [(logging.DEBUG, "DEBUG"), (logging.INFO, "INFO"), (logging.WARNING, "WARN"), (logging.ERROR, "ERROR"),
             (logging.CRITICAL, "FATAL")]


def _log_through(handler: logging.Handler, source: str, count: int) -> list[tuple[str, str]]:
    """Log ``count`` messages through ``handler`` as Python code does; returns (level, message) sent."""
    handler.setFormatter(logging.Formatter(f"{source}[%(process)d]: %(message)s"))
    logger = logging.getLogger(f"shardlog.test.syslog.{source}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    sent = []
    try:
        for index in range(count):
            level, expected_level = PY_LEVELS[index % len(PY_LEVELS)]
            message = f"event {index} of {source}: größe ok"
            logger.log(level, message)
            sent.append((expected_level, message))
    finally:
        logger.removeHandler(handler)
        handler.close()
    return sent


@pytest.mark.parametrize("socktype,facility,count", [(socket.SOCK_DGRAM, "local3", 25),
                                                     (socket.SOCK_STREAM, "daemon", 300)],
                         ids=["udp", "tcp"])
def test_python_syslog_handler(syslog_daemon: tuple[Daemon, int], socktype: socket.SocketKind, facility: str,
                               count: int) -> None:
    daemon, port = syslog_daemon
    source = "py" + _uid()
    handler = logging.handlers.SysLogHandler(address=("127.0.0.1", port), socktype=socktype,
                                             facility=logging.handlers.SysLogHandler.facility_names[facility])
    sent = _log_through(handler, source, count)
    logs = wait_records(daemon, source, count)
    got = Counter((log["level"], log["message"]) for log in logs)
    assert got == Counter(sent)
    for log in logs:
        assert log["source"] == source
        # SysLogHandler sends no timestamp or hostname: the receive time, unflagged
        assert log["metadata"] == {"facility": facility, "proc_id": str(os.getpid())}


# --- raw frames ----------------------------------------------------------------------------------


def test_octet_counted_and_newline_frames_on_one_connection(syslog_daemon: tuple[Daemon, int]) -> None:
    daemon, port = syslog_daemon
    app = "raw" + _uid()
    frames = [
        _octet(f'<165>1 2026-03-01T10:00:00.5Z host-a {app} 77 ID9 [ex@1 k="v \\"q\\""] '.encode()
               + "\ufeffmulti\nline é".encode()),
        f"<11>Mar  1 10:00:01 host-b {app}[78]: newline framed\n".encode(),
        f"<12>2026-03-01T10:00:02Z host-c {app}: crlf framed\r\n".encode(),
        _octet(f"<13>Mar  1 10:00:03 host-d {app}: octet again".encode()),
        f"<14>1 2026-03-01T10:00:04Z host-e {app} - - - nul framed\x00".encode(),
        f"<15>Mar  1 10:00:05 host-f {app}: last, no newline, then close".encode(),
    ]
    data = b"".join(frames)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        # cut inside the first frame's octet count's message, and inside the second frame
        for piece in (data[:10], data[10:150], data[150:]):
            sock.sendall(piece)
    logs = wait_records(daemon, app, len(frames))
    got = [(parse_timestamp(log["timestamp"]), log["level"], log["message"], log["metadata"]) for log in logs]
    bsd_year = _bsd_year(3, 1)
    assert got == [
        (ts_ns(2026, 3, 1, 10, 0, 0) + S_NS // 2, "INFO", "multi\nline é",
         {"facility": "local4", "host": "host-a", "proc_id": "77", "msgid": "ID9", "ex@1.k": 'v "q"'}),
        (ts_ns(bsd_year, 3, 1, 10, 0, 1), "ERROR", "newline framed",
         {"facility": "user", "host": "host-b", "proc_id": "78"}),
        (ts_ns(2026, 3, 1, 10, 0, 2), "WARN", "crlf framed", {"facility": "user", "host": "host-c"}),
        (ts_ns(bsd_year, 3, 1, 10, 0, 3), "INFO", "octet again", {"facility": "user", "host": "host-d"}),
        (ts_ns(2026, 3, 1, 10, 0, 4), "INFO", "nul framed", {"facility": "user", "host": "host-e"}),
        (ts_ns(bsd_year, 3, 1, 10, 0, 5), "DEBUG", "last, no newline, then close",
         {"facility": "user", "host": "host-f"}),
    ]
    assert all(log["source"] == app for log in logs)


def test_udp_datagrams_with_and_without_newline(syslog_daemon: tuple[Daemon, int]) -> None:
    daemon, port = syslog_daemon
    app = "udp" + _uid()
    datagrams = [f"<14>{app}: no newline".encode(), f"<14>{app}: with newline\n".encode(),
                 f"<14>1 2026-03-01T10:00:00Z h {app} - - - five\nfour two lines".encode()]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))
    logs = wait_records(daemon, app, 3)
    assert sorted(log["message"] for log in logs) == ["five\nfour two lines", "no newline", "with newline"]


@pytest.mark.parametrize("bad", [b"12x <13>not an octet count\n", b"99999999 <13>absurdly large"],
                         ids=["not-a-number", "too-large"])
def test_a_malformed_frame_closes_only_its_connection(syslog_daemon: tuple[Daemon, int], bad: bytes) -> None:
    daemon, port = syslog_daemon
    app = "bad" + _uid()
    before = rejected_frames(daemon, "tcp", "framing")
    with socket.create_connection(("127.0.0.1", port)) as other, \
            socket.create_connection(("127.0.0.1", port)) as broken:
        broken.sendall(_octet(f"<13>{app}: kept 1".encode()) + f"<13>{app}: kept 2\n".encode() + bad
                       + f"<13>{app}: after the bad frame\n".encode())
        _wait_closed(broken)
        # the connection opened before keeps working, and so does a new one
        other.sendall(f"<13>{app}: other connection\n".encode())
        with socket.create_connection(("127.0.0.1", port)) as fresh:
            fresh.sendall(_octet(f"<13>{app}: new connection".encode()))
        logs = wait_records(daemon, app, 4)
    assert sorted(log["message"] for log in logs) == ["kept 1", "kept 2", "new connection", "other connection"]
    assert rejected_frames(daemon, "tcp", "framing") == before + 1


# --- rsyslog -------------------------------------------------------------------------------------

RSYSLOG_CONF = """
global(workDirectory="{work}" localHostName="{hostname}")
module(load="imfile")
input(type="imfile" File="{input}" Tag="{tag}:" Facility="local3" Severity="warning" freshStartTail="off"
      ruleset="forward")
ruleset(name="forward") {{
  action(type="omfwd" Target="127.0.0.1" Port="{port}" Protocol="tcp" {framing})
}}
"""


@pytest.fixture
def rsyslogd() -> str:
    path = shutil.which("rsyslogd") or next((p for p in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd")
                                             if os.access(p, os.X_OK)), None)
    if path is None:
        pytest.skip("rsyslogd is not installed (Debian package rsyslog; .ci/run installs it)")
    return path


@pytest.mark.parametrize("framing", ["octet-counted", "traditional"])
def test_rsyslog_forwards_a_file(syslog_daemon: tuple[Daemon, int], rsyslogd: str, framing: str) -> None:
    """rsyslog (its own config, pid file and work dir; no system log touched) reads loghub lines with
    imfile and forwards them with omfwd over TCP; every line arrives once, with rsyslog's fields."""
    daemon, port = syslog_daemon
    tag = "rs" + _uid()
    lines = [line.rstrip("\r") for line in (FIXTURES / "Linux_sample.log").read_text().splitlines()]
    root = short_root("slrs")
    try:
        (root / "work").mkdir()
        input_path = root / "input.log"
        input_path.write_text("".join(line + "\n" for line in lines))
        conf = root / "rsyslog.conf"
        conf.write_text(RSYSLOG_CONF.format(work=root / "work", hostname=RSYSLOG_HOSTNAME, input=input_path, tag=tag,
                                            port=port, framing=f'TCP_Framing="{framing}"'))
        with open(root / "rsyslogd.out", "wb") as out:
            proc = subprocess.Popen([rsyslogd, "-n", "-f", str(conf), "-i", str(root / "rsyslogd.pid")],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            try:
                logs = wait_records(daemon, tag, len(lines))
            except AssertionError:
                raise AssertionError(f"rsyslogd said:\n{(root / 'rsyslogd.out').read_text(errors='replace')}"
                                     f"\nexit code: {proc.poll()}") from None
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert Counter(log["message"] for log in logs) == Counter(lines)
    for log in logs:
        assert (log["source"], log["level"]) == (tag, "WARN")
        # rsyslog stamps each line with the time it read it (a BSD timestamp): parsed, not flagged
        assert log["metadata"] == {"facility": "local3", "host": RSYSLOG_HOSTNAME}
