"""coordinator.esbulk: NDJSON bulk bodies -> items and unparsed documents, the ECS field mapping
(storage.ecs), the bulk response, and hostile bodies (a bad action line is a BadRequest; a bad
document is a per-item 400 once parsing it fails)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import esbulk
from storage.ecs import map_document
from storage.errors import BadRecord, BadRequest
from storage.jsonlines import ecs_raws
from storage.record import normalize_record

NOW_NS = 1_750_000_000 * 10**9


def ndjson(*lines: Any) -> bytes:
    return b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines)


def normalized(raw: dict[str, Any]) -> dict[str, Any]:
    return normalize_record(raw, now_ns=NOW_NS)


def parts(item: dict[str, dict[str, Any]]) -> tuple[str, str, str, int, str | None]:
    """(op, _index, _id, status, error reason or None) of one answer item."""
    op, fields = next(iter(item.items()))
    return op, fields["_index"], fields["_id"], fields["status"], fields.get("error", {}).get("reason")


def records(request: esbulk.BulkRequest) -> list[dict[str, Any]]:
    """The raw records of the request's documents that parse, as the coordinator makes them."""
    raws, _, _ = ecs_raws(request.documents, request.indexes)
    return raws


def answered(request: esbulk.BulkRequest) -> dict[str, Any]:
    """The bulk answer once the documents are parsed and normalized, as the service does it."""
    raws, numbers, rejected = ecs_raws(request.documents, request.indexes)
    refused = {r["line"] - 1: r["reason"] for r in rejected}
    for raw, number in zip(raws, numbers):
        try:
            normalize_record(raw, now_ns=NOW_NS)
        except BadRecord as exc:
            refused[number - 1] = exc.message
    return esbulk.bulk_response(request, refused, 0)


def reason(item: dict[str, dict[str, Any]]) -> str:
    text = parts(item)[4]
    assert text is not None, item
    return text


# --- parsing ------------------------------------------------------------------------------------------


def test_index_and_create_actions_with_their_documents() -> None:
    body = ndjson({"index": {"_index": "web", "_id": "a1", "routing": "r", "pipeline": "p"}}, {"message": "one"},
                  {"create": {}}, {"message": "two"},
                  {"index": {"_index": "db", "require_alias": True, "_type": "_doc"}}, {"message": "three"})
    request = esbulk.parse_bulk(body, "from-path")
    assert [parts(item)[:2] + parts(item)[3:] for item in request.items] == [
        ("index", "web", 201, None), ("create", "from-path", 201, None), ("index", "db", 201, None)]
    assert parts(request.items[0])[2] == "a1" and request.positions == [0, 1, 2]
    assert [r["message"] for r in records(request)] == ["one", "two", "three"]
    assert [r["source"] for r in records(request)] == ["web", "from-path", "db"]  # the index names the source
    assert request.all_ids is False
    assert parts(esbulk.parse_bulk(body).items[1])[1] == esbulk.DEFAULT_INDEX


def test_delete_and_update_are_per_item_errors_and_update_consumes_its_body() -> None:
    body = ndjson({"delete": {"_index": "x", "_id": "1"}},
                  {"update": {"_id": "2"}}, {"doc": {"message": "would look like an action"}},
                  {"index": {}}, {"message": "kept"})
    request = esbulk.parse_bulk(body)
    assert [parts(item)[0] for item in request.items] == ["delete", "update", "index"]
    assert [parts(item)[3] for item in request.items] == [400, 400, 201]
    assert "delete is not supported" in reason(request.items[0])
    assert "update is not supported" in reason(request.items[1])
    assert request.positions == [2] and request.errors is True
    assert [r["message"] for r in records(request)] == ["kept"]


def test_blank_lines_and_crlf_endings_are_tolerated() -> None:
    body = b'\r\n{"index": {}}\r\n{"message": "a"}\r\n\n\n{"create": {}}\n{"message": "b"}'  # no final newline
    assert [r["message"] for r in records(esbulk.parse_bulk(body))] == ["a", "b"]


