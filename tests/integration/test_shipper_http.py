"""Shipper protocols against a real daemon: Loki push (JSON and snappy protobuf, as Promtail and Alloy
send it), Elasticsearch bulk through the official ``elasticsearch`` client, and the field-name
parameters of /insert/jsonline.  Every path checks exact record counts and fields through the RPC
``query`` op, clear errors for malformed input, and that the daemon keeps serving afterwards.

One daemon (2 shards, HTTP on a free port) serves the module; each test isolates its records with a
unique source.
"""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import cramjam
import pytest
from elasticsearch import Elasticsearch, helpers

from coordinator import loki
from tests.daemon import Daemon, free_port

TS_NS = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z
TS_TEXT = "2023-11-14T22:13:20.123456789Z"
FUTURE_NS = 4_102_444_800 * 10**9  # 2100-01-01: beyond max_future, rejected per record


class Http:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base_url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module", params=["shards", "coordinator"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, Http]]:
    """Every test runs against both places records can be parsed and normalized (config ``parse_in``)."""
    port = free_port()
    with Daemon(shards=2, http=f"127.0.0.1:{port}", env={"SHARDLOG_PARSE_IN": request.param},
                name=f"shippers-{request.param}") as daemon:
        yield daemon, Http(f"http://127.0.0.1:{port}")


@pytest.fixture
def daemon(served: tuple[Daemon, Http]) -> Iterator[Daemon]:
    with served[0].logs_on_failure():
        yield served[0]


@pytest.fixture
def http(served: tuple[Daemon, Http]) -> Http:
    return served[1]


@pytest.fixture
def es(served: tuple[Daemon, Http]) -> Iterator[Elasticsearch]:
    client = Elasticsearch(served[1].base_url, request_timeout=60)
    try:
        yield client
    finally:
        client.close()


def unique(prefix: str = "src") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def logs(daemon: Daemon, source: str) -> list[dict[str, Any]]:
    answer = daemon.call("query", {"q": f"source:{source}", "sort": "asc", "limit": 1000})
    assert answer["partial"] is False
    return answer["logs"]


def count(daemon: Daemon, query: str) -> int:
    return int(daemon.call("count", {"q": query})["count"])


def snappy_push(streams: list[tuple[str, list[tuple[int, bytes, dict[str, str]]]]]) -> bytes:
    request = loki.PushRequest()
    for labels, entries in streams:
        stream = request.streams.add(labels=labels.encode())
        for ts_ns, line, structured in entries:
            entry = stream.entries.add(line=line)
            entry.timestamp.seconds, entry.timestamp.nanos = divmod(ts_ns, 10**9)
            for name, value in structured.items():
                entry.structuredMetadata.add(name=name.encode(), value=value.encode())
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def push_json(http: Http, push: Any, *, gzip_body: bool = False) -> tuple[int, bytes]:
    body = json.dumps(push).encode()
    headers = {"Content-Type": "application/json"}
    if gzip_body:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    status, _, answer = http.request("POST", "/loki/api/v1/push", body, headers)
    return status, answer


def push_protobuf(http: Http, body: bytes) -> tuple[int, bytes]:
    status, _, answer = http.request("POST", "/loki/api/v1/push", body, {"Content-Type": "application/x-protobuf"})
    return status, answer


# --- Loki ---------------------------------------------------------------------------------------------


def test_a_loki_json_push_stores_every_entry_with_its_fields(daemon: Daemon, http: Http) -> None:
    app = unique("app")
    push = {"streams": [
        {"stream": {"app": app, "job": "varlogs", "level": "warn", "env": "prod"},
         "values": [[str(TS_NS), "disk almost full"], [str(TS_NS + 1), "disk full", {"trace_id": "t-9"}]]},
        {"stream": {"service_name": app, "detected_level": "error"}, "values": [[str(TS_NS + 2), "crash"]]},
    ]}
    status, answer = push_json(http, push)
    assert status == 204, answer
    stored = logs(daemon, app)
    assert [(log["timestamp"], log["message"], log["level"]) for log in stored] == [
        (TS_TEXT, "disk almost full", "WARN"), ("2023-11-14T22:13:20.123456790Z", "disk full", "WARN"),
        ("2023-11-14T22:13:20.123456791Z", "crash", "ERROR")]
    assert stored[0]["metadata"] == {"job": "varlogs", "env": "prod"}
    assert stored[1]["metadata"] == {"job": "varlogs", "env": "prod", "trace_id": "t-9"}
    assert stored[2]["metadata"] == {}
    # the same push again, gzip-compressed this time, is recognised as a resend of the same entries
    assert push_json(http, push, gzip_body=True)[0] == 204
    assert count(daemon, f"source:{app}") == 3
    # a gzip push with new entries is stored
    later = {"streams": [{"stream": {"app": app, "job": "varlogs", "level": "warn"},
                          "values": [[str(TS_NS + 10), "disk cleaned"]]}]}
    assert push_json(http, later, gzip_body=True)[0] == 204
    assert count(daemon, f"source:{app}") == 4
    assert count(daemon, f"source:{app} job:varlogs level:WARN") == 3


