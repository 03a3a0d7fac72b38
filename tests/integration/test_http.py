"""The HTTP API of a real daemon (DESIGN §8): ingest, query, count, aggregate, metrics, health,
bearer tokens, body limits, and staying up after garbage.

One daemon (2 shards, HTTP on 127.0.0.1 and a free port, a 1 MiB body limit) serves the module, once
with JSON lines parsed by the shards and once by the coordinator;
each test isolates its records with a unique ``source``.  Token tests start their own daemons.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from storage import querytext
from storage.errors import BadQuery
from tests.daemon import Daemon, free_port

MAX_BODY_BYTES = 1024 * 1024
LOG_FIELDS = {"id", "timestamp", "level", "message", "source", "tags", "metadata", "thread_id", "request_id",
              "user_id"}


class Http:
    """A tiny HTTP client (urllib) that returns (status, headers, body) for every status."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                params: dict[str, Any] | None = None) -> tuple[int, dict[str, str], bytes]:
        url = self.base_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        all_headers = dict(headers or {})
        if self.token is not None:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        request = urllib.request.Request(url, data=body, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()

    def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, headers, body = self.request(method, path, **kwargs)
        assert headers.get("Content-Type", "").startswith("application/json"), (status, headers, body[:300])
        return status, json.loads(body)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        status, answer = self.json(method, path, **kwargs)
        assert status == 200, (status, answer)
        return answer

    def insert(self, lines: list[Any], *, key: str | None = None, gzip_body: bool = False) -> dict[str, Any]:
        body = b"\n".join(line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines) + b"\n"
        headers = {"Content-Type": "application/x-ndjson"}
        if key is not None:
            headers["Idempotency-Key"] = key
        if gzip_body:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return self.ok("POST", "/insert/jsonline", body=body, headers=headers)


@pytest.fixture(scope="module", params=["shards", "coordinator"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, Http]]:
    """Every test runs against both places records can be parsed (config ``parse_in``)."""
    port = free_port()
    env = {"SHARDLOG_MAX_BODY_BYTES": str(MAX_BODY_BYTES), "SHARDLOG_PARSE_IN": request.param}
    with Daemon(shards=2, http=f"127.0.0.1:{port}", env=env, name=f"http-{request.param}") as daemon:
        yield daemon, Http(f"http://127.0.0.1:{port}")


@pytest.fixture
def http(served: tuple[Daemon, Http]) -> Iterator[Http]:
    daemon, client = served
    with daemon.logs_on_failure():
        yield client


def unique_source() -> str:
    return "src-" + uuid.uuid4().hex[:10]


def records(source: str) -> list[dict[str, Any]]:
    """Five records with known fields, out of timestamp order."""
    return [
        {"timestamp": "2024-01-01T00:00:03Z", "level": "error", "message": "db timeout on write", "source": source,
         "tags": ["a", "b"], "metadata": {"host": "web-1", "dur": 15}, "request_id": "r1"},
        {"timestamp": "2024-01-01T00:00:01.123Z", "level": "INFO", "message": "login ok", "source": source,
         "tags": ["a"], "metadata": {"host": "web-2", "dur": 5}, "user_id": "u1"},
        {"timestamp": "2024-01-01T00:02:30Z", "level": "WARNING", "message": "slow disk", "source": source,
         "tags": [], "host": "web-1", "dur": 105, "thread_id": "t1"},
        {"timestamp": "2024-01-01T00:00:02Z", "level": "ERROR", "message": "db timeout on read", "source": source,
         "tags": ["a"], "metadata": {"host": "web-1", "dur": 25}},
        {"timestamp": "2024-01-01T00:01:00Z", "level": "info", "message": "login ok again", "source": source,
         "metadata": {"dur": 7}},
    ]


# --- ingest --------------------------------------------------------------------------------------


def test_insert_jsonline_stores_every_line(http: Http) -> None:
    source = unique_source()
    assert http.insert(records(source)) == {"accepted": 5, "rejected": []}
    assert http.ok("GET", "/api/v1/count", params={"q": f"source:{source}"})["count"] == 5


def test_insert_jsonline_with_a_gzip_body_stores_every_line(http: Http) -> None:
    source = unique_source()
    assert http.insert(records(source), gzip_body=True) == {"accepted": 5, "rejected": []}
    assert http.ok("GET", "/api/v1/count", params={"q": f"source:{source}"})["count"] == 5


def test_insert_jsonline_reports_bad_lines_by_number_and_stores_the_rest(http: Http) -> None:
    source = unique_source()
    good = records(source)
    body_lines = [json.dumps(good[0]).encode(), b"{not json", json.dumps(good[1]).encode(), b"",
                  json.dumps({"message": "from the future", "timestamp": "2100-01-01T00:00:00Z", "source": source}).encode(),
                  json.dumps(good[2]).encode()]
    answer = http.insert(body_lines)
    assert answer["accepted"] == 3, answer
    assert [r["line"] for r in answer["rejected"]] == [2, 5], answer
    assert "JSON" in answer["rejected"][0]["reason"], answer
    assert "future" in answer["rejected"][1]["reason"], answer
    assert http.ok("GET", "/api/v1/count", params={"q": f"source:{source}"})["count"] == 3


def test_a_line_dated_past_2262_is_rejected_as_future_not_restamped(http: Http) -> None:
    source = unique_source()
    answer = http.insert([{"message": "year 2999", "timestamp": "2999-01-01T00:00:00Z", "source": source}])
    assert answer["accepted"] == 0 and "future" in answer["rejected"][0]["reason"], answer


def test_a_retried_insert_with_the_same_idempotency_key_is_stored_once(http: Http) -> None:
    source = unique_source()
    # records without a timestamp get the ingest time: the retry must still route them the same way
    lines = [{"message": f"keyed line {i}", "source": source} for i in range(40)]
    key = "http-retry-" + uuid.uuid4().hex
    first = http.insert(lines, key=key)
    assert first["accepted"] == 40
    http.insert(lines, key=key)
    assert http.ok("GET", "/api/v1/count", params={"q": f"source:{source}"})["count"] == 40
    # another key is another request
    http.insert(lines[:5], key=key + "-other")
    assert http.ok("GET", "/api/v1/count", params={"q": f"source:{source}"})["count"] == 45


def test_a_tail_stream_with_a_bad_query_is_a_400_before_it_starts(http: Http) -> None:
    status, answer = http.json("GET", "/api/v1/tail", params={"q": "level:>>>"})
    assert status == 400 and answer["error"] == "bad_query", answer


def test_a_follower_gets_the_lines_the_shards_parsed_in_line_order(served: tuple[Daemon, Http], http: Http) -> None:
    """Where JSON lines are parsed by the shards, they hand the stored records back while someone
    follows (tail -f); either way the follower sees them once, in line order, without the rejected line."""
    daemon, _ = served
    source = unique_source()
    cursor = daemon.call("tail", {"source": source})["cursor"]  # following from here
    lines = [{"message": f"followed {i}", "source": source} for i in range(30)]
    body_lines: list[Any] = [json.dumps(line).encode() for line in lines]
    body_lines.insert(10, b"{not json")
    answer = http.insert(body_lines)
    assert (answer["accepted"], [r["line"] for r in answer["rejected"]]) == (30, [11]), answer
    seen = daemon.call("tail", {"source": source, "cursor": cursor, "wait_s": 0, "limit": 100})["logs"]
    assert [log["message"] for log in seen] == [line["message"] for line in lines]


# --- reads ---------------------------------------------------------------------------------------


def test_query_get_and_post_give_the_json_shape_of_the_design(http: Http) -> None:
    source = unique_source()
    http.insert(records(source))
    params = {"q": f"source:{source}", "sort": "asc", "limit": 2}
    page1 = http.ok("GET", "/api/v1/query", params=params)
    assert set(page1) == {"total", "logs", "next_cursor", "partial"}, page1
    assert page1["total"] == 5 and page1["partial"] is False
    assert [log["timestamp"] for log in page1["logs"]] == ["2024-01-01T00:00:01.123Z", "2024-01-01T00:00:02Z"]
    first = page1["logs"][0]
    assert set(first) == LOG_FIELDS
    assert first == {"id": first["id"], "timestamp": "2024-01-01T00:00:01.123Z", "level": "INFO",
                     "message": "login ok", "source": source, "tags": ["a"], "metadata": {"host": "web-2", "dur": 5},
                     "thread_id": None, "request_id": None, "user_id": "u1"}
    assert isinstance(first["id"], int)
    # the same parameters as a POSTed JSON body give the same answer
    posted = http.ok("POST", "/api/v1/query", body=json.dumps(params).encode(),
                     headers={"Content-Type": "application/json"})
    assert posted == page1
    # the cursor walks the rest; desc (the default) is newest first
    rest = http.ok("GET", "/api/v1/query", params={**params, "limit": 10, "cursor": page1["next_cursor"]})
    assert [log["timestamp"] for log in rest["logs"]] == ["2024-01-01T00:00:03Z", "2024-01-01T00:01:00Z",
                                                          "2024-01-01T00:02:30Z"]
    assert rest["next_cursor"] is None
    newest = http.ok("GET", "/api/v1/query", params={"q": f"source:{source}", "limit": 1})
    assert newest["logs"][0]["message"] == "slow disk" and newest["logs"][0]["level"] == "WARN"
    # from is inclusive, to exclusive
    window = http.ok("GET", "/api/v1/query", params={"q": f"source:{source}", "from": "2024-01-01T00:00:02Z",
                                                     "to": "2024-01-01T00:01:00Z", "sort": "asc"})
    assert [log["timestamp"] for log in window["logs"]] == ["2024-01-01T00:00:02Z", "2024-01-01T00:00:03Z"]


def test_count_get_and_post(http: Http) -> None:
    source = unique_source()
    http.insert(records(source))
    answer = http.ok("GET", "/api/v1/count", params={"q": f"source:{source} level:>=WARN"})
    assert answer["count"] == 3
    assert set(answer) <= {"count", "partial"} and answer.get("partial", False) is False, answer
    posted = http.ok("POST", "/api/v1/count", body=json.dumps({"q": f"source:{source} timeout"}).encode(),
                     headers={"Content-Type": "application/json"})
    assert posted["count"] == 2
    form = http.ok("POST", "/api/v1/count", body=urllib.parse.urlencode({"q": f"source:{source} login"}).encode(),
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form["count"] == 2


def test_aggregate_returns_exactly_the_parts_asked_for_in_the_design_shape(http: Http) -> None:
    source = unique_source()
    http.insert(records(source))
    answer = http.ok("GET", "/api/v1/aggregate", params={
        "q": f"source:{source}", "group_by": "level", "histogram": "dur:10", "top": "tags:5", "interval": "60s"})
    assert answer == {
        "total": 5,
        "group_by": {"ERROR": 2, "INFO": 2, "WARN": 1},
        "histogram": {"0": 2, "10": 1, "20": 1, "100": 1},
        "top": {"tags": [["a", 3], ["b", 1]]},
        "time_histogram": [["2024-01-01T00:00:00Z", 3], ["2024-01-01T00:01:00Z", 1], ["2024-01-01T00:02:00Z", 1]],
        "partial": False,
    }
    only_group = http.ok("POST", "/api/v1/aggregate", body=json.dumps({"q": f"source:{source}",
                                                                        "group_by": "host"}).encode(),
                         headers={"Content-Type": "application/json"})
    assert only_group == {"total": 5, "group_by": {"web-1": 3, "web-2": 1}, "partial": False}


def test_a_bad_query_is_a_400_json_error_naming_the_column(http: Http) -> None:
    bad = "level:ERROR (timeout OR"
    status, answer = http.json("GET", "/api/v1/query", params={"q": bad})
    assert status == 400, answer
    assert answer["error"] == "bad_query"
    with pytest.raises(BadQuery) as expected:
        querytext.parse_query(bad, now_ns=time.time_ns())
    assert answer["message"] == expected.value.message
    assert re.search(r"column \d+", answer["message"]), answer
    for path in ("/api/v1/count", "/api/v1/aggregate"):
        status, answer = http.json("GET", path, params={"q": bad})
        assert status == 400 and "column" in answer["message"], (path, answer)
    status, answer = http.json("GET", "/api/v1/aggregate", params={"group_by": "message"})
    assert status == 400 and "message" in answer["message"], answer


# --- operations ----------------------------------------------------------------------------------


def _metrics(http: Http) -> dict[str, Any]:
    status, headers, body = http.request("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain"), headers
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def _sample(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for item in families[family].samples:
        if item.name == sample and all(item.labels.get(k) == v for k, v in labels.items()):
            return float(item.value)
    raise AssertionError(f"no sample {sample}{labels} in {family}: {families[family].samples}")


def test_metrics_parse_and_count_what_was_ingested(http: Http) -> None:
    before = _metrics(http)
    ingested_before = _sample(before, "shardlog_logs_ingested", "shardlog_logs_ingested_total")
    source = unique_source()
    http.insert([*records(source), b"{broken"])
    after = _metrics(http)
    assert after["shardlog_logs_ingested"].type == "counter"
    assert _sample(after, "shardlog_logs_ingested", "shardlog_logs_ingested_total") - ingested_before == 5
    assert _sample(after, "shardlog_logs_rejected", "shardlog_logs_rejected_total", reason="json") >= 1
    assert _sample(after, "shardlog_shard_up", "shardlog_shard_up", shard="0") == 1
    assert _sample(after, "shardlog_shard_up", "shardlog_shard_up", shard="1") == 1
    assert _sample(after, "shardlog_logs_total", "shardlog_logs_total") >= 5
    assert after["shardlog_ingest_latency_seconds"].type == "histogram"
    assert _sample(after, "shardlog_ingest_latency_seconds", "shardlog_ingest_latency_seconds_count") >= 1
    assert _sample(after, "shardlog_logs_by_source", "shardlog_logs_by_source", source=source) == 5


def test_health_and_ready(http: Http) -> None:
    assert http.ok("GET", "/health") == {"status": "ok"}
    assert http.ok("GET", "/ready") == {"ready": True, "shards_up": 2, "shards": 2}


def test_an_oversized_body_gets_a_4xx_and_the_daemon_keeps_serving(http: Http) -> None:
    source = unique_source()
    line = json.dumps({"message": "x" * 1000, "source": source}).encode()
    body = b"\n".join([line] * (MAX_BODY_BYTES // len(line) + 50))
    status, _, answer = http.request("POST", "/insert/jsonline", body=body)
    assert 400 <= status < 500, (status, answer[:300])
    # a small gzip body that inflates past the limit is refused too, not decompressed into memory
    status, _, answer = http.request("POST", "/insert/jsonline", body=gzip.compress(body),
                                     headers={"Content-Encoding": "gzip"})
    assert 400 <= status < 500, (status, answer[:300])
    assert http.ok("GET", "/api/v1/count", params={"q": f"source:{source}"})["count"] == 0


def test_the_daemon_keeps_serving_after_garbage(served: tuple[Daemon, Http], http: Http) -> None:
    daemon, _ = served
    garbage = bytes(range(256)) * 4 + b"\n\xff\xfe{\"message\": \x00}\n{]\n"
    status, _, answer = http.request("POST", "/insert/jsonline", body=garbage)
    assert status < 500, (status, answer[:300])
    status, _, answer = http.request("POST", "/api/v1/query", body=b"[1, 2", headers={"Content-Type": "application/json"})
    assert 400 <= status < 500, (status, answer[:300])
    status, _, answer = http.request("GET", "/api/v1/query", params={"limit": "many", "cursor": "\x00garbage"})
    assert 400 <= status < 500, (status, answer[:300])
    port = int(http.base_url.rsplit(":", 1)[1])
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n{",
                 b"POST /insert/jsonline HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(junk)
            raw.shutdown(socket.SHUT_WR)
            raw.settimeout(10)
            try:
                while raw.recv(4096):
                    pass
            except OSError:
                pass
    assert daemon.running()
    assert http.ok("GET", "/health") == {"status": "ok"}
    source = unique_source()
    assert http.insert(records(source))["accepted"] == 5
    assert daemon.call("count", {"q": f"source:{source}"})["count"] == 5


def test_a_body_that_claims_gzip_but_is_not_gets_a_4xx(http: Http) -> None:
    status, _, answer = http.request("POST", "/insert/jsonline", body=b"not gzip at all",
                                     headers={"Content-Encoding": "gzip"})
    assert 400 <= status < 500, (status, answer[:300])


# --- bearer token --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "config"])
def test_a_token_configured_daemon_requires_the_bearer_token(how: str) -> None:
    token = "s3cret-" + uuid.uuid4().hex
    port = free_port()
    env = {"SHARDLOG_TOKEN": token} if how == "env" else {}
    config = {"token": token} if how == "config" else {}
    with Daemon(shards=1, http=f"127.0.0.1:{port}", env=env, config=config, name=f"token-{how}") as daemon:
        anonymous = Http(f"http://127.0.0.1:{port}")
        wrong = Http(f"http://127.0.0.1:{port}", token="not-" + token)
        right = Http(f"http://127.0.0.1:{port}", token=token)
        line = [{"message": "with a token", "source": "tok"}]
        for client in (anonymous, wrong):
            for method, path in (("GET", "/api/v1/query"), ("GET", "/api/v1/count"), ("GET", "/metrics"),
                                 ("GET", "/ready"), ("POST", "/insert/jsonline")):
                status, _, body = client.request(method, path, body=b"{}" if method == "POST" else None)
                assert status == 401, (method, path, status, body[:200])
        assert daemon.call("count", {"q": "source:tok"})["count"] == 0, "a rejected insert stored records"
        assert right.insert(line) == {"accepted": 1, "rejected": []}
        assert right.ok("GET", "/api/v1/count", params={"q": "source:tok"})["count"] == 1
        assert right.ok("GET", "/ready")["ready"] is True
        # liveness stays open for load balancers
        assert anonymous.ok("GET", "/health") == {"status": "ok"}