def test_bad_documents_are_per_item_errors() -> None:
    body = ndjson({"index": {}}, b"{broken", {"index": {}}, [1, 2], {"index": {}}, {"message": "ok"}, {"index": {}})
    request = esbulk.parse_bulk(body)
    assert request.documents == [b"{broken", b"[1,2]", b'{"message":"ok"}'] and request.lines == [2, 4, 6]
    # the last action's document line is empty (the body ends right after the action's newline)
    assert "bulk line 7: the index action has no document" in reason(request.items[3])
    items = answered(request)["items"]
    errors = [parts(item)[4] for item in items]
    assert items[0]["index"]["error"]["type"] == "mapper_parsing_exception"
    assert errors[0] is not None and errors[0].startswith("the document on bulk line 2: not valid JSON")
    assert errors[1] is not None and "bulk line 4: record must be a JSON object" in errors[1]
    assert errors[2] is None and request.positions == [0, 1, 2]
    assert [r["message"] for r in records(request) if isinstance(r, dict)] == ["ok"]


def test_an_action_at_the_very_end_without_a_document_is_a_per_item_error() -> None:
    request = esbulk.parse_bulk(b'{"index": {}}\n{"message": "a"}\n{"index": {}}')
    assert "no document" in reason(request.items[1])
    assert len(records(request)) == 1


@pytest.mark.parametrize(("body", "expected"), [
    (b"", "no actions"),
    (b"\n\n  \n", "no actions"),
    (b"{not json\n", "bulk line 1: not valid JSON"),
    (b'{"index": {}}\n{"message": "a"}\n{"explode": {}}\n', "bulk line 3: unknown action 'explode'"),
    (b'{"index": {}, "create": {}}\n', "exactly one action"),
    (b"[1]\n", "exactly one action"),
    (b'{"index": 5}\n', "must be an object"),
    (b'{"index": {"_index": 5}}\n{}\n', "_index must be a string"),
    (b'{"index": {"_id": {"a": 1}}}\n{}\n', "_id must be a string"),
])
def test_a_line_that_cannot_be_an_action_fails_the_request(body: bytes, expected: str) -> None:
    with pytest.raises(BadRequest) as caught:
        esbulk.parse_bulk(body)
    assert expected in caught.value.message


def test_numeric_ids_are_accepted_as_text_and_all_ids_is_tracked() -> None:
    request = esbulk.parse_bulk(ndjson({"index": {"_id": 7}}, {"message": "a"}, {"create": {"_id": "x"}}, {}))
    assert [parts(item)[2] for item in request.items] == ["7", "x"] and request.all_ids is True


# --- the ECS mapping ----------------------------------------------------------------------------------------


def test_ecs_documents_map_to_record_fields() -> None:
    doc = {"@timestamp": "2024-01-01T00:00:01.5Z", "message": "GET /", "log": {"level": "warn", "logger": "http"},
           "host": {"name": "web-1", "ip": ["10.0.0.1"], "os": {"family": "debian"}},
           "service": {"name": "nginx", "version": "1.25"}, "http": {"response": {"status_code": 200}}}
    record = normalized(map_document(doc, "logs-nginx"))
    assert record["ts_ns"] == 1_704_067_201_500_000_000
    assert (record["message"], record["level"], record["source"]) == ("GET /", "WARN", "nginx")
    assert record["metadata"] == {"host": "web-1", "host.ip": '["10.0.0.1"]', "host.os.family": "debian",
                                  "log.logger": "http", "service.version": "1.25",
                                  "http.response.status_code": 200}


def test_flat_dotted_ecs_keys_map_too() -> None:
    doc = {"@timestamp": 1_704_067_200_000, "log.level": "error", "host.name": "db-2", "service.name": "pg",
           "message": "x"}
    record = normalized(map_document(doc, "idx"))
    assert (record["level"], record["source"], record["metadata"]) == ("ERROR", "pg", {"host": "db-2"})
    assert record["ts_ns"] == 1_704_067_200 * 10**9


def test_precedence_explicit_fields_win() -> None:
    doc = {"timestamp": "2024-01-01T00:00:00Z", "@timestamp": "2025-01-01T00:00:00Z", "level": "info",
           "log": {"level": "error"}, "source": "mine", "service": {"name": "theirs"}, "message": "m", "log.x": 1}
    record = normalized(map_document(doc, "idx"))
    assert record["ts_ns"] == 1_704_067_200 * 10**9 and record["level"] == "INFO" and record["source"] == "mine"
    assert record["metadata"]["@timestamp"] == "2025-01-01T00:00:00Z"
    assert record["metadata"]["log.level"] == "error" and record["metadata"]["service.name"] == "theirs"


