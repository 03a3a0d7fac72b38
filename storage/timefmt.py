"""Timestamps and durations: parsing what senders and users write, formatting what users see.

This module owns the one conversion between text and the stored time unit, integer nanoseconds
since the Unix epoch, UTC (DESIGN §2).  It guarantees:

- ``parse_timestamp`` never raises on bad input; it returns ``None`` for anything it cannot read.
  Results always fit a signed 64-bit integer (1677-09-21 .. 2262-04-11), the width every storage
  column and wire field uses; values outside that range are "unparsable".
- Fractions are read as integers, never through ``float``: ``.123456789`` is exactly 123456789 ns.
- ``format_timestamp`` is RFC 3339 UTC with ``Z`` and the shortest exact precision (0, 3, 6 or 9
  fraction digits), and ``parse_timestamp(format_timestamp(x)) == x`` for every int64 ``x``.
- ``parse_duration`` and ``parse_time_arg`` read user input and raise ``BadQuery`` with a message
  that names the value and the accepted forms.

Pure functions, no I/O; they sit on the ingest hot path, so the common forms (RFC 3339 and epoch
numbers) take one precompiled regex match and integer arithmetic, with no ``datetime`` objects.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from storage.errors import BadQuery

NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S

#: Every stored timestamp is a signed 64-bit count of ns; wider values cannot be stored or sent.
MIN_TS_NS = -(2**63)
MAX_TS_NS = 2**63 - 1

# Epoch-number unit chosen by magnitude (DESIGN §2): below 1e11 the number is seconds (1e11 s is
# year 5138), below 1e14 milliseconds, below 1e17 microseconds, otherwise nanoseconds.
_SECONDS_BELOW = 10**11
_MILLIS_BELOW = 10**14
_MICROS_BELOW = 10**17

# RFC 3339 / ISO 8601 extended format.  Seconds, fraction and offset are optional; 'T', 't' or a
# space separates date and time; the fraction takes '.' or ',' (log4j writes ','); the offset is
# Z, +hh:mm, +hhmm or +hh, optionally after whitespace ("2024-01-01 14:02:00 +0000").
_ISO_RE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)"
    r"(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d+))?)?)?"
    r"(?:\s*(?:([Zz])|([+-])(\d\d)(?::?(\d\d))?))?",
    re.ASCII,  # \d must not match other scripts' digits, which int() would accept
)

# Common log format as Apache and nginx write it, optionally in its square brackets:
# "10/Oct/2000:13:55:36 -0700".
_CLF_RE = re.compile(
    r"\[?(\d{1,2})/([A-Za-z]{3})/(\d{4}):(\d\d):(\d\d):(\d\d)(?:[.,](\d+))?"
    r"(?:\s+([+-])(\d\d):?(\d\d))?\]?",
    re.ASCII,
)

# An epoch number written as text: optional minus, digits, optional fraction.
# The integer part is capped at 30 digits (more cannot fit int64 ns anyway) so int() never meets
# Python's 4300-digit conversion limit; fraction digits past the 9th are sliced off before int().
_EPOCH_RE = re.compile(r"(-?)(\d{1,30})(?:\.(\d+))?", re.ASCII)

_MONTHS: dict[str, int] = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}

_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# Duration units in ns.  Months and years are left out on purpose: their length varies.
_DURATION_UNITS_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": NS_PER_S,
    "m": 60 * NS_PER_S,
    "h": 3_600 * NS_PER_S,
    "d": 86_400 * NS_PER_S,
    "w": 7 * 86_400 * NS_PER_S,
}
_DURATION_PART = r"(\d{1,30})(?:\.(\d+))?(ns|us|µs|ms|s|m|h|d|w)"
_DURATION_RE = re.compile(rf"(?:{_DURATION_PART})+", re.ASCII)
_DURATION_PART_RE = re.compile(_DURATION_PART, re.ASCII)
_BARE_NUMBER_RE = re.compile(r"(\d{1,30})(?:\.(\d+))?", re.ASCII)

_DURATION_HELP = "use a number with a unit, e.g. 90s, 15m, 2h, 30d"
_TIME_ARG_HELP = (
    "use 'now', a relative time such as -15m or -2h, an RFC 3339 timestamp such as "
    "2024-01-01T14:02:00Z, 'YYYY-MM-DD HH:MM:SS', or epoch seconds/ms/µs/ns "
    "(between 1677-09-21 and 2262-04-11)"
)


# --- calendar arithmetic -------------------------------------------------------------------------
# Howard Hinnant's days_from_civil / civil_from_days: exact for the proleptic Gregorian calendar,
# a handful of integer operations, and no datetime objects on the hot path.


def _quote(text: Any) -> str:
    """repr() of a user's value for an error message, cut so a huge value cannot flood a log."""
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:79] + "…"


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a count of days since 1970-01-01."""
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def _valid_date(year: int, month: int, day: int) -> bool:
    if not 1 <= month <= 12 or day < 1:
        return False
    if month == 2 and day == 29:
        return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return day <= _DAYS_IN_MONTH[month]


def _fraction_ns(digits: str | None) -> int:
    """ns in a decimal fraction of a second, read as an integer; digits past 9 are truncated."""
    if not digits:
        return 0
    if len(digits) >= 9:
        return int(digits[:9])
    return int(digits) * 10 ** (9 - len(digits))


class _OutOfRange(Exception):
    """A well-formed timestamp outside int64 ns; carries the value so callers can say why."""

    def __init__(self, ts_ns: int) -> None:
        super().__init__(ts_ns)
        self.ts_ns = ts_ns


def _in_range(ts_ns: int) -> int:
    if MIN_TS_NS <= ts_ns <= MAX_TS_NS:
        return ts_ns
    raise _OutOfRange(ts_ns)


def _wall_clock_ns(
    year: int,
    month: int,
    day: int,
    hour: int,
    minute: int,
    second: int,
    fraction: str | None,
    sign: str | None,
    offset_hours: str | None,
    offset_minutes: str | None,
) -> int | None:
    """ns since the epoch of validated wall-clock fields and an optional UTC offset."""
    # second 60 is a leap second (RFC 3339 allows it); it lands on the next minute's 00, as POSIX
    # time does.
    if not _valid_date(year, month, day) or hour > 23 or minute > 59 or second > 60:
        return None
    seconds = _days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second
    if sign is not None:
        off_h = int(offset_hours)  # type: ignore[arg-type]  # the regex matched both groups
        off_m = int(offset_minutes) if offset_minutes else 0
        if off_h > 23 or off_m > 59:
            return None
        offset_s = off_h * 3_600 + off_m * 60
        # local = UTC + offset, so UTC = local - offset
        seconds = seconds - offset_s if sign == "+" else seconds + offset_s
    return _in_range(seconds * NS_PER_S + _fraction_ns(fraction))


def _epoch_number_ns(negative: bool, whole: int, fraction: str | None) -> int | None:
    """ns of an epoch number given as sign, integer part and fraction digits (unit by magnitude)."""
    if whole < _SECONDS_BELOW:
        unit_ns = NS_PER_S
    elif whole < _MILLIS_BELOW:
        unit_ns = 1_000_000
    elif whole < _MICROS_BELOW:
        unit_ns = 1_000
    else:
        unit_ns = 1
    ts_ns = whole * unit_ns
    if fraction:
        # fraction * unit / 10**len, truncated: exact integer arithmetic, no float.  The unit is at
        # most 1e9 ns, so digits past the 9th cannot change the result.
        fraction = fraction[:9]
        ts_ns += int(fraction) * unit_ns // 10 ** len(fraction)
    return _in_range(-ts_ns if negative else ts_ns)


#: "YYYY-MM-DDTHH:MM:SS" -> ns of that second, for the stamps senders write most
#: ("2026-11-27T21:20:18.123456Z"); logs arrive roughly in time order, so consecutive records share
#: the second and the regex, date validation and civil-day arithmetic run once per second, not per
#: record.  Bounded: cleared when full.
_SECOND_CACHE: dict[str, int] = {}
_SECOND_CACHE_MAX = 4096
#: ns per unit of the last digit of a fraction with i digits
_FRACTION_SCALE = tuple(10 ** (9 - i) for i in range(10))


def parse_utc_z(text: str) -> int | None:
    """The fast path for ``YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z``: ns, or None when ``text`` has another
    form (then the general parser decides, so both paths agree on every input)."""
    n = len(text)
    if n < 20 or text[-1] != "Z" or text[10] != "T":
        return None
    if n == 20:
        fraction_ns = 0
    else:
        digits = text[20:-1]
        # isascii() and isdigit(): exactly 0-9 (str.isdigit alone takes other scripts' digits)
        if text[19] != "." or not 1 <= len(digits) <= 9 or not (digits.isascii() and digits.isdigit()):
            return None
        fraction_ns = int(digits) * _FRACTION_SCALE[len(digits)]
    second = text[:19]
    base = _SECOND_CACHE.get(second)
    if base is None:
        try:
            base = _parse_text_general(second + "Z")
        except _OutOfRange:
            return None
        # the general parser accepted exactly this second (same regex and checks), and it is not
        # within a second of the int64 range's ends, where a fraction could leave the range
        if base is None or not MIN_TS_NS + NS_PER_S <= base <= MAX_TS_NS - NS_PER_S:
            return None
        if len(_SECOND_CACHE) >= _SECOND_CACHE_MAX:
            _SECOND_CACHE.clear()
        _SECOND_CACHE[second] = base
    return base + fraction_ns


def _parse_text(text: str) -> int | None:
    fast = parse_utc_z(text)
    if fast is not None:
        return fast
    return _parse_text_general(text)


def _parse_text_general(text: str) -> int | None:
    match = _ISO_RE.fullmatch(text)
    if match is not None:
        year, month, day, hour, minute, second, fraction, _z, sign, off_h, off_m = match.groups()
        return _wall_clock_ns(
            int(year),
            int(month),
            int(day),
            int(hour) if hour else 0,
            int(minute) if minute else 0,
            int(second) if second else 0,
            fraction,
            sign,
            off_h,
            off_m,
        )
    match = _EPOCH_RE.fullmatch(text)
    if match is not None:
        minus, whole, fraction = match.groups()
        return _epoch_number_ns(bool(minus), int(whole), fraction)
    match = _CLF_RE.fullmatch(text)
    if match is not None:
        day, month_name, year, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
        month = _MONTHS.get(month_name.lower())
        if month is None:
            return None
        return _wall_clock_ns(
            int(year), month, int(day), int(hour), int(minute), int(second),
            fraction, sign, off_h, off_m,
        )  # fmt: skip
    return None


def _parse_decimal(value: Decimal) -> int | None:
    # adjusted() is the exponent of the leading digit: anything from 1e30 up cannot fit int64 ns,
    # and must not reach the arithmetic below (Decimal("1e999999999") overflows the context).
    if not value.is_finite() or value.adjusted() > 30:
        return None
    try:
        magnitude = abs(value)
        if magnitude < _SECONDS_BELOW:
            scaled = value * NS_PER_S
        elif magnitude < _MILLIS_BELOW:
            scaled = value * 1_000_000
        elif magnitude < _MICROS_BELOW:
            scaled = value * 1_000
        else:
            scaled = value
    except ArithmeticError:  # decimal's Overflow / InvalidOperation signals
        return None
    return _in_range(int(scaled))


def _parse_datetime(value: datetime) -> int | None:
    seconds = (
        _days_from_civil(value.year, value.month, value.day) * 86_400
        + value.hour * 3_600
        + value.minute * 60
        + value.second
    )
    ts_ns = seconds * NS_PER_S + value.microsecond * 1_000
    offset = value.utcoffset()  # None for naive datetimes, which are UTC by contract
    if offset is not None:
        ts_ns -= ((offset.days * 86_400 + offset.seconds) * 1_000_000 + offset.microseconds) * 1_000
    return _in_range(ts_ns)


def parse_timestamp(value: Any) -> int | None:
    """ns since the epoch (UTC) of a timestamp in any accepted form, or None when unparsable or
    outside the int64 ns range (1677-09-21 .. 2262-04-11)."""
    try:
        return _parse_timestamp(value)
    except _OutOfRange:
        return None


def parse_timestamp_unbounded(value: Any) -> int | None:
    """Like ``parse_timestamp``, but a well-formed timestamp outside int64 ns comes back as its
    (out-of-range) ns value, so a caller can tell "year 2999" (too far ahead) from garbage."""
    try:
        return _parse_timestamp(value)
    except _OutOfRange as exc:
        return exc.ts_ns


def _parse_timestamp(value: Any) -> int | None:
    """ns since the epoch (UTC) of a timestamp in any accepted form, or None when unparsable;
    raises _OutOfRange for a well-formed timestamp outside int64 ns.

    Accepted: ``datetime`` (naive = UTC) and ``date`` (midnight UTC); int / float / Decimal epoch
    numbers and digit strings with the unit chosen by magnitude (abs < 1e11 seconds, < 1e14 ms,
    < 1e17 µs, else ns); RFC 3339 / ISO 8601 (``T`` or space, fraction of any length with ``.`` or
    ``,``, offset ``Z`` / ``+hh:mm`` / ``+hhmm`` / ``+hh`` or none = UTC, seconds optional, a bare
    date = midnight UTC); common log format ``dd/Mon/yyyy:HH:MM:SS +zzzz``.  ``bool`` -> None.
    """
    if isinstance(value, str):
        return _parse_text(value.strip())
    # bool is an int subclass; True is not a timestamp.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        magnitude = -value if value < 0 else value
        # Every branch is range-checked: 9e10 s is still "seconds" but overflows int64 ns.
        if magnitude < _SECONDS_BELOW:
            return _in_range(value * NS_PER_S)
        if magnitude < _MILLIS_BELOW:
            return _in_range(value * 1_000_000)
        if magnitude < _MICROS_BELOW:
            return _in_range(value * 1_000)
        return _in_range(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        # repr() is the shortest text that round-trips, i.e. what the sender most likely wrote:
        # 1700000000.123 becomes exactly ...123000000 ns, not the binary float's ...122999906.
        return _parse_decimal(Decimal(repr(value)))
    if isinstance(value, datetime):
        return _parse_datetime(value)
    if isinstance(value, date):
        return _in_range(_days_from_civil(value.year, value.month, value.day) * NS_PER_DAY)
    if isinstance(value, Decimal):
        return _parse_decimal(value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return _parse_text(bytes(value).decode("ascii").strip())
        except UnicodeDecodeError:
            return None
    return None


@lru_cache(maxsize=1024)
def _date_prefix(days: int) -> str:
    # Records arrive roughly in time order, so a few cached days serve nearly every format call.
    year, month, day = _civil_from_days(days)
    return f"{year:04d}-{month:02d}-{day:02d}T"


def format_timestamp(ts_ns: int) -> str:
    """RFC 3339 UTC with ``Z`` and the stored precision: no fraction for whole seconds, else the
    shortest of 3, 6 or 9 digits that is exact (``…T14:02:00.123Z``, ``….123456789Z``)."""
    # Floor division keeps the fraction non-negative for times before 1970.
    seconds, fraction_ns = divmod(ts_ns, NS_PER_S)
    days, second_of_day = divmod(seconds, 86_400)
    hour, rest = divmod(second_of_day, 3_600)
    minute, second = divmod(rest, 60)
    head = f"{_date_prefix(days)}{hour:02d}:{minute:02d}:{second:02d}"
    if fraction_ns == 0:
        return head + "Z"
    if fraction_ns % 1_000_000 == 0:
        return f"{head}.{fraction_ns // 1_000_000:03d}Z"
    if fraction_ns % 1_000 == 0:
        return f"{head}.{fraction_ns // 1_000:06d}Z"
    return f"{head}.{fraction_ns:09d}Z"


def _duration_or_none(text: str) -> int | None:
    """ns of a duration, or None when ``text`` is not one (sign and range not checked)."""
    match = _BARE_NUMBER_RE.fullmatch(text)
    if match is not None:  # a bare number is seconds
        whole, fraction = match.groups()
        return int(whole) * NS_PER_S + _fraction_ns(fraction)
    if _DURATION_RE.fullmatch(text) is None:
        return None
    total_ns = 0
    for whole, fraction, unit in _DURATION_PART_RE.findall(text):
        unit_ns = _DURATION_UNITS_NS[unit]
        total_ns += int(whole) * unit_ns
        if fraction:
            # A week is < 1e15 ns, so digits past the 18th cannot change the result.
            fraction = fraction[:18]
            total_ns += int(fraction) * unit_ns // 10 ** len(fraction)
    return total_ns


def parse_duration(text: str) -> int:
    """ns of a duration such as ``500ms``, ``15s``, ``15m``, ``2h``, ``30d``, ``1w``, ``1h30m``, or
    a bare number of seconds.  Raises BadQuery for anything else, zero, or more than ~292 years."""
    if not isinstance(text, str):
        raise BadQuery(
            f"duration {_quote(text)} is not valid; {_DURATION_HELP}", value=repr(text)
        )
    duration_ns = _duration_or_none(text.strip())
    if duration_ns is None:
        raise BadQuery(f"duration {_quote(text)} is not valid; {_DURATION_HELP}", value=text)
    if duration_ns <= 0:
        raise BadQuery(
            f"duration {_quote(text)} must be greater than zero; {_DURATION_HELP}", value=text
        )
    if duration_ns > MAX_TS_NS:
        raise BadQuery(
            f"duration {_quote(text)} is longer than the limit of 106751 days "
            f"(a 64-bit count of ns); {_DURATION_HELP}",
            value=text,
        )
    return duration_ns


def parse_time_arg(text: str, *, now_ns: int) -> int:
    """ns of a user's time bound (``--from``/``--to``, ``from``/``to``, ``_time:[…]``): ``now``,
    a relative ``-15m`` (or ``now-15m``) before ``now_ns``, or any form ``parse_timestamp``
    accepts.  Raises BadQuery naming the value and the accepted forms otherwise."""
    if isinstance(text, str):
        stripped = text.strip()
        lowered = stripped.lower()
        if lowered == "now":
            return now_ns
        relative = None
        if lowered.startswith("now-"):
            relative = stripped[4:].strip()
        elif stripped.startswith("-"):
            relative = stripped[1:].strip()
        if relative is not None:
            # '-15m' and '-15' (seconds) are relative; a duration is tried before a negative epoch
            # because a user typing a minus means "ago" far more often than "before 1970".
            duration_ns = _duration_or_none(relative)
            if duration_ns is not None and MIN_TS_NS <= now_ns - duration_ns <= MAX_TS_NS:
                return now_ns - duration_ns
        ts_ns = parse_timestamp(stripped)
    else:
        ts_ns = parse_timestamp(text)
    if ts_ns is None:
        raise BadQuery(f"time {_quote(text)} is not valid; {_TIME_ARG_HELP}", value=str(text))
    return ts_ns
