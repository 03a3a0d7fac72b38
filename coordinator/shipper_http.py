"""HTTP routes for log shippers that speak another store's API: Loki push and Elasticsearch bulk,
with the probes shippers send before they ship; and the field-name parameters of ``/insert/jsonline``.

This module owns the shipper-facing HTTP surface (DESIGN §8); the formats themselves are decoded by
the pure modules ``coordinator.loki`` and ``coordinator.esbulk``.  ``add_routes(app, api)`` registers
everything on ``coordinator.http.HttpApi``'s application, reusing its body reading (size limit, gzip /
deflate / br undone by aiohttp), bearer-token middleware and ``Service``.  It guarantees:

- Status codes that shippers' retry logic handles correctly: success is 204 (Loki) or 200 with
  per-item statuses (bulk); a body that can never succeed is a 4xx (400 bad body, 413-style limits
  as 400 with the limit named), never a 5xx or 429, which senders retry forever; overload is 429 and
  an unavailable shard 503, both with ``Retry-After``, never a 4xx, which senders drop.
- Loki: entries rejected one by one (a message over the size limit, a date too far ahead) do not
  stop the others from being stored; the push is then answered 400 naming the stream, the entry and
  the reason, as Loki itself answers a partly rejected push (Promtail logs it and does not resend).
- Elasticsearch: every answer of these routes, errors included, carries
  ``X-Elastic-Product: Elasticsearch``, which the official clients (7.14+) require before they talk
  to a server.  ``GET /`` reports version ``ES_VERSION``; the ILM, template, ingest pipeline, data
  stream and nodes endpoints are stubs that accept what shippers install and report it as present,
  so their setup steps pass; nothing of it changes how records are stored.
- Retries are recognised without the sender's help where the format allows: a request with an
  ``Idempotency-Key`` header is stored once per key (DESIGN §3); without one, a Loki push is keyed by a
  hash of its body (a resent batch is byte-identical, and Loki itself drops an exact duplicate
  entry), and so is a bulk request whose every document has an ``_id`` (Elasticsearch would
  overwrite those documents rather than store them twice).  Bulk requests with generated ids are not
  keyed: Elasticsearch stores those twice too.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from coordinator import esbulk, loki
from storage.errors import BadRequest, ShardlogError

if TYPE_CHECKING:
    from coordinator.http import HttpApi
    from coordinator.service import Service

log = logging.getLogger("shardlog.http")

#: The Elasticsearch version ``GET /`` reports.  8.x makes Vector (``api_version: auto``) and Beats
#: use the 8.x bulk dialect (no ``_type``, ``create`` for data streams).
ES_VERSION = "8.11.0"
ES_HEADERS = {"X-Elastic-Product": "Elasticsearch"}
#: Rejections listed in a Loki 400 answer; the count of all of them is always given.
MAX_LISTED_REJECTIONS = 10

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, api: "HttpApi") -> None:
    """Register the Loki push route, the Elasticsearch bulk routes and their probes on ``app``."""
    routes = ShipperRoutes(api)
    app.router.add_post("/loki/api/v1/push", routes.loki_push)
    for path in ("/_bulk", "/{index}/_bulk"):
        app.router.add_post(path, routes.bulk)
        app.router.add_put(path, routes.bulk)
    app.router.add_get("/", routes.es_root)  # HEAD / too (aiohttp answers HEAD with the GET handler)
    app.router.add_get("/_license", routes.es_license)
    app.router.add_get("/_xpack", routes.es_xpack)
    app.router.add_get("/_cluster/health", routes.es_cluster_health)
    app.router.add_get("/_cluster/health/{index}", routes.es_cluster_health)
    app.router.add_get("/_nodes", routes.es_nodes)
    app.router.add_get("/_nodes/{rest:.*}", routes.es_nodes)
    # Named resources shippers install at start: GET/HEAD says it exists, PUT/POST/DELETE acknowledge.
    for prefix in ("/_ilm/policy", "/_index_template", "/_template", "/_component_template",
                   "/_ingest/pipeline", "/_data_stream", "/_alias"):
        app.router.add_get(prefix, routes.es_resource)
        app.router.add_get(prefix + "/{name}", routes.es_resource)
        for method in ("PUT", "POST", "DELETE"):
            app.router.add_route(method, prefix + "/{name}", routes.es_acknowledge)


def _es_json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json",
                        headers={**ES_HEADERS, **(headers or {})})


def _es_error(exc: ShardlogError) -> web.Response:
    """An error in Elasticsearch's shape, with the status and Retry-After the HTTP API gives it."""
    kind = {"overloaded": "es_rejected_execution_exception", "shard_unavailable": "unavailable_shards_exception"
            }.get(exc.code, "illegal_argument_exception" if exc.http_status < 500 else "exception")
    headers = {}
    if exc.retryable:
        retry = exc.details.get("retry_after_s") if isinstance(exc.details, dict) else None
        headers["Retry-After"] = str(int(retry or 1))
    cause = {"type": kind, "reason": exc.message}
    return _es_json({"error": {"root_cause": [cause], **cause}, "status": exc.http_status}, exc.http_status, headers)