def test_a_string_log_field_is_the_message_when_there_is_none() -> None:
    assert normalized(map_document({"log": "docker line\n"}, "i"))["message"] == "docker line\n"
    record = normalized(map_document({"log": "other", "message": "m"}, "i"))
    assert record["message"] == "m" and record["metadata"]["log"] == "other"


def test_an_ecs_network_source_object_is_kept_as_metadata() -> None:
    record = normalized(map_document({"message": "m", "source": {"ip": "1.2.3.4", "port": 5}}, "idx"))
    assert record["source"] == ""
    assert record["metadata"] == {"source.ip": "1.2.3.4", "source.port": 5, "_ts_invalid": True}  # no timestamp


# --- the response -------------------------------------------------------------------------------------------


def test_the_response_has_one_item_per_action_with_statuses() -> None:
    body = ndjson({"index": {"_id": "given"}}, {"message": "a"}, {"delete": {"_id": "d"}},
                  {"create": {"_index": "c"}}, {"message": "b"}, {"index": {}}, b"nope")
    request = esbulk.parse_bulk(body, "p")
    answer = esbulk.bulk_response(request, {1: "message is 300000 bytes; the limit is 262144"}, 12)
    assert answer["took"] == 12 and answer["errors"] is True
    items = answer["items"]
    assert [next(iter(item)) for item in items] == ["index", "delete", "create", "index"]
    first = items[0]["index"]
    assert (first["_id"], first["_index"], first["status"], first["result"]) == ("given", "p", 201, "created")
    assert items[1]["delete"]["status"] == 400 and items[1]["delete"]["_id"] == "d"
    rejected = items[2]["create"]
    assert rejected["status"] == 400 and rejected["_index"] == "c"
    assert rejected["error"] == {"type": "mapper_parsing_exception",
                                 "reason": "the document on bulk line 5: message is 300000 bytes; the limit is 262144"}
    assert items[3]["index"]["status"] == 201  # "nope" is a document; it fails once parsed (see answered)
    assert answered(request)["items"][3]["index"]["status"] == 400
    ids = [next(iter(item.values()))["_id"] for item in items]
    assert len(set(ids)) == len(ids)


def test_an_all_good_response_has_no_errors() -> None:
    request = esbulk.parse_bulk(ndjson({"index": {}}, {"message": "a"}, {"index": {}}, {"message": "b"}))
    answer = esbulk.bulk_response(request, {}, 0)
    assert answer["errors"] is False and [i["index"]["status"] for i in answer["items"]] == [201, 201]


# --- properties -------------------------------------------------------------------------------------------

documents = st.dictionaries(st.sampled_from(["message", "@timestamp", "level", "host", "x", "log"]),
                            st.text(max_size=8) | st.integers(-1000, 1000), max_size=4)
actions = st.tuples(st.sampled_from(["index", "create", "delete", "update"]),
                    st.none() | st.text(max_size=5), documents)


@settings(max_examples=200, deadline=None)
@given(st.lists(actions, min_size=1, max_size=20))
def test_generated_bodies_parse_like_a_plain_oracle(generated: list[tuple[str, str | None, dict[str, Any]]]) -> None:
    lines: list[Any] = []
    for op, doc_id, doc in generated:
        lines.append({op: {} if doc_id is None else {"_id": doc_id}})
        if op != "delete":
            lines.append({"doc": doc} if op == "update" else doc)
    request = esbulk.parse_bulk(ndjson(*lines))
    # oracle: one item per action in order; a record exactly for each index/create, in order
    assert [parts(item)[0] for item in request.items] == [op for op, _, _ in generated]
    stored = [doc for op, _, doc in generated if op in ("index", "create")]
    assert len(records(request)) == len(stored)
    # (a string "log" is the message when there is no "message")
    assert [r.get("message") for r in records(request)] == [
        d["message"] if "message" in d else (d["log"] if isinstance(d.get("log"), str) else None) for d in stored]
    answer = answered(request)
    assert [item[op]["status"] for item, (op, _, _) in zip(answer["items"], generated)] == [
        201 if op in ("index", "create") else 400 for op, _, _ in generated]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_bad_request_only(body: bytes) -> None:
    try:
        request = esbulk.parse_bulk(body)
    except BadRequest as exc:
        assert exc.message
        return
    answer = esbulk.bulk_response(request, {}, 0)
    assert len(answer["items"]) == len(request.items) >= 1