def test_a_snappy_protobuf_push_stores_every_entry(daemon: Daemon, http: Http) -> None:
    app = unique("app")
    body = snappy_push([
        (f'{{app="{app}", host="web-1", tags="a,b"}}', [(TS_NS + i, f"line {i}".encode(), {}) for i in range(50)]),
        (f'{{job="{app}", level="error"}}', [(TS_NS, b"err \xff", {"trace_id": "z"})]),
    ])
    status, answer = push_protobuf(http, body)
    assert status == 204, answer
    stored = logs(daemon, app)
    assert len(stored) == 51
    first = next(log for log in stored if log["message"] == "line 0")
    assert (first["timestamp"], first["tags"], first["metadata"]) == (TS_TEXT, ["a", "b"], {"host": "web-1"})
    err = next(log for log in stored if log["level"] == "ERROR")
    assert err["message"] == "err \ufffd" and err["metadata"] == {"trace_id": "z"}
    assert count(daemon, f"source:{app} host:web-1") == 50


def test_a_resent_loki_push_is_stored_once(daemon: Daemon, http: Http) -> None:
    app = unique("app")
    body = snappy_push([(f'{{app="{app}"}}', [(TS_NS + i, b"retried batch", {}) for i in range(20)])])
    for _ in range(3):  # Promtail resends the same bytes after a timeout
        assert push_protobuf(http, body)[0] == 204
    assert count(daemon, f"source:{app}") == 20


def test_a_partly_rejected_loki_push_stores_the_rest_and_names_the_entry(daemon: Daemon, http: Http) -> None:
    app = unique("app")
    status, answer = push_json(http, {"streams": [{"stream": {"app": app}, "values": [
        [str(TS_NS), "ok 1"], [str(FUTURE_NS), "from the future"], [str(TS_NS + 1), "ok 2"]]}]})
    assert status == 400
    text = answer.decode()
    assert text.startswith("1 of 3 entries were rejected") and "the other 2 were stored" in text, text
    assert f'stream 0 {{app="{app}"}} entry 1: timestamp 2100-01-01T00:00:00Z' in text and "future" in text, text
    assert [log["message"] for log in logs(daemon, app)] == ["ok 1", "ok 2"]


