"""Tests for storage.timefmt: every accepted timestamp form against ns computed independently with
datetime arithmetic, formatting precision, durations, user time bounds, and round-trip
properties."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.errors import BadQuery
from storage.timefmt import (
    MAX_TS_NS,
    MIN_TS_NS,
    format_timestamp,
    parse_duration,
    parse_time_arg,
    parse_timestamp,
)

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns(*args: int, extra_ns: int = 0, tz: timezone = UTC) -> int:
    """The oracle: ns since the epoch of a wall-clock time in ``tz``, via datetime arithmetic
    (µs-exact), plus ``extra_ns`` for the sub-microsecond digits datetime cannot hold."""
    delta = datetime(*args, tzinfo=tz) - EPOCH
    return delta // timedelta(microseconds=1) * 1_000 + extra_ns


BASE = ns(2024, 1, 1, 14, 2, 0)  # 2024-01-01T14:02:00Z

# --- parse_timestamp: accepted forms -------------------------------------------------------------

TEXT_FORMS = [
    # RFC 3339 / ISO 8601
    ("2024-01-01T14:02:00Z", BASE),
    ("2024-01-01T14:02:00.1Z", BASE + 100_000_000),
    ("2024-01-01T14:02:00.123Z", BASE + 123_000_000),
    ("2024-01-01T14:02:00.123456Z", BASE + 123_456_000),
    ("2024-01-01T14:02:00.123456789Z", BASE + 123_456_789),
    ("2024-01-01T14:02:00.000000001Z", BASE + 1),
    ("2024-01-01T14:02:00,5Z", BASE + 500_000_000),
    ("2024-01-01t14:02:00z", BASE),
    ("2024-01-01T14:02:00+00:00", BASE),
    ("2024-01-01T14:02:00+02:00", ns(2024, 1, 1, 14, 2, 0, tz=timezone(timedelta(hours=2)))),
    ("2024-01-01T14:02:00-0530", ns(2024, 1, 1, 19, 32, 0)),
    ("2024-01-01T14:02:00.25+01", ns(2024, 1, 1, 13, 2, 0) + 250_000_000),
    ("2024-01-01T00:30:00+01:00", ns(2023, 12, 31, 23, 30, 0)),  # offset crosses a year
    ("2024-01-01T14:02:00", BASE),  # no offset = UTC
    ("2024-01-01T14:02", BASE),  # seconds optional
    ("2024-01-01", ns(2024, 1, 1)),  # a bare date is midnight UTC
    ("2024-02-29T12:00:00Z", ns(2024, 2, 29, 12)),  # leap day
    ("2000-02-29T00:00:00Z", ns(2000, 2, 29)),  # divisible by 400: leap
    ("1969-12-31T23:59:59.999999999Z", -1),
    ("1900-01-01T00:00:00Z", ns(1900, 1, 1)),
    ("2262-04-11T23:47:16.854775807Z", MAX_TS_NS),
    ("1677-09-21T00:12:43.145224192Z", MIN_TS_NS),
    # digits past the 9th are below 1 ns: truncated, never rounded through float
    ("2024-01-01T14:02:00.1234567899999Z", BASE + 123_456_789),
    # a leap second lands on the next minute's 00, as POSIX time does
    ("2016-12-31T23:59:60Z", ns(2017, 1, 1)),
    # 'YYYY-MM-DD HH:MM:SS[.fff]' and log4j's comma
    ("2024-01-01 14:02:00", BASE),
    ("2024-01-01 14:02:00.123", BASE + 123_000_000),
    ("2024-01-01 14:02:00,123", BASE + 123_000_000),
    ("2024-01-01 14:02:00 +0000", BASE),
    ("2024-01-01 14:02:00 -01:00", BASE + 3_600 * 10**9),
    ("  2024-01-01T14:02:00Z\n", BASE),  # surrounding whitespace
    # common log format
    ("10/Oct/2000:13:55:36 -0700", ns(2000, 10, 10, 20, 55, 36)),
    ("[10/Oct/2000:13:55:36 +0000]", ns(2000, 10, 10, 13, 55, 36)),
    ("1/jan/2024:00:00:00 +0100", ns(2023, 12, 31, 23)),
    ("29/Feb/2024:14:02:00 +0000", ns(2024, 2, 29, 14, 2)),
    ("10/Oct/2000:13:55:36", ns(2000, 10, 10, 13, 55, 36)),  # no offset = UTC
    # epoch digit strings, unit by magnitude
    ("0", 0),
    ("1700000000", 1_700_000_000 * 10**9),
    ("1700000000123", 1_700_000_000_123 * 10**6),
    ("1700000000123456", 1_700_000_000_123_456 * 10**3),
    ("1700000000123456789", 1_700_000_000_123_456_789),
    ("1700000000.5", 1_700_000_000_500_000_000),
    ("1700000000.123456789", 1_700_000_000_123_456_789),
    ("1700000000123.5", 1_700_000_000_123_500_000),
    ("-86400", -86_400 * 10**9),
    ("1." + "9" * 5000, 1_999_999_999),  # a fraction past int()'s digit limit is truncated
]


@pytest.mark.parametrize(("text", "expected_ns"), TEXT_FORMS, ids=[t for t, _ in TEXT_FORMS])
def test_parse_timestamp_text_forms(text: str, expected_ns: int) -> None:
    assert parse_timestamp(text) == expected_ns


def test_oracle_sanity() -> None:
    # The oracle itself, pinned to values known by heart.
    assert ns(1970, 1, 2) == 86_400 * 10**9
    assert BASE == 1_704_117_720 * 10**9


NUMBER_FORMS = [
    (0, 0),
    (1_700_000_000, 1_700_000_000 * 10**9),
    (-1_700_000_000, -1_700_000_000 * 10**9),
    (1_700_000_000_123, 1_700_000_000_123_000_000),
    (1_700_000_000_123_456, 1_700_000_000_123_456_000),
    (1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
    # magnitude boundaries: 1e11 is the first ms value, 1e14 the first µs, 1e17 the first ns
    (10**11, 10**17),
    (10**14, 10**17),
    (10**17, 10**17),
    (-(10**11), -(10**17)),
    # below the boundary the unit is larger, and 99,999,999,999 s does not fit int64 ns
    (10**11 - 1, None),
    (10**14 - 1, None),
    (10**17 - 1, None),
    (MAX_TS_NS, MAX_TS_NS),
    (MAX_TS_NS + 1, None),
    (MIN_TS_NS, MIN_TS_NS),
    (MIN_TS_NS - 1, None),
    (10**30, None),
    # floats: exact decimal value as written, not the binary float's approximation
    (1_700_000_000.123, 1_700_000_000_123_000_000),
    (1_700_000_000.5, 1_700_000_000_500_000_000),
    (1_700_000_000_123.25, 1_700_000_000_123_250_000),
    (1.7e9, 1_700_000_000 * 10**9),
    (1.7e18, 1_700_000_000 * 10**9),
    (float("nan"), None),
    (float("inf"), None),
    (1e300, None),
    (Decimal("1700000000.123456789"), 1_700_000_000_123_456_789),
    (Decimal("1e999999999"), None),
    (True, None),
    (False, None),
]


@pytest.mark.parametrize(
    ("value", "expected_ns"), NUMBER_FORMS, ids=[repr(v) for v, _ in NUMBER_FORMS]
)
def test_parse_timestamp_numbers(value: object, expected_ns: int | None) -> None:
    assert parse_timestamp(value) == expected_ns


def test_parse_timestamp_datetime_objects() -> None:
    naive = datetime(2024, 1, 1, 14, 2, 0, 123456)
    assert parse_timestamp(naive) == BASE + 123_456_000  # naive = UTC
    plus_two = datetime(2024, 1, 1, 16, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    assert parse_timestamp(plus_two) == BASE
    odd_tz = timezone(timedelta(seconds=1, microseconds=5))
    odd_offset = datetime(2024, 1, 1, 14, 2, 0, tzinfo=odd_tz)
    assert parse_timestamp(odd_offset) == BASE - 1_000_005_000
    assert parse_timestamp(date(2024, 1, 1)) == ns(2024, 1, 1)
    assert parse_timestamp(datetime(9999, 1, 1)) is None  # beyond int64 ns


class Opaque:
    """An arbitrary object, with a stable repr so pytest-xdist workers agree on test ids."""

    def __repr__(self) -> str:
        return "Opaque()"


UNPARSABLE = [
    None,
    "",
    "   ",
    "abc",
    "now",
    "2024-13-01T00:00:00Z",
    "2024-00-10T00:00:00Z",
    "2023-02-29T00:00:00Z",  # not a leap year
    "1900-02-29T00:00:00Z",  # divisible by 100, not 400
    "2024-04-31T00:00:00Z",
    "2024-01-00T00:00:00Z",
    "2024-01-01T24:00:00Z",
    "2024-01-01T14:60:00Z",
    "2024-01-01T14:02:61Z",
    "2024-01-01T14:02:00+24:00",
    "2024-01-01T14:02:00+01:60",
    "2024-01-01T14:02:00.Z",
    "2024-01-01T14:02:00 UTC",
    "2024-1-1T14:02:00Z",
    "2024-01-01X14:02:00Z",
    "9999-12-31T23:59:59Z",  # outside int64 ns
    "٢٠٢٤-٠١-٠١",  # Arabic-Indic digits: int() reads them, the format does not allow them
    "32/Oct/2000:13:55:36 +0000",
    "10/Foo/2000:13:55:36 +0000",
    "10/Oct/2000 13:55:36",
    "1e9",
    "1,700,000,000",
    "--5",
    "9" * 5000,  # longer than int()'s digit limit: must be None, not ValueError
    [],
    {},
    Opaque(),
    b"\xff\xfe",
]


@pytest.mark.parametrize("value", UNPARSABLE, ids=[repr(v)[:40] for v in UNPARSABLE])
def test_parse_timestamp_unparsable_is_none(value: object) -> None:
    assert parse_timestamp(value) is None


def test_parse_timestamp_bytes() -> None:
    assert parse_timestamp(b"2024-01-01T14:02:00Z") == BASE


# --- format_timestamp ----------------------------------------------------------------------------

FORMATS = [
    (0, "1970-01-01T00:00:00Z"),
    (BASE, "2024-01-01T14:02:00Z"),
    (BASE + 123_000_000, "2024-01-01T14:02:00.123Z"),
    (BASE + 120_000_000, "2024-01-01T14:02:00.120Z"),  # 3 digits is the shortest 3/6/9 form
    (BASE + 1_000_000, "2024-01-01T14:02:00.001Z"),
    (BASE + 123_456_000, "2024-01-01T14:02:00.123456Z"),
    (BASE + 1_000, "2024-01-01T14:02:00.000001Z"),
    (BASE + 123_456_789, "2024-01-01T14:02:00.123456789Z"),
    (BASE + 1, "2024-01-01T14:02:00.000000001Z"),
    (-1, "1969-12-31T23:59:59.999999999Z"),
    (-(10**9), "1969-12-31T23:59:59Z"),
    (ns(2024, 2, 29, 23, 59, 59), "2024-02-29T23:59:59Z"),
    (MAX_TS_NS, "2262-04-11T23:47:16.854775807Z"),
    (MIN_TS_NS, "1677-09-21T00:12:43.145224192Z"),
]


@pytest.mark.parametrize(("ts_ns", "expected"), FORMATS, ids=[e for _, e in FORMATS])
def test_format_timestamp(ts_ns: int, expected: str) -> None:
    assert format_timestamp(ts_ns) == expected


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=2**62))
def test_round_trip_non_negative(ts_ns: int) -> None:
    assert parse_timestamp(format_timestamp(ts_ns)) == ts_ns


@settings(max_examples=200)
@given(st.integers(min_value=MIN_TS_NS, max_value=MAX_TS_NS))
def test_format_matches_datetime_oracle(ts_ns: int) -> None:
    text = format_timestamp(ts_ns)
    seconds, fraction_ns = divmod(ts_ns, 10**9)
    expected_head = (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    assert text.startswith(expected_head)
    assert text.endswith("Z")
    fraction = text[len(expected_head) : -1]
    if fraction_ns == 0:
        assert fraction == ""
    else:
        digits = fraction[1:]
        assert fraction[0] == "."
        assert len(digits) in (3, 6, 9)
        assert int(digits) * 10 ** (9 - len(digits)) == fraction_ns
        # shortest: the next shorter allowed length would not be exact
        if len(digits) > 3:
            assert fraction_ns % 10 ** (9 - len(digits) + 3) != 0
    assert parse_timestamp(text) == ts_ns


# --- parse_duration ------------------------------------------------------------------------------

S = 10**9
DURATIONS = [
    ("500ms", 500 * 10**6),
    ("15s", 15 * S),
    ("15m", 15 * 60 * S),
    ("2h", 2 * 3600 * S),
    ("30d", 30 * 86400 * S),
    ("1w", 7 * 86400 * S),
    ("1h30m", 90 * 60 * S),
    ("1d2h3m4s5ms", ((86400 + 2 * 3600 + 3 * 60 + 4) * 1000 + 5) * 10**6),
    ("90", 90 * S),  # bare number = seconds
    ("1.5", 1_500_000_000),
    ("1.5h", 90 * 60 * S),
    ("0.000000001", 1),
    ("250us", 250_000),
    ("250µs", 250_000),
    ("10ns", 10),
    (" 15m ", 15 * 60 * S),
]


@pytest.mark.parametrize(("text", "expected_ns"), DURATIONS, ids=[t for t, _ in DURATIONS])
def test_parse_duration(text: str, expected_ns: int) -> None:
    assert parse_duration(text) == expected_ns


BAD_DURATIONS = [
    "abc", "", "15x", "-5m", "0", "0s", "0.0000000001", "15 m", "m", "1.h", "10M", "1e3", "1h-30m",
    "9" * 40 + "d",  # past the 30-digit cap
    "200000d",  # more ns than int64 holds
]  # fmt: skip


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(BadQuery) as info:
        parse_duration(text)
    assert repr(text)[:20] in str(info.value)
    assert "e.g. 90s, 15m, 2h, 30d" in str(info.value)


def test_parse_duration_message_is_exact() -> None:
    with pytest.raises(BadQuery) as info:
        parse_duration("abc")
    assert str(info.value) == (
        "duration 'abc' is not valid; use a number with a unit, e.g. 90s, 15m, 2h, 30d"
    )


# --- parse_time_arg ------------------------------------------------------------------------------

NOW_NS = ns(2024, 6, 1, 12, 0, 0) + 123


@pytest.mark.parametrize(
    ("text", "expected_ns"),
    [
        ("now", NOW_NS),
        (" NOW ", NOW_NS),
        ("-15m", NOW_NS - 15 * 60 * S),
        ("-1h30m", NOW_NS - 90 * 60 * S),
        ("now-2h", NOW_NS - 2 * 3600 * S),
        ("-90", NOW_NS - 90 * S),  # a bare relative number is seconds ago, not an epoch
        ("2024-01-01T14:02:00Z", BASE),
        ("2024-01-01 14:02:00.5", BASE + 500_000_000),
        ("10/Oct/2000:13:55:36 -0700", ns(2000, 10, 10, 20, 55, 36)),
        ("1704117720", BASE),
        ("1704117720000", BASE),
    ],
)
def test_parse_time_arg(text: str, expected_ns: int) -> None:
    assert parse_time_arg(text, now_ns=NOW_NS) == expected_ns


@pytest.mark.parametrize("text", ["yesterday", "", "-abc", "now-", "+15m", "2024-02-30"])
def test_parse_time_arg_rejects(text: str) -> None:
    with pytest.raises(BadQuery) as info:
        parse_time_arg(text, now_ns=NOW_NS)
    message = str(info.value)
    assert repr(text) in message
    assert "'now'" in message and "-15m" in message and "RFC 3339" in message


# --- properties against the datetime oracle -----------------------------------------------------

offsets_min = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59)


@settings(max_examples=300)
@given(
    st.datetimes(min_value=datetime(1700, 1, 2), max_value=datetime(2200, 1, 1)),
    st.integers(min_value=0, max_value=999),
    offsets_min,
    st.sampled_from(["T", " "]),
    st.sampled_from([":", ""]),
)
def test_rfc3339_with_offsets_matches_oracle(
    wall: datetime, extra_ns: int, offset_min: int, separator: str, colon: str
) -> None:
    tz = timezone(timedelta(minutes=offset_min))
    local = wall.replace(tzinfo=tz)
    sign = "-" if offset_min < 0 else "+"
    hours, minutes = divmod(abs(offset_min), 60)
    text = (
        local.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
        + f".{local.microsecond:06d}{extra_ns:03d}"
        + f"{sign}{hours:02d}{colon}{minutes:02d}"
    )
    expected_ns = (local - EPOCH) // timedelta(microseconds=1) * 1_000 + extra_ns
    assert parse_timestamp(text) == expected_ns


@settings(max_examples=200)
@given(st.integers(min_value=-9 * 10**9, max_value=9 * 10**9))  # seconds that fit int64 ns
def test_epoch_seconds_text_and_int_agree(seconds: int) -> None:
    assert parse_timestamp(seconds) == seconds * 10**9
    assert parse_timestamp(str(seconds)) == seconds * 10**9


@settings(max_examples=300)
@given(st.text(max_size=40) | st.from_regex(r"\A[-0-9:./ +TZz,\[\]a-zA-Z]{0,32}\Z"))
def test_parsers_fail_only_in_their_documented_way(text: str) -> None:
    result = parse_timestamp(text)
    assert result is None or MIN_TS_NS <= result <= MAX_TS_NS
    for parse in (parse_duration, lambda t: parse_time_arg(t, now_ns=NOW_NS)):
        try:
            parse(text)
        except BadQuery:
            pass


# --- the cached fast path for "YYYY-MM-DDTHH:MM:SS[.f]Z" ------------------------------------------

Z_STAMPS = st.builds(
    lambda y, mo, d, h, mi, s, frac: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}Z",
    st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25), st.integers(0, 61),
    st.integers(0, 61), st.sampled_from(["", "."]) | st.from_regex(r"\A\.[0-9]{1,12}\Z")
    # what int() would take but a fraction must not be: a non-ASCII digit, a superscript, "_", sign, space
    | st.sampled_from([".٣", ".²", ".1_0", ".+1", ". 1", ".-1"]),
)


@settings(max_examples=500)
@given(Z_STAMPS)
def test_utc_z_fast_path_agrees_with_the_general_parser(text: str) -> None:
    """Valid and invalid dates, leap seconds, 1..12 fraction digits, fractions int() would parse
    but that are not digits: the cached path answers exactly what the general parser answers —
    twice, so the second answer comes from the cache."""
    from storage import timefmt

    try:
        expected = timefmt._parse_text_general(text)
    except timefmt._OutOfRange as exc:
        expected = ("out of range", exc.ts_ns)
    for _ in range(2):
        try:
            got = timefmt._parse_text(text)
        except timefmt._OutOfRange as exc:
            got = ("out of range", exc.ts_ns)
        assert got == expected, text


def test_utc_z_fast_path_matches_the_oracle_and_its_cache_stays_bounded() -> None:
    from storage import timefmt

    assert parse_timestamp("2024-01-01T14:02:00.5Z") == BASE + 500_000_000
    assert parse_timestamp("2024-01-01T14:02:00.123456789Z") == BASE + 123_456_789
    assert parse_timestamp("2024-01-01T14:02:00Z") == BASE
    for second in range(timefmt._SECOND_CACHE_MAX + 10):
        assert parse_timestamp(f"2024-01-01T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z") == \
            ns(2024, 1, 1) + second * 10**9
    assert len(timefmt._SECOND_CACHE) <= timefmt._SECOND_CACHE_MAX
