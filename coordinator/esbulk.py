"""Elasticsearch ``_bulk`` requests decoded into raw records, and the bulk response built back.

This module owns the NDJSON bulk format as Vector, Fluent Bit, Filebeat and the ``elasticsearch``
client send it, and the per-item answer their retry logic reads.  It is pure: bytes in, data out.
It guarantees:

- ``parse_bulk`` reads action lines ``{"index"|"create"|"delete"|"update": {metadata}}``, each
  ``index`` / ``create`` followed by its source document and ``update`` by its body; blank lines
  between actions and ``\\r\\n`` endings are tolerated.  Action metadata other than ``_index`` and
  ``_id`` (``routing``, ``pipeline``, ``require_alias``, ``_type``, ...) is ignored.
- A line that cannot be an action (not JSON, not an object of one known action) makes the whole
  request a ``BadRequest`` naming the line: after it, which line is a document and which an action
  can no longer be known, so guessing could store an action line as a log.  Elasticsearch does the same.
- Everything else is answered per item, so the rest of the request is stored: a source document that
  is not a JSON object, or that record normalization rejects, gets status 400 with
  ``{"type": "mapper_parsing_exception", "reason": ...}``; ``delete`` and ``update`` get status 400 with
  ``illegal_argument_exception`` (shardlog stores logs append-only).  A 400 is what senders drop
  rather than retry: the record can never succeed.
- ``bulk_response`` answers every item in request order, ``status`` 201 and ``result: created`` for a
  stored one; ``errors`` is true when any item failed.

Document fields (Elastic Common Schema, as Filebeat and Vector write it) -> record fields; the rest
of the mapping is ``storage.record``'s (nested objects flattened with dots, unknown keys -> metadata):

- ``@timestamp`` is the timestamp (``timestamp``, if also present, wins, as in storage.record);
- ``message`` is the message; a string ``log`` field (Fluent Bit's Docker input) is the message when
  there is none;
- ``log.level`` (flat or nested) is the level, unless a ``level`` field is present;
- ``host.name`` (flat or nested) becomes ``host``, the host field of DESIGN §7; the other ``host.*``
  fields stay in metadata under their dotted names;
- the source is ``source`` or ``service`` when they are plain values, else ``service.name``, else the
  index the action names (or the ``/{index}/_bulk`` path's), so every record has one.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from storage.errors import BadRequest

ACTIONS = ("index", "create", "delete", "update")
#: Actions followed by a second line (document or update body).
_WITH_BODY = frozenset(("index", "create", "update"))
#: ``_index`` of items when neither the action nor the path names one.
DEFAULT_INDEX = "shardlog"
#: Parsed action lines without an ``_id`` are cached: shippers repeat the same one for every document.
_ACTION_CACHE_MAX = 256
_ACTION_CACHE_MAX_LINE_BYTES = 512
#: raw action line (as sent, ``\r`` included) -> (op, _index)
_action_cache: dict[bytes, tuple[str, str | None]] = {}

_CREATED = 201
_BAD_ITEM = 400
_SCALARS = (str, int, float, bool)


@dataclass
class BulkRequest:
    """A parsed bulk body.  ``items`` are the answer's items, one per action in order, already filled
    in: a success for each action with a usable document (patched by ``bulk_response`` if
    normalization rejects its record), the error for the others.  ``positions[k]`` is the index in
    ``items`` of ``records[k]``.  Building the answer while parsing keeps the per-document work to
    one pass (the coordinator runs this for every shipped record)."""

    items: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    #: raw records for Service.ingest, one per item that has a usable document
    records: list[dict[str, Any]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    #: True when every index/create action carries an ``_id`` (a resend is then recognisable)
    all_ids: bool = True
    #: True when some item already failed while parsing
    errors: bool = False


def _bad_line(number: int, problem: str) -> BadRequest:
    return BadRequest(f"bulk line {number}: {problem}; an action line must be one of "
                      '{"index": {...}}, {"create": {...}}, {"delete": {...}}, {"update": {...}}, followed by '
                      "its document on the next line for index and create")


def _parse_action(line: bytes, number: int) -> tuple[str, str | None, str | None]:
    """(op, _index, _id) of one action line (``\\r`` and surrounding blanks allowed); BadRequest when it
    is not an action."""
    try:
        action = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise _bad_line(number, f"not valid JSON ({exc})") from None
    if not isinstance(action, dict) or len(action) != 1:
        raise _bad_line(number, "expected an object with exactly one action")
    op, meta = next(iter(action.items()))
    if op not in ACTIONS:
        raise _bad_line(number, f"unknown action {op[:40]!r}")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise _bad_line(number, f"the metadata of {op!r} must be an object")
    index = meta.get("_index")
    if index is not None and not isinstance(index, str):
        raise _bad_line(number, "_index must be a string")
    doc_id = meta.get("_id")
    if doc_id is not None:
        if not isinstance(doc_id, _SCALARS) or isinstance(doc_id, bool):
            raise _bad_line(number, "_id must be a string")
        doc_id = str(doc_id)
    elif len(_action_cache) < _ACTION_CACHE_MAX and len(line) <= _ACTION_CACHE_MAX_LINE_BYTES:
        _action_cache[line] = (op, index)
    return op, index, doc_id


def map_document(doc: dict[str, Any], index: str) -> dict[str, Any]:
    """An ECS-style source document -> a raw record for storage.record (edits ``doc`` in place)."""
    # @timestamp -> timestamp (the same precedence as storage.record, under the canonical name)
    if "@timestamp" in doc and "timestamp" not in doc:
        doc["timestamp"] = doc.pop("@timestamp")
    if "message" not in doc and "msg" not in doc and "_msg" not in doc and type(doc.get("log")) is str:
        doc["message"] = doc.pop("log")
    # log.level, nested or flat, unless a level field says otherwise
    if "level" not in doc and "severity" not in doc:
        log = doc.get("log")
        if type(log) is dict and "level" in log and isinstance(log["level"], _SCALARS):
            doc["level"] = log.pop("level")
            if not log:
                del doc["log"]
        elif "log.level" in doc and isinstance(doc["log.level"], _SCALARS):
            doc["level"] = doc.pop("log.level")
    # host.name -> host; the host object's other fields stay as host.<field>
    host = doc.get("host")
    if type(host) is dict:
        name = host.get("name")
        if name is not None and isinstance(name, _SCALARS):
            del doc["host"]
            for key, value in host.items():
                if key != "name":
                    doc[f"host.{key}"] = value
            doc["host"] = name
    elif host is None and "host.name" in doc:
        doc["host"] = doc.pop("host.name")
    # the source: a plain source/service, else service.name, else the index
    source, service = doc.get("source"), doc.get("service")
    if not isinstance(source, _SCALARS) and not isinstance(service, _SCALARS):
        if source is None:
            if type(service) is dict and isinstance(service.get("name"), _SCALARS):
                doc["source"] = service.pop("name")
                if not service:
                    del doc["service"]
            elif "service.name" in doc and isinstance(doc["service.name"], _SCALARS):
                doc["source"] = doc.pop("service.name")
            else:
                doc["source"] = index
    return doc


def _error_item(op: str, index: str, doc_id: str, kind: str, reason: str) -> dict[str, dict[str, Any]]:
    return {op: {"_index": index, "_id": doc_id, "status": _BAD_ITEM, "error": {"type": kind, "reason": reason}}}


def parse_bulk(body: bytes, default_index: str | None = None) -> BulkRequest:
    """A bulk body -> answer items and raw records (see the module docstring).  BadRequest for a line
    that cannot be an action, or a body with no action at all."""
    request = BulkRequest()
    items, records, positions = request.items, request.records, request.positions
    lines = body.split(b"\n")
    fallback_index = default_index or DEFAULT_INDEX
    # Generated ids: a random prefix per request and the item number (12 + 8 characters).
    prefix = secrets.token_urlsafe(9)
    loads, cached_action = orjson.loads, _action_cache.get
    add_item, add_record, add_position = items.append, records.append, positions.append
    all_ids = True
    count = len(lines)
    number = 0
    while number < count:
        line = lines[number]
        number += 1
        cached = cached_action(line)
        if cached is not None:
            op, index, doc_id = cached[0], cached[1], None
        elif not line.strip():
            continue  # blank lines between actions
        else:
            op, index, doc_id = _parse_action(line, number)
        index = index or fallback_index
        item_id = doc_id if doc_id is not None else f"{prefix}{len(items):08x}"
        if op not in _WITH_BODY:  # delete
            items.append(_error_item(op, index, item_id, "illegal_argument_exception", "shardlog stores logs "
                                     "append-only; delete is not supported (use retention to drop old logs)"))
            continue
        source = lines[number] if number < count else b""
        number += 1
        if op == "update":
            items.append(_error_item(op, index, item_id, "illegal_argument_exception", "shardlog stores logs "
                                     "append-only; update is not supported (send the record again with index or "
                                     "create)"))
            continue
        if doc_id is None:
            all_ids = False
        try:
            doc = loads(source)
        except orjson.JSONDecodeError as exc:
            if source.strip():
                reason, kind = f"failed to parse the document on bulk line {number}: {exc}", "mapper_parsing_exception"
            else:
                reason = (f"bulk line {number - 1}: the {op} action has no document after it; send each document "
                          "on the line after its action")
                kind = "action_request_validation_exception"
            items.append(_error_item(op, index, item_id, kind, reason))
            continue
        if type(doc) is not dict:
            items.append(_error_item(op, index, item_id, "mapper_parsing_exception", f"the document on bulk line "
                                     f"{number} is not a JSON object; send one object per index/create action"))
            continue
        add_position(len(items))
        add_item({op: {"_index": index, "_id": item_id, "_version": 1, "result": "created", "status": _CREATED}})
        add_record(map_document(doc, index))
    if not items:
        raise BadRequest("bulk body has no actions; send NDJSON action lines, each index/create followed by its "
                         "document")
    request.errors = len(positions) != len(items)
    request.all_ids = all_ids
    return request


def bulk_response(request: BulkRequest, rejected: Mapping[int, str], took_ms: int) -> dict[str, Any]:
    """The Elasticsearch bulk answer: one item per action in order.  ``rejected`` maps a record
    position to why normalization refused it; those items become 400s (``request.items`` is updated)."""
    items = request.items
    for position, reason in rejected.items():
        index = request.positions[position]
        op, item = next(iter(items[index].items()))
        items[index] = _error_item(op, item["_index"], item["_id"], "mapper_parsing_exception", reason)
    return {"took": took_ms, "errors": request.errors or bool(rejected), "items": items}
