"""Plain-text log lines -> raw records: timestamp, level and source of common formats, and
multi-line records (stack traces) joined to their first line.

This module owns reading text logs (``shardlog ingest --format text|auto``, text lines on the TCP
listener).  It is pure: no I/O, no clock except ``time.time_ns()`` when no ``now_ns`` was given.

Recognised, tried in an order that starts with the format the previous line had (a file is
usually one format throughout):

==================  =====================================================================  ==============
format              example                                                                source
==================  =====================================================================  ==============
``syslog``          ``<13>Jun 14 15:16:01 combo sshd(pam_unix)[19939]: msg`` (PRI optional)  program (tag)
``syslog5424``      ``<165>1 2003-10-11T22:14:15.003Z host app 12 ID47 - msg``              app-name
``apache_error``    ``[Sun Dec 04 04:47:44 2005] [notice] msg``, 2.4 ``[core:error] [pid 1]``  module
``access``          common / combined log format (Apache, nginx)                           --
``iso``             log4j ``2015-10-18 18:01:47,978 INFO [main] org.x.Y: msg``, its default  logger
                    layout, Spring Boot, Python's ``%(asctime)s - %(name)s - %(levelname)s``
``iso``             Zookeeper ``2015-07-29 17:41:44,747 - INFO  [thread:Class@774] - msg``   class
``iso``             rsyslog files ``2024-01-01T12:00:00.123+00:00 host tag[pid]: msg``     tag
``iso``             any other line that starts with an ISO 8601 time (a level word after it)  --
``hdfs``            ``081109 203615 148 INFO dfs.DataNode$PacketResponder: msg``            component
``logcat``          ``03-17 16:13:38.811  1702  2395 D WindowManager: msg`` (and ``-v time``)  tag
``glog``            ``I0101 12:00:00.123456   1234 file.go:12] msg``                        --
``bgl``             ``- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 ... RAS KERNEL INFO msg``  component
``python``          ``WARNING:root:msg`` (logging's basicConfig default)                   logger
``level``           ``ERROR: msg``, ``[WARN] msg`` (no timestamp)                           --
==================  =====================================================================  ==============

Guarantees:

- A line that matches no format is kept whole as the message, with no timestamp (the daemon
  stamps the ingest time and flags it, DESIGN §2).  Nothing a line says is dropped: what is not
  the message went into a field (timestamp, level, source, ``thread_id``, ``host``) or metadata
  (``proc_id``, ``facility``, ``line``, access-log fields, ...).
- Times without an offset are UTC (DESIGN §2).  Times without a year (BSD syslog, logcat, glog)
  get the latest year that does not put them more than ``YEARLESS_FUTURE_TOLERANCE_NS`` after
  ``now_ns``: ``Dec 31 23:59`` read on January 1st is last year's, ``Jan 1 00:00`` read on
  December 31st a few hours early (a fast clock) is next year's.  Two-digit years are 20yy.
- A continuation line -- one starting with whitespace, ``at ``, ``Caused by:``, ``Suppressed:``,
  ``...``, a Python traceback's lines up to its final exception line, or an exception class line
  such as ``java.io.IOException: boom`` that matches no format -- is appended (with ``\\n``) to
  the message of the record before it, while the message stays within ``max_message_bytes``;
  past that the line starts a record of its own, so one runaway trace cannot eat a stream.
- Each record carries the number of its first line, so a rejection points at the right line.
- ``TextParser.feed`` returns records as soon as they are complete (the next record's first line
  arrived); ``flush`` returns the one still open.  Blank lines are skipped.
"""

from __future__ import annotations

import re
import time
from datetime import date
from typing import Any, Callable, NamedTuple

from storage.levels import normalize_level
from storage.timefmt import NS_PER_S, parse_timestamp

#: A year-less time may be this far ahead of the reading clock (local times read as UTC, senders'
#: clocks running fast) and still count as this year's.  It stays below the default
#: ``limits.max_future_ns`` (2 days), so a year-less time is never rejected as "in the future".
YEARLESS_FUTURE_TOLERANCE_NS = 86_400 * NS_PER_S
#: The daemon's default message limit; a joined record stops growing here.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_MONTH_RE = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"