def _es_endpoint(method: Callable[["ShipperRoutes", web.Request], Awaitable[web.Response]],
                 ) -> Callable[["ShipperRoutes", web.Request], Awaitable[web.Response]]:
    """Answer ShardlogErrors in Elasticsearch's shape with the product header (the middleware's
    generic JSON error would make the official clients refuse the server)."""
    async def wrapper(self: "ShipperRoutes", request: web.Request) -> web.Response:
        try:
            return await method(self, request)
        except ShardlogError as exc:
            return _es_error(exc)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _body_key(kind: str, request: web.Request, body: bytes) -> str:
    return f"{kind}:{hashlib.sha256(body).hexdigest()}:{request.path}"


class ShipperRoutes:
    """The handlers; ``api`` is the HttpApi whose body reader and Service they use."""

    def __init__(self, api: "HttpApi") -> None:
        self.api = api
        self.service: Service = api.service
        self.node_name = socket.gethostname()
        #: stable for the daemon's life, as a cluster's uuid is
        self.cluster_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"shardlog:{self.service.data_dir}").hex[:22]

    # --- Loki ---------------------------------------------------------------------------------------

    async def loki_push(self, request: web.Request) -> web.Response:
        """``POST /loki/api/v1/push``: 204 when every entry was stored."""
        body = await self.api._body(request)
        push = loki.decode_push(body, request.headers.get("Content-Type", ""),
                                max_decompressed_bytes=self.api.max_body_bytes)
        if not push.records:
            return web.Response(status=204)
        key = request.headers.get("Idempotency-Key") or _body_key("loki", request, body)
        result = await self.service.ingest(push.records, idempotency_key=key, json_native=True)
        rejected = result["rejected"]
        if not rejected:
            return web.Response(status=204)
        listed = "; ".join(f"{push.locate(r['line'] - 1)}: {r['reason']}" for r in rejected[:MAX_LISTED_REJECTIONS])
        more = f"; and {len(rejected) - MAX_LISTED_REJECTIONS} more" if len(rejected) > MAX_LISTED_REJECTIONS else ""
        text = (f"{len(rejected)} of {len(push.records)} entries were rejected and not stored (the other "
                f"{result['accepted']} were stored): {listed}{more}")
        return web.Response(status=400, text=text)

    # --- Elasticsearch bulk ---------------------------------------------------------------------------

    @_es_endpoint
    async def bulk(self, request: web.Request) -> web.Response:
        """``POST /_bulk``, ``POST /{index}/_bulk``: 200 with one status per action."""
        started = time.perf_counter()
        body = await self.api._body(request)
        parsed = esbulk.parse_bulk(body, request.match_info.get("index"))
        rejected: dict[int, str] = {}
        if parsed.documents:
            key = request.headers.get("Idempotency-Key")
            if key is None and parsed.all_ids:
                key = _body_key("es-bulk", request, body)
            result = await self.service.ingest_documents(parsed.documents, parsed.indexes, idempotency_key=key)
            # documents are numbered from 1 in the order given
            rejected = {r["line"] - 1: r["reason"] for r in result["rejected"]}
        took_ms = int((time.perf_counter() - started) * 1000)
        return _es_json(esbulk.bulk_response(parsed, rejected, took_ms))

    # --- Elasticsearch probes -------------------------------------------------------------------------

    @_es_endpoint
    async def es_root(self, request: web.Request) -> web.Response:
        return _es_json({
            "name": self.node_name,
            "cluster_name": "shardlog",
            "cluster_uuid": self.cluster_uuid,
            "version": {
                "number": ES_VERSION,
                "build_flavor": "default",
                "build_type": "shardlog",
                "build_hash": "shardlog",
                "build_date": "2023-11-04T10:04:57.184859352Z",
                "build_snapshot": False,
                "lucene_version": "9.8.0",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0",
            },
            "tagline": "You Know, for Search",
        })

    @_es_endpoint
    async def es_license(self, request: web.Request) -> web.Response:
        return _es_json({"license": {"status": "active", "uid": self.cluster_uuid, "type": "basic",
                                     "issue_date": "2023-11-04T00:00:00.000Z", "issue_date_in_millis": 1699056000000,
                                     "max_nodes": 1000, "max_resource_units": None, "issued_to": "shardlog",
                                     "issuer": "elasticsearch", "start_date_in_millis": -1}})

    @_es_endpoint
    async def es_xpack(self, request: web.Request) -> web.Response:
        return _es_json({"build": {"hash": "shardlog", "date": "2023-11-04T10:04:57.184859352Z"},
                         "license": {"uid": self.cluster_uuid, "type": "basic", "mode": "basic", "status": "active"},
                         "features": {"ilm": {"available": True, "enabled": True},
                                      "monitoring": {"available": False, "enabled": False}},
                         "tagline": "You know, for X"})

    @_es_endpoint
    async def es_cluster_health(self, request: web.Request) -> web.Response:
        up = [slot.up for slot in self.service.supervisor.slots]
        status = "green" if all(up) else ("yellow" if any(up) else "red")
        return _es_json({"cluster_name": "shardlog", "status": status, "timed_out": False, "number_of_nodes": 1,
                         "number_of_data_nodes": 1, "active_primary_shards": sum(up), "active_shards": sum(up),
                         "relocating_shards": 0, "initializing_shards": 0, "unassigned_shards": len(up) - sum(up),
                         "delayed_unassigned_shards": 0, "number_of_pending_tasks": 0, "number_of_in_flight_fetch": 0,
                         "task_max_waiting_in_queue_millis": 0,
                         "active_shards_percent_as_number": 100.0 * sum(up) / max(1, len(up))})

    @_es_endpoint
    async def es_nodes(self, request: web.Request) -> web.Response:
        return _es_json({"_nodes": {"total": 1, "successful": 1, "failed": 0}, "cluster_name": "shardlog",
                         "nodes": {self.cluster_uuid: {"name": self.node_name, "version": ES_VERSION,
                                                       "roles": ["data", "ingest", "master"],
                                                       "http": {"publish_address": request.host}}}})

    @_es_endpoint
    async def es_resource(self, request: web.Request) -> web.Response:
        """GET/HEAD of an ILM policy, template, pipeline, data stream or alias: it exists (a minimal
        body in the shape Elasticsearch answers each with)."""
        name = request.match_info.get("name", "")
        path = request.path
        if path.startswith("/_ilm/policy"):
            policy = {"version": 1, "modified_date": "2023-11-04T00:00:00.000Z",
                      "policy": {"phases": {"hot": {"min_age": "0ms", "actions": {}}}}}
            return _es_json({name or "shardlog": policy})
        if path.startswith("/_index_template"):
            return _es_json({"index_templates": [{"name": name or "shardlog", "index_template": {
                "index_patterns": [f"{name or 'shardlog'}*"], "composed_of": [], "data_stream": {}}}]})
        if path.startswith("/_component_template"):
            return _es_json({"component_templates": [{"name": name or "shardlog",
                                                      "component_template": {"template": {}}}]})
        if path.startswith("/_data_stream"):
            return _es_json({"data_streams": [{"name": name or "shardlog", "status": "GREEN",
                                               "timestamp_field": {"name": "@timestamp"}, "indices": []}]})
        if path.startswith("/_template"):
            return _es_json({name or "shardlog": {"order": 0, "index_patterns": [f"{name or 'shardlog'}*"],
                                                  "settings": {}, "mappings": {}, "aliases": {}}})
        if path.startswith("/_ingest/pipeline"):
            return _es_json({name or "shardlog": {"description": "accepted by shardlog; not applied",
                                                  "processors": []}})
        return _es_json({})  # /_alias

    @_es_endpoint
    async def es_acknowledge(self, request: web.Request) -> web.Response:
        """PUT/POST/DELETE of a named resource: acknowledged (the body is read and discarded)."""
        await self.api._body(request)
        return _es_json({"acknowledged": True})


