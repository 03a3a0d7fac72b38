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
- Everything else is answered per item, so the rest of the request is stored: an ``index`` / ``create``
  without a document gets status 400 (``action_request_validation_exception``); ``delete`` and
  ``update`` get status 400 with ``illegal_argument_exception`` (shardlog stores logs append-only).
  Documents are not parsed here: they travel as the JSON texts they are (``BulkRequest.documents``)
  to whoever parses records (``coordinator.ingest``: the shards or the coordinator), and one that is
  not a JSON object, or that record normalization rejects, comes back as a rejection that
  ``bulk_response`` turns into status 400 ``mapper_parsing_exception`` naming its bulk line.  A 400 is
  what senders drop rather than retry: the record can never succeed.
- ``bulk_response`` answers every item in request order, ``status`` 201 and ``result: created`` for a
  stored one; ``errors`` is true when any item failed.

Document fields (Elastic Common Schema) map to record fields by ``storage.ecs.map_document``.
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
    in: a success for each action with a document (patched by ``bulk_response`` if parsing or
    normalization rejects it), the error for the others.  ``positions[k]`` is the index in ``items``
    of ``documents[k]``.  Building the answer while parsing keeps the per-document work to
    one pass (the coordinator runs this for every shipped record)."""

    items: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    #: the source documents of the index/create items, as sent (stripped JSON texts, unparsed)
    documents: list[bytes] = field(default_factory=list)
    #: each document's index (the fallback source, storage.ecs) and bulk line number
    indexes: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
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


def _error_item(op: str, index: str, doc_id: str, kind: str, reason: str) -> dict[str, dict[str, Any]]:
    return {op: {"_index": index, "_id": doc_id, "status": _BAD_ITEM, "error": {"type": kind, "reason": reason}}}


def parse_bulk(body: bytes, default_index: str | None = None) -> BulkRequest:
    """A bulk body -> answer items and unparsed documents (see the module docstring).  BadRequest for a line
    that cannot be an action, or a body with no action at all."""
    request = BulkRequest()
    items, positions = request.items, request.positions
    lines = body.split(b"\n")
    fallback_index = default_index or DEFAULT_INDEX
    # Generated ids: a random prefix per request and the item number (12 + 8 characters).
    prefix = secrets.token_urlsafe(9)
    cached_action = _action_cache.get
    add_item, add_position = items.append, positions.append
    add_document, add_index, add_line = request.documents.append, request.indexes.append, request.lines.append
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
        source = source.strip()
        if not source:
            items.append(_error_item(op, index, item_id, "action_request_validation_exception",
                                     f"bulk line {number - 1}: the {op} action has no document after it; send each "
                                     "document on the line after its action"))
            continue
        add_position(len(items))
        add_item({op: {"_index": index, "_id": item_id, "_version": 1, "result": "created", "status": _CREATED}})
        add_document(source)
        add_index(index)
        add_line(number)
    if not items:
        raise BadRequest("bulk body has no actions; send NDJSON action lines, each index/create followed by its "
                         "document")
    request.errors = len(positions) != len(items)
    request.all_ids = all_ids
    return request


def bulk_response(request: BulkRequest, rejected: Mapping[int, str], took_ms: int) -> dict[str, Any]:
    """The Elasticsearch bulk answer: one item per action in order.  ``rejected`` maps a document's
    position to why parsing or normalization refused it; those items become 400s naming the bulk
    line (``request.items`` is updated)."""
    items = request.items
    for position, reason in rejected.items():
        index = request.positions[position]
        op, item = next(iter(items[index].items()))
        items[index] = _error_item(op, item["_index"], item["_id"], "mapper_parsing_exception",
                                   f"the document on bulk line {request.lines[position]}: {reason}")
    return {"took": took_ms, "errors": request.errors or bool(rejected), "items": items}