#: Level words found after a timestamp; case-insensitive because Go and Node loggers write
#: ``info``.  Apache's ``trace1``..``trace8`` are handled where Apache is parsed.
_LEVEL_WORD = (r"(?i:trace|debug|info|notice|warn(?:ing)?|error|err|severe|fatal|crit(?:ical)?|alert"
               r"|emerg(?:ency)?|panic|fine(?:r|st)?|config|verbose)")
#: Levels storage.levels does not know: java.util.logging's, logcat's "A" (assert), BGL's FAILURE.
_EXTRA_LEVELS = {"FINE": "DEBUG", "FINER": "TRACE", "FINEST": "TRACE", "CONFIG": "INFO", "A": "FATAL",
                 "FAILURE": "ERROR"}

#: Raw record: what storage.record.normalize_record accepts.
Raw = dict[str, Any]


class TextRecord(NamedTuple):
    """One parsed record and the number of its first line."""

    line: int
    raw: Raw


# --- small helpers -------------------------------------------------------------------------------


def _level(text: str) -> str:
    upper = text.upper()
    mapped = _EXTRA_LEVELS.get(upper)
    if mapped is not None:
        return mapped
    return normalize_level(upper)


def _fraction_ns(digits: str | None) -> int:
    if not digits:
        return 0
    return int(digits[:9].ljust(9, "0"))


def _utc_ns(year: int, month: int, day: int, hour: int, minute: int, second: int, frac_ns: int) -> int | None:
    """ns since the epoch of a wall-clock time read as UTC; None for an impossible date or time."""
    if hour > 23 or minute > 59 or second > 60:
        return None
    try:
        days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:  # Feb 30, month 13, ...
        return None
    return (days * 86_400 + hour * 3_600 + minute * 60 + second) * NS_PER_S + frac_ns


def _yearless_ns(month: int, day: int, hour: int, minute: int, second: int, frac_ns: int,
                 now_ns: int) -> int | None:
    """The latest year's reading of a year-less time that is not more than the tolerance ahead of
    ``now_ns`` (see the module docstring); None for an impossible date."""
    year_now = date.fromordinal(_EPOCH_ORDINAL + now_ns // (86_400 * NS_PER_S)).year
    latest_ns = now_ns + YEARLESS_FUTURE_TOLERANCE_NS
    # Feb 29 exists once in four years (eight across 2100), hence the longer walk back.
    for year in range(year_now + 1, year_now - 9, -1):
        ts_ns = _utc_ns(year, month, day, hour, minute, second, frac_ns)
        if ts_ns is not None and ts_ns <= latest_ns:
            return ts_ns
        if ts_ns is None and not (month == 2 and day == 29):
            return None
    return None


def _put(raw: Raw, key: str, value: Any) -> None:
    """Set a metadata key (creating the map); empty and '-' values say "unknown" and are left out."""
    if value is None or value == "" or value == "-":
        return
    raw.setdefault("metadata", {})[key] = value


def _int_or_text(text: str) -> int | str:
    return int(text) if text.isdigit() and len(text) <= 18 else text


# --- formats -------------------------------------------------------------------------------------
# Each parser takes the line (no terminator) and now_ns, and returns a raw record or None ("not
# this format").  Each starts with a cheap test of the first character before its regex.

_BSD_RE = re.compile(
    r"(?:<(?P<pri>\d{1,3})>)?"
    rf"(?P<mon>{_MONTH_RE}) {{1,2}}(?P<day>\d{{1,2}}) (?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)(?:\.(?P<frac>\d{{1,9}}))?"
    # host is optional (files written by some daemons leave it out); a tag may carry one space
    # ("syslogd 1.4.1:") and a [pid]
    r"(?: (?:(?P<host>[^\s:\[\]]+) +)?(?P<tag>[^\s:\[\]]+(?: [^\s:\[\]]+)?)"
    r"(?:\[(?P<pid>[^\]\s]{1,32})\])?: *(?P<msg>.*)"
    r"|\s*(?P<rest>.*))",
    re.ASCII,
)


def _parse_bsd_syslog(line: str, now_ns: int) -> Raw | None:
    if line[:1] not in "<ADFJMNOS" or not line:
        return None
    match = _BSD_RE.match(line)
    if match is None:
        return None
    g = match.group
    ts_ns = _yearless_ns(_MONTHS[g("mon")], int(g("day")), int(g("h")), int(g("mi")), int(g("s")),
                         _fraction_ns(g("frac")), now_ns)
    if ts_ns is None:
        return None
    raw: Raw = {"timestamp": ts_ns}
    pri = g("pri")
    if pri is not None:
        if int(pri) > 191:
            return None
        facility, severity = divmod(int(pri), 8)
        raw["level"] = normalize_level(severity)
        _put(raw, "facility", facility)
    if g("tag") is not None:
        raw["message"] = g("msg").rstrip()
        raw["source"] = g("tag")
        if g("host") is not None:
            raw["host"] = g("host")
        _put(raw, "proc_id", g("pid") and _int_or_text(g("pid")))
    else:
        raw["message"] = g("rest").rstrip()
    return raw


_RFC5424_RE = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) (?P<msgid>\S+)(?: (?P<rest>.*))?",
    re.ASCII,
)


