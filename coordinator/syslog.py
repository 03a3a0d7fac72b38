"""Syslog messages -> raw records for ``Service.ingest`` (pure parsing; the sockets are in
``coordinator.syslog_listener``).

Owns the mapping of one syslog message (one frame's bytes) onto the record model of DESIGN §2:

====================  =====================================================================
syslog                record
====================  =====================================================================
PRI severity          ``level`` through ``storage.levels.SYSLOG_SEVERITY`` (no PRI: INFO)
PRI facility          ``metadata.facility`` (``kern``, ``user``, …, ``local7``; no PRI: absent)
TIMESTAMP             ``timestamp``; none (RFC 3164 without one, RFC 5424 NILVALUE): the
                      receive time — both RFCs make the receiver supply it, so unlike a JSON
                      record without a time this is not flagged ``_ts_invalid``
HOSTNAME              ``metadata.host``
APP-NAME / TAG        ``source``
PROCID / TAG ``[pid]``  ``metadata.proc_id`` (text: RFC 5424 allows any PROCID)
MSGID                 ``metadata.msgid``
STRUCTURED-DATA       ``metadata["<SD-ID>.<PARAM-NAME>"]`` = value (a repeated name: a list,
                      stored as its JSON text); an element without params: ``<SD-ID>`` = true
MSG                   ``message`` (a leading UTF-8 BOM removed)
====================  =====================================================================

Guarantees: ``parse_syslog`` never raises, for any bytes; what it cannot place in a field stays in
the message, so nothing a sender sent is dropped.  Bytes that are not UTF-8 are decoded with
U+FFFD replacements.

Formats, detected per message:

* RFC 5424 — ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]``.  A truncated header
  keeps the fields it has; structured data that does not parse is left in the message.
* RFC 3164, leniently, as real senders write it — ``[<PRI>][TIMESTAMP ][HOSTNAME ][TAG[pid]: ]MSG``:
  the PRI may be missing (loghub files, ``logger`` output pasted into a socket); the timestamp is
  ``Mmm dd hh:mm:ss[.frac]`` (optionally with a year, ``Mmm dd yyyy hh:mm:ss``, as network gear
  writes it) or ISO 8601 (rsyslog's ``RSYSLOG_ForwardFormat``); the hostname may be missing.
  A BSD timestamp has no year and no zone: it is read as UTC (DESIGN §2: no offset = UTC; a
  sender writing local time elsewhere is off by its offset, as with any receiver that is not told
  the zone), in the latest year that does not put it in the future (``infer_year``): a December
  timestamp received in January belongs to last year.
  The word after the timestamp is the hostname unless it looks like a tag; a tag is one word
  followed by ``[pid]`` and/or ``:`` (a bare word is not taken as a tag: ``combo syslogd 1.4.1:
  restart.`` keeps ``syslogd 1.4.1: restart.`` as its message rather than inventing a tag).
  Without a timestamp there is no hostname (RFC 3164 §4.3.3: such a message is all CONTENT), but
  a leading tag is still recognised — what Python's ``SysLogHandler`` sends (``<14>app: text``).
* Neither a valid PRI (``<0>``..``<191>``) nor a timestamp: plain text, kept whole as the message.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from typing import Any

from storage.levels import SYSLOG_SEVERITY
from storage.timefmt import NS_PER_S, format_timestamp

#: RFC 5424 §6.2.1 facility codes, with the names rsyslog uses.
FACILITY_NAMES: tuple[str, ...] = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
    "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
    "local7",
)
#: the largest valid PRI: facility 23 (local7) * 8 + severity 7
MAX_PRI = 191
NILVALUE = "-"
BOM = "\ufeff"
#: How far after the receive time a year-less BSD timestamp may fall and still be this year's: the
#: sender writes its local time, read here as UTC, so a sender at UTC+14 is 14 hours "ahead".
BSD_FUTURE_SLACK_NS = 86_400 * 10**9

#: Timestamps go to storage.record as digits of epoch ns (its fast path), but the unit of a digit string
#: goes by magnitude: below 10**18 ns (2001-09-09) it would be read as µs, so such times are spelled out.
_NS_DIGITS_FROM = 10**18
_NS_PER_MINUTE = 60 * NS_PER_S
_MONTHS = {name.lower(): number for number, name in enumerate(calendar.month_abbr) if name}
_PRI_RE = re.compile(r"<(\d{1,3})>")
# "Jun 14 15:16:01", "Jul  1 09:00:55", "Mar  1 2024 18:46:11.123" (optional year, optional fraction)
_BSD_TS_RE = re.compile(r"([A-Za-z]{3}) +(\d{1,2}) +(?:(\d{4}) +)?(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?= |$)")
# RFC 3339 / ISO 8601 as rsyslog's ForwardFormat and many appliances write it; storage.timefmt parses it
_ISO_TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?(?= |$)")
# a tag: one word (no blanks, brackets or colons) with [pid] and/or a colon, then a blank or the end
_TAG_RE = re.compile(r"([^\s\[\]:]+)(?:\[([^\]\s]*)\])?(:)?(?: |$)")


def parse_syslog(frame: bytes, *, now_ns: int) -> dict[str, Any]:
    """One syslog message (a frame's bytes, trailing CR/LF/NUL allowed) -> a raw record for
    ``Service.ingest``.  ``now_ns`` (the receive time) supplies the year of BSD timestamps."""
    text = frame.decode("utf-8", "replace").rstrip("\r\n\x00")
    metadata: dict[str, Any] = {}
    record: dict[str, Any] = {"level": "INFO", "message": "", "source": "", "metadata": metadata}
    pos = 0
    pri_match = _PRI_RE.match(text)
    if pri_match is not None and int(pri_match.group(1)) <= MAX_PRI:
        pri = int(pri_match.group(1))
        record["level"] = SYSLOG_SEVERITY[pri & 7]
        facility = pri >> 3
        pos = pri_match.end()
        if text.startswith("1 ", pos):
            _parse_5424(text, pos + 2, record)
        else:
            _parse_3164(text, pos, record, now_ns, had_pri=True)
        # written last: a structured-data element may not shadow a protocol field
        metadata["facility"] = FACILITY_NAMES[facility]
    elif text.startswith("1 ") and _ISO_TS_RE.match(text, 2):
        _parse_5424(text, 2, record)  # RFC 5424 whose PRI was cut off by a relay
    else:
        _parse_3164(text, 0, record, now_ns, had_pri=False)
    if "timestamp" not in record:
        record["timestamp"] = _ns_text(now_ns)
    return record


# --- RFC 5424 ------------------------------------------------------------------------------------


def _parse_5424(text: str, pos: int, record: dict[str, Any]) -> None:
    """Header fields after ``<PRI>1 ``, then structured data, then the message."""
    parts = text[pos:].split(" ", 5)
    header = parts[:5] + [NILVALUE] * (5 - len(parts[:5]))
    remainder = parts[5] if len(parts) > 5 else ""
    timestamp, hostname, app_name, proc_id, msgid = header
    metadata: dict[str, Any] = record["metadata"]
    if timestamp and timestamp != NILVALUE:
        record["timestamp"] = timestamp  # RFC 3339; storage.timefmt parses it (or flags it invalid)
    if app_name and app_name != NILVALUE:
        record["source"] = app_name
    message = remainder
    if remainder.startswith(NILVALUE) and remainder[1:2] in ("", " "):
        message = remainder[2:]
    elif remainder.startswith("["):
        parsed = _parse_structured_data(remainder)
        if parsed is not None:  # otherwise the whole remainder stays the message: nothing is lost
            elements, end = parsed
            metadata.update(elements)
            message = remainder[end + 1:] if remainder[end:end + 1] == " " else remainder[end:]
    if message.startswith(BOM):
        message = message[1:]
    record["message"] = message
    for key, value in (("host", hostname), ("proc_id", proc_id), ("msgid", msgid)):
        if value and value != NILVALUE:
            metadata[key] = value


def _parse_structured_data(text: str) -> tuple[dict[str, Any], int] | None:
    """``[id p="v" ...][id2 ...]`` at the start of ``text`` -> (metadata, index after the last
    ``]``), or None when it is not well formed (RFC 5424 §6.3; ``\\"``, ``\\\\`` and ``\\]`` are
    escapes, any other backslash is kept)."""
    out: dict[str, Any] = {}
    pos, size = 0, len(text)
    while pos < size and text[pos] == "[":
        end_id = pos + 1
        while end_id < size and text[end_id] not in " ]=\"":
            end_id += 1
        sd_id = text[pos + 1:end_id]
        if not sd_id or end_id >= size or text[end_id] not in " ]":
            return None
        pos = end_id
        params: dict[str, Any] = {}
        while pos < size and text[pos] == " ":
            while pos < size and text[pos] == " ":
                pos += 1
            eq = text.find("=", pos)
            if eq <= pos or eq + 1 >= size or text[eq + 1] != '"':
                return None
            name = text[pos:eq]
            if any(c in name for c in ' ]"'):
                return None
            value_chars: list[str] = []
            pos = eq + 2
            while True:
                if pos >= size:
                    return None
                char = text[pos]
                if char == "\\" and pos + 1 < size and text[pos + 1] in '"\\]':
                    value_chars.append(text[pos + 1])
                    pos += 2
                elif char == '"':
                    pos += 1
                    break
                else:
                    value_chars.append(char)
                    pos += 1
            value = "".join(value_chars)
            key = f"{sd_id}.{name}"
            previous = params.get(key)
            if previous is None:
                params[key] = value
            elif isinstance(previous, list):
                previous.append(value)
            else:
                params[key] = [previous, value]
        if pos >= size or text[pos] != "]":
            return None
        pos += 1
        if params:
            out.update(params)
        else:
            out.setdefault(sd_id, True)
    return out, pos


# --- RFC 3164 ------------------------------------------------------------------------------------


def _parse_3164(text: str, pos: int, record: dict[str, Any], now_ns: int, *, had_pri: bool) -> None:
    metadata: dict[str, Any] = record["metadata"]
    start = pos
    while pos < len(text) and text[pos] == " ":
        pos += 1
    has_timestamp = True
    bsd = _BSD_TS_RE.match(text, pos)
    if bsd is not None and bsd.group(1).lower() in _MONTHS:
        record["timestamp"] = _bsd_timestamp(bsd, now_ns)
        pos = bsd.end()
    else:
        iso = _ISO_TS_RE.match(text, pos)
        if iso is not None:
            record["timestamp"] = iso.group(0)
            pos = iso.end()
        else:
            has_timestamp = False
    if has_timestamp:
        pos = _skip_one_blank(text, pos)
        # the hostname, unless what follows the timestamp already is the tag (hostname omitted)
        if not _is_tag(_TAG_RE.match(text, pos)):
            end = text.find(" ", pos)
            end = len(text) if end < 0 else end
            if end > pos:
                metadata["host"] = text[pos:end]
                # padding after the hostname is field separation, not content (`combo  -- root[2421]:`)
                pos = end
                while text.startswith(" ", pos):
                    pos += 1
    elif not had_pri:
        # neither PRI nor timestamp: plain text, not syslog; guess no structure in it
        record["message"] = text[start:]
        return
    tag = _TAG_RE.match(text, pos)
    if tag is not None and _is_tag(tag):
        record["source"] = tag.group(1)
        if tag.group(2):
            metadata["proc_id"] = tag.group(2)
        pos = tag.end()
    record["message"] = text[pos:]


def _is_tag(match: re.Match[str] | None) -> bool:
    """A word is a tag only with ``[pid]`` or a colon after it (see the module docstring)."""
    return match is not None and (match.group(2) is not None or match.group(3) is not None)


def _skip_one_blank(text: str, pos: int) -> int:
    """Past one separator blank, if there is one."""
    return pos + 1 if text.startswith(" ", pos) else pos


def _bsd_timestamp(match: re.Match[str], now_ns: int) -> str:
    # Messages of a stream share their timestamps: the (few µs of) calendar work is cached per
    # timestamp text and minute of receipt.
    return _bsd_timestamp_at(match.group(0), match.groups(), now_ns // _NS_PER_MINUTE)


@functools.lru_cache(maxsize=4096)
def _bsd_timestamp_at(text: str, groups: tuple[str | None, ...], now_minute: int) -> str:
    """The record timestamp of a BSD ``Mmm dd [yyyy] hh:mm:ss[.frac]`` (UTC; the year inferred when
    absent, see ``infer_year``, as of the end of the minute of receipt).  An impossible date
    (``Feb 30``) is returned as sent, so the record is kept with the ingest time and ``_ts_invalid``
    like any other unparsable timestamp."""
    month_name, day_text, year_text, hour_text, minute_text, second_text, fraction = groups
    month, day = _MONTHS[str(month_name).lower()], int(str(day_text))
    hour, minute, second = int(str(hour_text)), int(str(minute_text)), int(str(second_text))
    if hour > 23 or minute > 59 or second > 60:
        return text
    second = min(second, 59)  # a leap second: the last second of the minute, as timefmt does
    fraction_ns = int(fraction.ljust(9, "0")) if fraction else 0
    now_ns = (now_minute + 1) * _NS_PER_MINUTE
    year = int(year_text) if year_text is not None else infer_year(month, day, hour, minute, second, now_ns)
    if year is None or not 1 <= year <= 9999 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return text
    ts_ns = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) * NS_PER_S + fraction_ns
    if ts_ns < _NS_DIGITS_FROM:  # a (rare) explicit old year: spelled out, storage.record range-checks it
        return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}" \
               + (f".{fraction}" if fraction else "") + "Z"
    return str(ts_ns)


def _ns_text(ts_ns: int) -> str:
    """A timestamp as ``storage.record`` reads it fastest: the digits of epoch ns."""
    return str(ts_ns) if ts_ns >= _NS_DIGITS_FROM else format_timestamp(ts_ns)


def infer_year(month: int, day: int, hour: int, minute: int, second: int, now_ns: int) -> int | None:
    """The year of a BSD timestamp received at ``now_ns``: the latest of next, this and last year
    that does not put it more than ``BSD_FUTURE_SLACK_NS`` after the receive time.  So a December
    timestamp received in January is last year's, a January one received in the last seconds of
    December (a sender clock slightly ahead) is next year's, and a replayed file never lands in the
    future.  None when the date exists in none of them (Feb 29 outside leap years)."""
    now_year = time.gmtime(now_ns // NS_PER_S).tm_year
    for year in (now_year + 1, now_year, now_year - 1):
        if day > calendar.monthrange(year, month)[1]:
            continue
        ts_ns = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) * NS_PER_S
        if ts_ns - now_ns <= BSD_FUTURE_SLACK_NS:
            return year
    return None
