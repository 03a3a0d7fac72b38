"""JSON texts -> normalized records: the parse-and-validate step of ingest, in one place.

With ``parse_in = shards`` (the default) the coordinator routes JSON texts to the shards unparsed —
the lines of a JSON-lines request, Elasticsearch bulk documents (mapped from ECS here, with
``ecs_indexes``), and records it parsed itself from Loki, text or syslog, written back as JSON —
and each shard runs ``normalize_lines`` on its share.  The coordinator's own parsing (``parse_in =
coordinator``, hooks) words JSON errors with ``json_error`` and maps ECS documents with ``ecs_raws``,
so both places reject the same lines with the same reasons.  ``replay_lines`` rebuilds a WAL entry
stored as texts.

Pure: no I/O, no clocks (the caller passes ``now_ns``, the ingest time of the request).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

import orjson

from storage.ecs import map_document
from storage.errors import BadRecord, BadRequest
from storage.record import DEFAULT_LIMITS, Limits, normalize_record


_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def json_error(exc: Exception) -> str:
    """The rejection reason of a line that is not JSON."""
    return f"not valid JSON: {exc}; send one JSON object per line"


def normalize_lines(lines: Sequence[bytes | str], numbers: Sequence[int], *, id_base: int, now_ns: int,
                    limits: Limits = DEFAULT_LIMITS, ecs_indexes: Sequence[str] | None = None,
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[bytes | str]]:
    """(records, rejections, texts) for JSON texts that are stripped and not blank.

    ``numbers[i]`` is the request's line number of ``lines[i]``; the record of that line gets the
    id ``id_base + numbers[i]``, so ids follow the lines of the request and stay unique across
    shards.  A rejection is ``{"line": number, "reason": text}``, in line order.  ``texts[k]`` is the
    JSON text ``records[k]`` normalizes from (its line; for ECS documents, the mapped document),
    what a WAL keeps to replay the batch.  With ``ecs_indexes`` the lines are Elastic Common Schema
    documents, mapped first (``storage.ecs``) with ``ecs_indexes[i]`` as the fallback source."""
    if len(lines) != len(numbers) or (ecs_indexes is not None and len(ecs_indexes) != len(lines)):
        raise BadRequest(f"{len(lines)} lines but {len(numbers)} line numbers"
                         + (f" and {len(ecs_indexes)} indexes" if ecs_indexes is not None else "")
                         + "; send one of each per line")
    if numbers and not (_I64_MIN <= id_base + min(numbers) and id_base + max(numbers) <= _I64_MAX):
        raise BadRequest(f"ids id_base + line number ({id_base} + {min(numbers)}..{max(numbers)}) must be "
                         "64-bit signed integers")
    loads = orjson.loads
    records: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    texts: list[bytes | str] = []
    for index, (line, number) in enumerate(zip(lines, numbers)):
        try:
            raw = loads(line)
            if ecs_indexes is not None and type(raw) is dict:
                line = orjson.dumps(map_document(raw, ecs_indexes[index]))
            record = normalize_record(raw, now_ns=now_ns, limits=limits)
        except orjson.JSONDecodeError as exc:
            rejected.append({"line": number, "reason": json_error(exc)})
            continue
        except (BadRecord, orjson.JSONEncodeError) as exc:
            rejected.append({"line": number, "reason": getattr(exc, "message", str(exc))})
            continue
        record["id"] = id_base + number
        records.append(record)
        texts.append(line)
    return records, rejected, texts


def ecs_raws(documents: Sequence[bytes], indexes: Sequence[str], first: int = 1,
             ) -> tuple[list[Any], list[int], list[dict[str, Any]]]:
    """ECS documents parsed and mapped but not normalized (for the coordinator, which runs hooks
    before normalizing): (raw records, their numbers from ``first``, rejections of unparsable ones,
    worded as ``normalize_lines`` words them)."""
    raws: list[Any] = []
    numbers: list[int] = []
    rejected: list[dict[str, Any]] = []
    for number, (document, index) in enumerate(zip(documents, indexes), start=first):
        try:
            raw = orjson.loads(document)
        except orjson.JSONDecodeError as exc:
            rejected.append({"line": number, "reason": json_error(exc)})
            continue
        raws.append(map_document(raw, index) if type(raw) is dict else raw)
        numbers.append(number)
    return raws, numbers, rejected


def replay_lines(entry: Any) -> list[dict[str, Any]]:
    """The records of a WAL entry stored as JSON lines (``storage.layout.wal_lines_value``), as they
    were when acknowledged: the same lines, line numbers, ingest time and limits give the same
    records.  Every line was accepted once, so none is dropped here: one that this code rejects
    (only possible after an upgrade changed the rules) is kept as a WARN record whose message is
    the line and whose ``_replay_rejected`` metadata says why.  ValueError for a malformed entry."""
    if not isinstance(entry, dict) or not {"lines", "numbers", "id_base", "now_ns", "limits"} <= entry.keys():
        raise ValueError("a JSON-lines WAL entry must be a map with lines, numbers, id_base, now_ns and limits")
    lines, numbers, id_base, now_ns = entry["lines"], entry["numbers"], entry["id_base"], entry["now_ns"]
    if not isinstance(lines, list) or not isinstance(numbers, list) or not all(type(n) is int for n in numbers) \
            or type(id_base) is not int or type(now_ns) is not int:
        raise ValueError("a JSON-lines WAL entry has lines, numbers, id_base or now_ns of the wrong type")
    try:
        records, rejected, _ = normalize_lines(lines, numbers, id_base=id_base, now_ns=now_ns,
                                               limits=limits_from_wire(entry["limits"]))
    except BadRequest as exc:
        raise ValueError(exc.message) from None
    if not rejected:
        return records
    reasons = {r["line"]: r["reason"] for r in rejected}
    by_number = {record["id"] - id_base: record for record in records}
    out = []
    for line, number in zip(lines, numbers):
        record = by_number.get(number)
        if record is None:
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
            record = {"ts_ns": now_ns, "level": "WARN", "message": text, "source": "", "tags": [],
                      "metadata": {"_replay_rejected": reasons[number]}, "thread_id": None, "request_id": None,
                      "user_id": None, "id": id_base + number}
        out.append(record)
    return out


def limits_to_wire(limits: Limits) -> dict[str, int]:
    return asdict(limits)


_LIMITS_SEEN: dict[tuple[tuple[str, Any], ...], Limits] = {}


def limits_from_wire(value: Any) -> Limits:
    """``Limits`` from its wire form (a map of its fields); BadRequest names what is wrong."""
    if not isinstance(value, dict):
        raise BadRequest(f"limits must be a map of limit names to integers, got {type(value).__name__}")
    try:
        key = tuple(sorted(value.items()))
        found = _LIMITS_SEEN.get(key)
    except TypeError:  # names that are not all strings, unhashable values
        raise BadRequest(f"limits must map limit names to integers, got {value!r:.200}") from None
    if found is not None:
        return found
    try:
        found = Limits(**value)
    except TypeError as exc:  # an unknown name
        raise BadRequest(f"limits: {exc}; known names: {sorted(asdict(DEFAULT_LIMITS))}") from None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if len(_LIMITS_SEEN) >= 16:  # one or two in practice: the coordinator's config
        _LIMITS_SEEN.clear()
    _LIMITS_SEEN[key] = found
    return found