def _parse_rfc5424(line: str, now_ns: int) -> Raw | None:
    """RFC 5424 lines found in a file.  Structured data stays in the message; the syslog
    listener (coordinator.syslog) is the full parser."""
    if not line.startswith("<"):
        return None
    match = _RFC5424_RE.match(line)
    if match is None or int(match.group("pri")) > 191:
        return None
    g = match.group
    facility, severity = divmod(int(g("pri")), 8)
    raw: Raw = {"level": normalize_level(severity)}
    if g("ts") != "-":
        ts_ns = parse_timestamp(g("ts"))
        if ts_ns is None:
            return None
        raw["timestamp"] = ts_ns
    rest = g("rest") or ""
    if rest.startswith("- ") or rest == "-":
        rest = rest[2:]
    raw["message"] = rest.removeprefix("\ufeff").rstrip()
    if g("host") != "-":
        raw["host"] = g("host")
    if g("app") != "-":
        raw["source"] = g("app")
    _put(raw, "facility", facility)
    _put(raw, "proc_id", _int_or_text(g("proc")))
    _put(raw, "msgid", g("msgid"))
    return raw


_APACHE_ERROR_RE = re.compile(
    rf"\[(?:[A-Z][a-z]{{2}} )?(?P<mon>{_MONTH_RE}) (?P<day>\d{{1,2}}) (?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)"
    r"(?:\.(?P<frac>\d{1,9}))? (?P<year>\d{4})\] \[(?:(?P<module>[\w-]+):)?(?P<level>[A-Za-z]+\d?)\]"
    r"(?: \[pid (?P<pid>\d+)(?::tid (?P<tid>\d+))?\])? ?(?P<msg>.*)",
    re.ASCII,
)
_APACHE_CLIENT_RE = re.compile(r"\[client ([^\]\s]+)\]")


def _parse_apache_error(line: str, now_ns: int) -> Raw | None:
    if not line.startswith("["):
        return None
    match = _APACHE_ERROR_RE.match(line)
    if match is None:
        return None
    g = match.group
    ts_ns = _utc_ns(int(g("year")), _MONTHS[g("mon")], int(g("day")), int(g("h")), int(g("mi")), int(g("s")),
                    _fraction_ns(g("frac")))
    if ts_ns is None:
        return None
    level = g("level")
    # Apache 2.4 has trace1..trace8
    raw: Raw = {"timestamp": ts_ns, "level": "TRACE" if level.lower().startswith("trace") else _level(level),
                # the [client ...] part stays in the message (it is what people search for) and is
                # also a metadata field
                "message": g("msg").rstrip()}
    if g("module"):
        raw["source"] = g("module")
    if g("tid"):
        raw["thread_id"] = g("tid")
    _put(raw, "proc_id", g("pid") and int(g("pid")))
    client = _APACHE_CLIENT_RE.match(raw["message"])
    if client is not None:
        _put(raw, "client", client.group(1))
    return raw


_ACCESS_RE = re.compile(
    r"(?P<client>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<ts>[^\]]+)\] "
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<bytes>\d+|-)'
    r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?',
    re.ASCII,
)


