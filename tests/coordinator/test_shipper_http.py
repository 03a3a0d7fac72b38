"""coordinator.shipper_http, its pure parts: the /insert/jsonline field-name parameters and the
Elasticsearch-shaped error answers (statuses and headers shippers' retry logic reads)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from coordinator import shipper_http
from storage.errors import BadRecord, BadRequest, Overloaded, ShardUnavailable


def renamed(raw: Any, **query: str) -> Any:
    raws = [raw]
    shipper_http.rename_fields(raws, shipper_http.field_renames(query))
    return raws[0]


def test_no_parameters_means_no_renames() -> None:
    assert shipper_http.field_renames({}) == []
    assert shipper_http.field_renames({"_msg_field": "", "_time_field": "timestamp", "other": "x"}) == []


def test_each_parameter_renames_its_field() -> None:
    raw = {"log": "hello", "t": "2024-01-01T00:00:00Z", "sev": "warn", "x": 1}
    assert renamed(raw, _msg_field="log", _time_field="t", _level_field="sev") == {
        "x": 1, "message": "hello", "timestamp": "2024-01-01T00:00:00Z", "level": "warn"}


def test_the_first_present_name_of_a_list_wins() -> None:
    assert renamed({"b": "B", "c": "C"}, _msg_field="a, b,c") == {"c": "C", "message": "B"}
    # a null value counts as absent (normalization drops nulls anyway)
    assert renamed({"a": None, "c": "C"}, _msg_field="a,c") == {"message": "C"}
    # the target itself in the list: present -> kept, nothing else moves
    assert renamed({"message": "m", "b": "B"}, _msg_field="message,b") == {"message": "m", "b": "B"}
    assert renamed({"b": "B"}, _msg_field="message,b") == {"message": "B"}


def test_a_dotted_name_reaches_into_nested_objects() -> None:
    assert renamed({"log": {"message": "deep", "file": "f"}}, _msg_field="log.message") == {
        "log": {"file": "f"}, "message": "deep"}
    # a literal dotted key is preferred over the nested path
    assert renamed({"log.message": "flat", "log": {"message": "deep"}}, _msg_field="log.message") == {
        "log": {"message": "deep"}, "message": "flat"}
    assert renamed({"log": "not an object"}, _msg_field="log.message") == {"log": "not an object"}


def test_a_displaced_field_is_kept_under_original() -> None:
    assert renamed({"message": "old", "text": "new"}, _msg_field="text") == {
        "message.original": "old", "message": "new"}


def test_lines_that_are_not_objects_are_left_for_normalization() -> None:
    assert renamed([1, 2], _msg_field="a") == [1, 2]


def test_too_many_names_are_refused() -> None:
    with pytest.raises(BadRequest, match="lists 17 field names; the limit is 16"):
        shipper_http.field_renames({"_msg_field": ",".join(f"f{i}" for i in range(17))})


@pytest.mark.parametrize(("error", "status", "retry_after", "kind"), [
    (Overloaded("queues full", retry_after_s=2), 429, "2", "es_rejected_execution_exception"),
    (ShardUnavailable("shard 1 restarting"), 503, "1", "unavailable_shards_exception"),
    (BadRequest("bulk line 3: not valid JSON"), 400, None, "illegal_argument_exception"),
    (BadRecord("too big"), 400, None, "illegal_argument_exception"),
])
def test_errors_are_answered_in_elasticsearch_shape(error: Any, status: int, retry_after: str | None,
                                                    kind: str) -> None:
    response = shipper_http._es_error(error)
    assert response.status == status
    assert response.headers["X-Elastic-Product"] == "Elasticsearch"
    assert response.headers.get("Retry-After") == retry_after
    assert response.body is not None
    body = orjson.loads(bytes(response.body))  # type: ignore[arg-type]
    assert body["status"] == status and body["error"]["type"] == kind
    assert body["error"]["reason"] == error.message and body["error"]["root_cause"][0]["type"] == kind