@pytest.mark.parametrize(("body", "content_type", "expected"), [
    (b"{not json", "application/json", "not valid JSON"),
    (b'{"streams": [{"stream": {}, "values": [["yesterday", "x"]]}]}', "application/json",
     "streams[0].values[0][0]"),
    (b"\x05garbage", "application/x-protobuf", "snappy"),
    (bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff")), "application/x-protobuf", "not a protobuf PushRequest"),
    (b"\xff\xff\xff\xff\x0f", "application/x-protobuf", "the limit is"),
])
def test_malformed_loki_pushes_get_a_400_and_the_daemon_keeps_serving(
        daemon: Daemon, http: Http, body: bytes, content_type: str, expected: str) -> None:
    status, _, answer = http.request("POST", "/loki/api/v1/push", body, {"Content-Type": content_type})
    assert status == 400, answer
    assert expected in json.loads(answer)["message"]
    app = unique("app")
    assert push_protobuf(http, snappy_push([(f'{{app="{app}"}}', [(TS_NS, b"after", {})])]))[0] == 204
    assert count(daemon, f"source:{app}") == 1


# --- Elasticsearch ---------------------------------------------------------------------------------------


def test_the_elasticsearch_client_accepts_the_probes(es: Elasticsearch, http: Http) -> None:
    info = es.info()
    assert info["version"]["number"] == "8.11.0" and info["tagline"] == "You Know, for Search"
    assert es.ping() is True  # HEAD /
    assert es.cluster.health()["status"] == "green"
    assert es.license.get()["license"]["status"] == "active"
    assert es.ilm.put_lifecycle(name="logs", policy={"phases": {}})["acknowledged"] is True
    assert "logs" in es.ilm.get_lifecycle(name="logs")
    assert es.indices.put_index_template(name="logs", index_patterns=["logs-*"])["acknowledged"] is True
    assert es.indices.exists_index_template(name="logs")
    assert es.ingest.put_pipeline(id="p", processors=[])["acknowledged"] is True
    assert es.nodes.info()["_nodes"]["total"] == 1
    for path in ("/", "/_license", "/_cluster/health", "/_nodes/_local", "/_xpack"):
        status, headers, _ = http.request("GET", path)
        assert status == 200 and headers["X-Elastic-Product"] == "Elasticsearch", path


def test_the_bulk_helper_stores_every_document_with_its_fields(daemon: Daemon, es: Elasticsearch) -> None:
    index = unique("logs")
    docs = [{"_index": index, "@timestamp": f"2024-01-01T00:00:{i % 60:02d}.5Z", "message": f"request {i} done",
             "log": {"level": "error" if i % 10 == 0 else "info"}, "host": {"name": f"web-{i % 3}", "ip": "10.0.0.1"},
             "http": {"response": {"status_code": 500 if i % 10 == 0 else 200}}} for i in range(300)]
    ok, errors = helpers.bulk(es, docs, chunk_size=120)
    assert (ok, errors) == (300, [])
    stored = logs(daemon, index)
    assert len(stored) == 300  # the index names the source when the document has none
    first = next(log for log in stored if log["message"] == "request 0 done")
    assert (first["timestamp"], first["level"]) == ("2024-01-01T00:00:00.500Z", "ERROR")
    assert first["metadata"] == {"host": "web-0", "host.ip": "10.0.0.1", "http.response.status_code": 500}
    assert count(daemon, f"source:{index} level:ERROR") == 30
    assert count(daemon, f"source:{index} host:web-1") == 100
    assert count(daemon, f"source:{index} http.response.status_code:500") == 30


def test_the_bulk_helper_gets_per_item_errors_for_rejected_documents(daemon: Daemon, es: Elasticsearch) -> None:
    index = unique("logs")
    docs: list[dict[str, Any]] = [{"_index": index, "message": f"m{i}"} for i in range(5)]
    docs[2]["@timestamp"] = "2100-01-01T00:00:00Z"
    docs.append({"_op_type": "delete", "_index": index, "_id": "gone"})
    ok, errors = helpers.bulk(es, docs, raise_on_error=False)
    assert ok == 4 and isinstance(errors, list) and len(errors) == 2
    rejected, deleted = errors[0]["index"], errors[1]["delete"]
    assert rejected["status"] == 400 and rejected["error"]["type"] == "mapper_parsing_exception"
    assert "future" in rejected["error"]["reason"]
    assert deleted["status"] == 400 and "append-only" in deleted["error"]["reason"]
    assert sorted(log["message"] for log in logs(daemon, index)) == ["m0", "m1", "m3", "m4"]


def bulk_body(*lines: Any) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def test_raw_bulk_requests_gzip_index_path_and_malformed_lines(daemon: Daemon, http: Http) -> None:
    index = unique("idx")
    body = bulk_body({"create": {}}, {"message": "via path", "log.level": "warn"},
                     {"update": {"_id": "1"}}, {"doc": {"message": "ignored"}},
                     {"index": {"pipeline": "x", "routing": "y"}}, {"message": "second", "host.name": "h"})
    status, headers, answer = http.request("POST", f"/{index}/_bulk", gzip.compress(body),
                                           {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
    assert status == 200 and headers["X-Elastic-Product"] == "Elasticsearch"
    result = json.loads(answer)
    assert result["errors"] is True
    assert [(next(iter(item)), next(iter(item.values()))["status"]) for item in result["items"]] == [
        ("create", 201), ("update", 400), ("index", 201)]
    assert all(next(iter(item.values()))["_index"] == index for item in result["items"])
    stored = logs(daemon, index)
    # no timestamps: both get the same ingest time, and ids (assigned in request order) break the tie
    assert [(log["message"], log["level"], log["metadata"].get("host")) for log in stored] == [
        ("via path", "WARN", None), ("second", "INFO", "h")]
    # a document that is not JSON, or not an object, is a per-item 400 naming its bulk line
    status, _, answer = http.request("POST", f"/{index}/_bulk", bulk_body({"index": {}}, b"{broken", {"create": {}},
                                                                          [1], {"index": {}}, {"message": "third"}),
                                     {"Content-Type": "application/x-ndjson"})
    items = [next(iter(item.values())) for item in json.loads(answer)["items"]]
    assert status == 200 and [item["status"] for item in items] == [400, 400, 201]
    assert items[0]["error"]["type"] == "mapper_parsing_exception"
    assert items[0]["error"]["reason"].startswith("the document on bulk line 2: not valid JSON")
    assert "bulk line 4: record must be a JSON object" in items[1]["error"]["reason"]
    # a line that cannot be an action fails the whole request with a 400 in Elasticsearch's shape
    status, headers, answer = http.request("POST", "/_bulk", bulk_body({"index": {}}, {"message": "m"}) + b"{oops\n",
                                           {"Content-Type": "application/x-ndjson"})
    assert status == 400 and headers["X-Elastic-Product"] == "Elasticsearch"
    error = json.loads(answer)
    assert error["status"] == 400 and "bulk line 3: not valid JSON" in error["error"]["reason"]
    status, _, answer = http.request("POST", "/_bulk", b"", {"Content-Type": "application/x-ndjson"})
    assert status == 400 and "no actions" in json.loads(answer)["error"]["reason"]
    # the daemon keeps serving
    status, _, answer = http.request("POST", f"/{index}/_bulk", bulk_body({"index": {}}, {"message": "after"}),
                                     {"Content-Type": "application/x-ndjson"})
    assert status == 200 and json.loads(answer)["errors"] is False
    assert count(daemon, f"source:{index}") == 4


def test_a_resent_bulk_with_ids_is_stored_once_without_ids_twice(daemon: Daemon, http: Http) -> None:
    with_ids, without_ids = unique("ids"), unique("noids")
    keyed = bulk_body(*[line for i in range(10) for line in ({"index": {"_id": f"d{i}"}}, {"message": f"m{i}"})])
    unkeyed = bulk_body(*[line for i in range(10) for line in ({"index": {}}, {"message": f"m{i}"})])
    headers = {"Content-Type": "application/x-ndjson"}
    for _ in range(2):
        assert http.request("POST", f"/{with_ids}/_bulk", keyed, headers)[0] == 200
        assert http.request("POST", f"/{without_ids}/_bulk", unkeyed, headers)[0] == 200
    # with _id, Elasticsearch would overwrite; without, it stores twice too
    assert count(daemon, f"source:{with_ids}") == 10
    assert count(daemon, f"source:{without_ids}") == 20


# --- /insert/jsonline field names ---------------------------------------------------------------------------


def test_jsonline_field_name_parameters(daemon: Daemon, http: Http) -> None:
    source = unique()
    lines = [{"log": "renamed message", "t": "2024-01-01T00:00:01Z", "sev": "error", "source": source},
             {"msg_text": "second choice", "t": "2024-01-01T00:00:02Z", "source": source, "message": "displaced"},
             {"body": {"text": "nested"}, "t": 1_704_067_203, "sev": "warn", "source": source}]
    body = gzip.compress(b"\n".join(json.dumps(line).encode() for line in lines))
    status, _, answer = http.request(
        "POST", "/insert/jsonline?_msg_field=log,msg_text,body.text&_time_field=t&_level_field=sev", body,
        {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
    assert status == 200 and json.loads(answer) == {"accepted": 3, "rejected": []}
    stored = logs(daemon, source)
    assert [(log["timestamp"], log["message"], log["level"]) for log in stored] == [
        ("2024-01-01T00:00:01Z", "renamed message", "ERROR"), ("2024-01-01T00:00:02Z", "second choice", "INFO"),
        ("2024-01-01T00:00:03Z", "nested", "WARN")]
    assert stored[1]["metadata"] == {"message.original": "displaced"}
    assert all("_ts_invalid" not in log["metadata"] for log in stored)