def _parse_access(line: str, now_ns: int) -> Raw | None:
    if ' [' not in line[:300]:
        return None
    match = _ACCESS_RE.match(line)
    if match is None:
        return None
    g = match.group
    ts_ns = parse_timestamp(g("ts"))
    if ts_ns is None:
        return None
    status = int(g("status"))
    # an access log has no level; the status class is the closest thing (what dashboards colour by)
    level = "ERROR" if status >= 500 else "WARN" if status >= 400 else "INFO"
    # the whole line is the message: an access log line has no shorter "message" part
    raw: Raw = {"timestamp": ts_ns, "level": level, "message": line.rstrip()}
    _put(raw, "client", g("client"))
    _put(raw, "ident", g("ident"))
    _put(raw, "user", g("user"))
    parts = g("request").split(" ")
    if len(parts) == 3:
        _put(raw, "method", parts[0])
        _put(raw, "path", parts[1])
        _put(raw, "protocol", parts[2])
    else:
        _put(raw, "request", g("request"))
    _put(raw, "status", status)
    _put(raw, "bytes", int(g("bytes")) if g("bytes") != "-" else None)
    _put(raw, "referer", g("referer"))
    _put(raw, "user_agent", g("agent"))
    return raw


# ISO 8601 prefix: date, 'T' or space, time with optional seconds and fraction ('.' or ','), and an
# optional offset (maybe after a space, as in "2024-01-01 14:02:00 +0000").
_ISO_PREFIX_RE = re.compile(
    r"(?P<ts>\d{4}-\d\d-\d\d(?P<sep>[T ])\d\d:\d\d(?::\d\d(?:[.,]\d{1,9})?)?(?: ?(?:Z|[+-]\d\d(?::?\d\d)?)(?![\w:]))?)"
    r"(?:\s+|$)",
    re.ASCII,
)
# What may follow the timestamp, most specific first.
_AFTER_ISO: tuple[re.Pattern[str], ...] = (
    # Zookeeper: %d - %-5p [%t:%C{1}@%L] - %m   (the thread may hold ':' and '[...]')
    re.compile(
        rf"- +(?P<level>{_LEVEL_WORD}) +\[(?P<thread>.*?):(?P<cls>[^:@\s\]]+)@(?P<line>\d+)\] +- ?(?P<msg>.*)"),
    # Hadoop / log4j: %d %p [%t] %c: %m
    re.compile(rf"(?P<level>{_LEVEL_WORD}) +\[(?P<thread>[^\]]*)\] +(?P<logger>[^\s:]+): ?(?P<msg>.*)"),
    # log4j's documented default: %d [%t] %-5p %c - %m
    re.compile(rf"\[(?P<thread>[^\]]*)\] +(?P<level>{_LEVEL_WORD}) +(?P<logger>\S+) +- ?(?P<msg>.*)"),
    # Spring Boot: %d  %5p %pid --- [%t] %logger : %m
    re.compile(
        rf"(?P<level>{_LEVEL_WORD}) +(?P<pid>\d+) +--- +\[ *(?P<thread>[^\]]*)\] +(?P<logger>\S+) +: ?(?P<msg>.*)"),
    # Python logging: %(asctime)s - %(name)s - %(levelname)s - %(message)s
    re.compile(rf"- ?(?P<logger>\S+) - (?P<level>{_LEVEL_WORD}) - ?(?P<msg>.*)"),
    re.compile(rf"(?P<logger>[^\s\[\]]+) - (?P<level>{_LEVEL_WORD}) - ?(?P<msg>.*)"),
    # anything else with a level word first: "INFO msg", "[ERROR] msg", "warn: msg", "- INFO - msg"
    re.compile(rf"(?:- +)?[\[(]?(?P<level>{_LEVEL_WORD})[\])]?:?(?: +(?:- +)?|\t+|$)(?P<msg>.*)"),
)
# rsyslog's file format (RSYSLOG_FileFormat): ISO time, host, tag[pid]: msg
_ISO_SYSLOG_RE = re.compile(r"(?P<host>[^\s:\[\]]+) (?P<tag>[^\s:\[\]]+)(?:\[(?P<pid>[^\]\s]{1,32})\])?: ?(?P<msg>.*)",
                            re.ASCII)


