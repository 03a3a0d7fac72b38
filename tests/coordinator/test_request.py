"""Request parameters -> query plans, for every transport alike."""

from __future__ import annotations

import pytest

from coordinator.request import decode_cursor, encode_cursor, parse_aggregate, parse_filter, parse_search
from storage import query as q
from storage.errors import BadQuery

NOW = 1_700_000_000 * 10**9


def test_filter_flags_and_query_are_anded() -> None:
    node, _ = parse_filter({"q": "timeout", "level": "warning", "source": "db", "tag": "api"}, NOW)
    assert isinstance(node, q.And)
    assert set(node.children) == {q.Token("timeout"), q.Field("level", "WARN"), q.Field("source", "db"),
                                  q.Field("tag", "api")}


def test_time_params() -> None:
    node, _ = parse_filter({"since": "15m"}, NOW)
    assert node == q.TimeRange(NOW - 15 * 60 * 10**9, None)
    node, _ = parse_filter({"from": "2023-11-14T22:13:20Z", "to": "-1m"}, NOW)
    assert node == q.TimeRange(1_700_000_000 * 10**9, NOW - 60 * 10**9)


def test_keyword_with_several_tokens_is_a_phrase() -> None:
    node, _ = parse_filter({"keyword": "Connection refused"}, NOW)
    assert node == q.Phrase(("connection", "refused"))
    with pytest.raises(BadQuery, match="message:"):
        parse_filter({"keyword": "---"}, NOW)


def test_min_severity_and_bad_level() -> None:
    node, _ = parse_filter({"min_severity": "err"}, NOW)
    assert node == q.MinSeverity(40)
    with pytest.raises(BadQuery, match="'loud' is not a level"):
        parse_filter({"min_severity": "loud"}, NOW)


def test_paging() -> None:
    request = parse_search({"page": "3", "page_size": "20"}, NOW)
    assert (request.offset, request.limit, request.desc) == (40, 20, True)
    request = parse_search({"limit": 5, "sort": "asc"}, NOW)
    assert (request.offset, request.limit, request.desc) == (0, 5, False)
    with pytest.raises(BadQuery, match="limit is 20000"):
        parse_search({"limit": 20000}, NOW)
    with pytest.raises(BadQuery, match="sort 'up'"):
        parse_search({"sort": "up"}, NOW)


def test_pipes_fill_in_defaults() -> None:
    request = parse_search({"q": "error | sort by _time asc | limit 7"}, NOW)
    assert (request.desc, request.limit) == (False, 7)
    agg = parse_aggregate({"q": "error | stats count() by (source)"}, NOW)
    assert agg.spec.group_by == "source"
    agg = parse_aggregate({"q": "* | top 3 tags | histogram 5m"}, NOW)
    assert agg.spec.top == (("tags", 3),) and agg.spec.interval_ns == 300 * 10**9


def test_cursor_round_trip_and_garbage() -> None:
    assert decode_cursor(encode_cursor(NOW, 12345)) == (NOW, 12345)
    request = parse_search({"cursor": encode_cursor(NOW, 7)}, NOW)
    assert request.after == (NOW, 7)
    with pytest.raises(BadQuery, match="cursor"):
        decode_cursor("not-a-cursor")
    with pytest.raises(BadQuery, match="either cursor or offset"):
        parse_search({"cursor": encode_cursor(NOW, 7), "offset": 10}, NOW)


def test_aggregate_params() -> None:
    agg = parse_aggregate({"group_by": "level", "top": "tags:5,source=2", "interval": "60s"}, NOW)
    assert agg.spec.group_by == "level"
    assert agg.spec.top == (("tags", 5), ("source", 2))
    assert agg.spec.interval_ns == 60 * 10**9
    agg = parse_aggregate({"histogram": "_time"}, NOW)
    assert agg.spec.histogram is None and agg.spec.interval_ns == 60 * 10**9
    with pytest.raises(BadQuery, match="tags:x"):
        parse_aggregate({"top": "tags:x"}, NOW)


def test_repeated_parameter_is_refused() -> None:
    with pytest.raises(BadQuery, match="given 2 times"):
        parse_filter({"source": ["a", "b"]}, NOW)