# --- /insert/jsonline field names -------------------------------------------------------------------------

#: query parameter -> the record field it names (VictoriaLogs' names for the first two)
FIELD_PARAMETERS: dict[str, str] = {"_msg_field": "message", "_time_field": "timestamp", "_level_field": "level"}
#: A parameter lists at most this many candidate names ("_msg_field=message,msg,log").
MAX_FIELD_NAMES = 16
#: Where the value a renamed field displaces is kept: ``message.original`` etc. (metadata).
DISPLACED_SUFFIX = ".original"


def field_renames(query: Mapping[str, str]) -> list[tuple[str, tuple[str, ...]]]:
    """``[(record field, candidate names), ...]`` from the query parameters of FIELD_PARAMETERS; each
    parameter is a comma-separated list of names, the first present in a line wins, and a dotted
    name reaches into nested objects (``_msg_field=log.message``).  Empty when none is given."""
    renames = []
    for parameter, target in FIELD_PARAMETERS.items():
        value = query.get(parameter)
        if not value:
            continue
        names = tuple(name.strip() for name in value.split(",") if name.strip())
        if len(names) > MAX_FIELD_NAMES:
            raise BadRequest(f"{parameter} lists {len(names)} field names; the limit is {MAX_FIELD_NAMES}")
        if names and names != (target,):
            renames.append((target, names))
    return renames