def _parse_iso(line: str, now_ns: int) -> Raw | None:
    if not line[:1].isdigit():
        return None
    match = _ISO_PREFIX_RE.match(line)
    if match is None:
        return None
    ts_ns = parse_timestamp(match.group("ts"))
    if ts_ns is None:
        return None
    raw: Raw = {"timestamp": ts_ns}
    rest = line[match.end():]
    for pattern in _AFTER_ISO:
        found = pattern.match(rest)
        if found is None:
            continue
        groups = found.groupdict()
        raw["level"] = _level(groups["level"])
        raw["message"] = groups["msg"].rstrip()
        if groups.get("cls"):  # zookeeper: source is the class, the thread is everything before it
            raw["source"] = groups["cls"]
            _put(raw, "line", int(groups["line"]))
        elif groups.get("logger"):
            raw["source"] = groups["logger"]
        if groups.get("thread"):
            raw["thread_id"] = groups["thread"].strip()
        _put(raw, "proc_id", groups.get("pid") and int(groups["pid"]))
        return raw
    if match.group("sep") == "T":
        found = _ISO_SYSLOG_RE.match(rest)
        if found is not None:
            raw["host"] = found.group("host")
            raw["source"] = found.group("tag")
            _put(raw, "proc_id", found.group("pid") and _int_or_text(found.group("pid")))
            raw["message"] = found.group("msg").rstrip()
            return raw
    raw["message"] = rest.rstrip()
    return raw


_HDFS_RE = re.compile(
    r"(?P<yy>\d\d)(?P<mo>\d\d)(?P<d>\d\d) (?P<h>\d\d)(?P<mi>\d\d)(?P<s>\d\d) (?P<pid>\d+) "
    rf"(?P<level>{_LEVEL_WORD}) (?P<component>[^\s:]+): ?(?P<msg>.*)",
)


def _parse_hdfs(line: str, now_ns: int) -> Raw | None:
    if not line[:1].isdigit() or line[6:7] != " ":
        return None
    match = _HDFS_RE.match(line)
    if match is None:
        return None
    g = match.group
    ts_ns = _utc_ns(2000 + int(g("yy")), int(g("mo")), int(g("d")), int(g("h")), int(g("mi")), int(g("s")), 0)
    if ts_ns is None:
        return None
    raw: Raw = {"timestamp": ts_ns, "level": _level(g("level")), "message": g("msg").rstrip(),
                "source": g("component")}
    _put(raw, "proc_id", int(g("pid")))
    return raw


_LOGCAT_RE = re.compile(
    r"(?P<mo>\d\d)-(?P<d>\d\d) (?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)\.(?P<ms>\d{3}) +"
    # threadtime (the default): pid tid level tag: msg
    r"(?:(?P<pid>\d+) +(?P<tid>\d+) +(?P<level>[VDIWEFA]) (?P<tag>.*?) *: ?(?P<msg>.*)"
    # -v time: level/tag( pid): msg
    r"|(?P<level2>[VDIWEFA])/(?P<tag2>.*?) *\( *(?P<pid2>\d+)\): ?(?P<msg2>.*))",
    re.ASCII,
)


def _parse_logcat(line: str, now_ns: int) -> Raw | None:
    if not line[:1].isdigit() or line[2:3] != "-":
        return None
    match = _LOGCAT_RE.match(line)
    if match is None:
        return None
    g = match.group
    ts_ns = _yearless_ns(int(g("mo")), int(g("d")), int(g("h")), int(g("mi")), int(g("s")),
                         int(g("ms")) * 1_000_000, now_ns)
    if ts_ns is None:
        return None
    if g("level") is not None:
        raw: Raw = {"timestamp": ts_ns, "level": _level(g("level")), "source": g("tag"),
                    "message": g("msg").rstrip(), "thread_id": g("tid")}
        _put(raw, "proc_id", int(g("pid")))
    else:
        raw = {"timestamp": ts_ns, "level": _level(g("level2")), "source": g("tag2"), "message": g("msg2").rstrip()}
        _put(raw, "proc_id", int(g("pid2")))
    return raw


_GLOG_RE = re.compile(
    r"(?P<level>[IWEF])(?P<mo>\d\d)(?P<d>\d\d) (?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)(?:\.(?P<frac>\d{1,9}))? +"
    r"(?P<tid>\d+) (?P<caller>[^\s\]]+)\] ?(?P<msg>.*)",
    re.ASCII,
)


def _parse_glog(line: str, now_ns: int) -> Raw | None:
    if line[:1] not in "IWEF" or not line[1:2].isdigit():
        return None
    match = _GLOG_RE.match(line)
    if match is None:
        return None
    g = match.group
    ts_ns = _yearless_ns(int(g("mo")), int(g("d")), int(g("h")), int(g("mi")), int(g("s")),
                         _fraction_ns(g("frac")), now_ns)
    if ts_ns is None:
        return None
    raw: Raw = {"timestamp": ts_ns, "level": _level(g("level")), "message": g("msg").rstrip(),
                "thread_id": g("tid")}
    _put(raw, "caller", g("caller"))
    return raw


_BGL_RE = re.compile(
    r"(?P<label>-|[A-Z]+) (?P<epoch>\d{9,10}) \d{4}\.\d\d\.\d\d (?P<node>\S+) "
    r"\d{4}-\d\d-\d\d-\d\d\.\d\d\.(?P<s>\d\d)\.(?P<frac>\d{1,9}) \S+ (?P<type>\S+) (?P<component>\S+) "
    r"(?P<level>[A-Z]+) ?(?P<msg>.*)",
    re.ASCII,
)


def _parse_bgl(line: str, now_ns: int) -> Raw | None:
    """Blue Gene/L RAS log: the epoch field is the (UTC) time, the local time field adds the µs."""
    if not (line[:1] == "-" or line[:1].isupper()):
        return None
    match = _BGL_RE.match(line)
    if match is None:
        return None
    g = match.group
    epoch_s = int(g("epoch"))
    # the two fields are written together; take the fraction only when their seconds agree
    frac_ns = _fraction_ns(g("frac")) if epoch_s % 60 == int(g("s")) else 0
    raw: Raw = {"timestamp": epoch_s * NS_PER_S + frac_ns, "level": _level(g("level")), "source": g("component"),
                "message": g("msg").rstrip(), "host": g("node")}
    _put(raw, "alert", g("label"))
    _put(raw, "type", g("type"))
    return raw


_PYTHON_RE = re.compile(r"(?P<level>CRITICAL|ERROR|WARNING|INFO|DEBUG):(?P<logger>[^\s:]*):(?P<msg>.*)")


def _parse_python(line: str, now_ns: int) -> Raw | None:
    if line[:1] not in "CEWID":
        return None
    match = _PYTHON_RE.match(line)
    if match is None:
        return None
    raw: Raw = {"level": _level(match.group("level")), "message": match.group("msg").rstrip()}
    if match.group("logger"):
        raw["source"] = match.group("logger")
    return raw


# upper case only: without a timestamp a lower-case "error" is more likely prose than a level
_LEVEL_PREFIX_RE = re.compile(
    r"\[?(?P<level>TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|FATAL|CRITICAL|SEVERE)(?:\]:?|:) ?(?P<msg>.*)")


def _parse_level_prefix(line: str, now_ns: int) -> Raw | None:
    if line[:1] not in "[TDINWEFCS":
        return None
    match = _LEVEL_PREFIX_RE.match(line)
    if match is None:
        return None
    return {"level": _level(match.group("level")), "message": match.group("msg").rstrip()}


Parser = Callable[[str, int], "Raw | None"]
#: (name, parser) in the order tried after the previous line's format
FORMATS: tuple[tuple[str, Parser], ...] = (
    ("iso", _parse_iso),
    ("syslog", _parse_bsd_syslog),
    ("syslog5424", _parse_rfc5424),
    ("apache_error", _parse_apache_error),
    ("hdfs", _parse_hdfs),
    ("logcat", _parse_logcat),
    ("bgl", _parse_bgl),
    ("glog", _parse_glog),
    ("access", _parse_access),
    ("python", _parse_python),
    ("level", _parse_level_prefix),
)


def parse_line(line: str, *, now_ns: int, first: int = 0) -> tuple[int, Raw | None]:
    """(index into FORMATS, raw record) of one line; (-1, None) when no format matches.
    ``first`` is the index tried first (the previous line's format)."""
    if first:
        raw = FORMATS[first][1](line, now_ns)
        if raw is not None:
            return first, raw
    for index, (_name, parse) in enumerate(FORMATS):
        if index != first or first == 0:
            raw = parse(line, now_ns)
            if raw is not None:
                return index, raw
    return -1, None