_MISSING = object()


def _take(raw: dict[str, Any], name: str) -> Any:
    """Remove and return field ``name`` of ``raw`` (a top-level key, else a dotted path into nested
    objects), or _MISSING."""
    value = raw.pop(name, _MISSING)
    if value is not _MISSING or "." not in name:
        return value
    parts = name.split(".")
    parent: Any = raw
    for part in parts[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
        if parent is None:
            return _MISSING
    return parent.pop(parts[-1], _MISSING) if isinstance(parent, dict) else _MISSING


def rename_fields(raws: list[Any], renames: list[tuple[str, tuple[str, ...]]]) -> None:
    """Apply ``field_renames`` to parsed JSON lines in place.  A line that already has the record
    field keeps that value under ``<field>.original`` instead of losing it."""
    for raw in raws:
        if type(raw) is not dict:
            continue  # normalization rejects it with its own reason
        for target, names in renames:
            for name in names:
                if name == target:
                    if raw.get(target) is not None:
                        break
                    continue
                value = _take(raw, name)
                if value is _MISSING or value is None:
                    continue
                displaced = raw.pop(target, None)
                if displaced is not None:
                    raw[target + DISPLACED_SUFFIX] = displaced
                raw[target] = value
                break


async def ingest_jsonl_renamed(service: "Service", lines: list[bytes], renames: list[tuple[str, tuple[str, ...]]],
                               *, idempotency_key: str | None) -> dict[str, Any]:
    """``Service.ingest_lines`` for JSON lines, with the field renames applied between parse and ingest."""
    raws, numbers, rejected = service.intake.parse_lines(lines, "jsonl", 1)
    rename_fields(raws, renames)
    return await service.ingest(raws, idempotency_key=idempotency_key, line_numbers=numbers, pre_rejected=rejected,
                                json_native=True)