def format_name(index: int) -> str:
    """The name of a format index returned by ``parse_line`` ("unknown" for -1)."""
    return FORMATS[index][0] if index >= 0 else "unknown"


# --- multi-line records --------------------------------------------------------------------------

# Lines that continue the record before them whatever they contain (Java and Python traces).
_CONTINUATION_RE = re.compile(
    r"[ \t]|at |Caused by:|Suppressed:|\.\.\.|Traceback \(most recent call last\):"
    r"|During handling of the above exception|The above exception was the direct cause")
# An exception class line that a Java trace starts with ("java.io.IOException: boom"); joined only
# when the line is no known format.
_EXCEPTION_LINE_RE = re.compile(r"(?:[A-Za-z_$][\w$]*\.)+[A-Za-z_$][\w$]*(?:Exception|Error|Throwable)\b")
_TRACEBACK_START = "Traceback (most recent call last):"


def continues_record(line: str) -> bool:
    """Whether a line always continues the record before it (a stack-trace line): a reader that
    batches lines must not start a batch with one."""
    return _CONTINUATION_RE.match(line) is not None


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


class TextParser:
    """Stateful line-by-line parser: ``feed`` lines in order, ``flush`` at the end of the input.

    Not thread-safe; one per stream (file, TCP connection).  ``now_ns`` fixes the clock used for
    year-less times (tests); by default each line reads the clock.
    """

    def __init__(self, now_ns: int | None = None, *, first_line: int = 1,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.now_ns = now_ns
        self.max_message_bytes = max_message_bytes
        self._next_line = first_line
        self._format = 0
        # the open record: its first line number, raw dict, continuation lines and message size
        self._open_line = 0
        self._open: Raw | None = None
        self._parts: list[str] = []
        self._open_bytes = 0
        # inside a Python traceback: its unindented last line ("ValueError: x") still belongs to it
        self._in_traceback = False

    @property
    def pending(self) -> bool:
        """True while a record is open (its continuation lines may still come)."""
        return self._open is not None

    def feed(self, line: str, line_no: int | None = None) -> list[TextRecord]:
        """Take one line (a trailing newline is ignored); return the records it completed.
        ``line_no`` numbers this line (later lines count on from it); by default lines are
        numbered consecutively from ``first_line``."""
        number = self._next_line if line_no is None else line_no
        self._next_line = number + 1
        line = line.rstrip("\r\n")
        if not line.strip():
            return []
        if self._open is not None and _CONTINUATION_RE.match(line):
            if line.startswith(_TRACEBACK_START):
                self._in_traceback = True
            if self._append(line):
                return []
        now_ns = time.time_ns() if self.now_ns is None else self.now_ns
        index, raw = parse_line(line, now_ns=now_ns, first=self._format)
        if raw is None:
            if self._open is not None and (self._in_traceback or _EXCEPTION_LINE_RE.match(line)):
                # the last line of a Python traceback, or the exception line a Java trace starts with
                self._in_traceback = False
                if self._append(line):
                    return []
            raw = {"message": line}
        else:
            self._format = index
        self._in_traceback = False
        done = self.flush()
        self._open_line = number
        self._open = raw
        self._open_bytes = _utf8_len(raw.get("message", ""))
        return done

    def _append(self, line: str) -> bool:
        """Add a continuation line to the open record; False when that would pass the size limit."""
        size = _utf8_len(line) + 1
        if self._open_bytes + size > self.max_message_bytes:
            return False
        self._parts.append(line)
        self._open_bytes += size
        return True

    def flush(self) -> list[TextRecord]:
        """The open record, if any, as a complete one."""
        if self._open is None:
            return []
        raw = self._open
        if self._parts:
            raw["message"] = "\n".join([raw.get("message", ""), *self._parts])
        record = TextRecord(self._open_line, raw)
        self._open = None
        self._parts = []
        self._open_bytes = 0
        self._in_traceback = False
        return [record]


def parse_text(lines: list[str], *, now_ns: int | None = None, first_line: int = 1,
               max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[TextRecord]:
    """All records of a complete text (a convenience over ``TextParser``)."""
    parser = TextParser(now_ns, first_line=first_line, max_message_bytes=max_message_bytes)
    out: list[TextRecord] = []
    for line in lines:
        out.extend(parser.feed(line))
    out.extend(parser.flush())
    return out
