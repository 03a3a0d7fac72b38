"""The HTTP listener (aiohttp): DESIGN §8 endpoints over ``coordinator.service.Service``.

Status codes follow what shippers' retry logic expects: a permanently bad record is reported per
line inside a 200 (or the request gets a 4xx), overload is 429 with Retry-After, an unavailable shard
is 503 with Retry-After; never a 5xx for a client's bad input.  When a token is configured every
endpoint but /health requires ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from coordinator import alerts_http, shipper_http
from coordinator.service import Service
from storage.errors import BadRequest, ShardlogError

log = logging.getLogger("shardlog.http")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(exc: ShardlogError) -> web.Response:
    headers = {}
    retry = exc.details.get("retry_after_s") if isinstance(exc.details, dict) else None
    if exc.retryable:
        headers["Retry-After"] = str(int(retry or 1))
    return _json({"error": exc.to_dict()["code"], "message": exc.message}, exc.http_status, headers)


class HttpApi:
    def __init__(self, service: Service, *, token: str | None, max_body_bytes: int) -> None:
        self.service = service
        self.token = token
        self.max_body_bytes = max_body_bytes

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._middleware])
        app.router.add_post("/insert/jsonline", self.insert_jsonline)
        for path, handler in (("/api/v1/query", self.query), ("/api/v1/count", self.count),
                              ("/api/v1/aggregate", self.aggregate)):
            app.router.add_get(path, handler)
            app.router.add_post(path, handler)
        app.router.add_get("/api/v1/tail", self.tail)
        app.router.add_get("/api/v1/stats", self.stats)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        shipper_http.add_routes(app, self)  # Loki push, Elasticsearch bulk and their probes
        alerts_http.add_routes(app, self)  # /api/v1/alerts/...
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token and request.path != "/health":
            supplied = request.headers.get("Authorization", "")
            if not hmac.compare_digest(supplied.encode(), f"Bearer {self.token}".encode()):
                return _json({"error": "unauthorized", "message": "missing or wrong bearer token; send "
                              "'Authorization: Bearer <token>'"}, 401)
        try:
            return await handler(request)
        except ShardlogError as exc:
            return error_response(exc)
        except web.HTTPException:
            raise
        except Exception as exc:  # the daemon never crashes on a client's input
            log.exception("HTTP %s %s failed", request.method, request.path)
            return _json({"error": "internal", "message": f"internal error: {exc}"}, 500)

    async def _body(self, request: web.Request) -> bytes:
        """The request body, decompressed: aiohttp undoes Content-Encoding (gzip, deflate, br) itself
        while reading, and counts the client_max_size limit on the decompressed bytes."""
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(f"request body exceeds {self.max_body_bytes} bytes (max_body_bytes); send smaller "
                             "batches") from None
        except RequestPayloadError as exc:  # e.g. a body that claims gzip but is not
            raise BadRequest(f"request body cannot be read ({exc}); check Content-Encoding and Content-Length") \
                from None

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            ctype = request.content_type
            if ctype == "application/json":
                try:
                    body = orjson.loads(await self._body(request) or b"{}")
                except orjson.JSONDecodeError as exc:
                    raise BadRequest(f"JSON body is not valid: {exc}") from None
                if not isinstance(body, dict):
                    raise BadRequest("JSON body must be an object of parameters")
                params.update(body)
            else:
                params.update(dict(await request.post()))
        return params

    async def insert_jsonline(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        renames = shipper_http.field_renames(request.query)  # _msg_field, _time_field, _level_field
        lines = (await self._body(request)).split(b"\n")
        if renames:
            stored = shipper_http.ingest_jsonl_renamed(self.service, lines, renames, idempotency_key=key)
        else:
            stored = self.service.ingest_lines(lines, "jsonl", idempotency_key=key)
        del lines  # the service frees them once parsed, if nothing here holds them
        return _json(await stored)

    async def query(self, request: web.Request) -> web.Response:
        return _json(await self.service.query(await self._params(request)))

    async def count(self, request: web.Request) -> web.Response:
        return _json(await self.service.count(await self._params(request)))

    async def aggregate(self, request: web.Request) -> web.Response:
        return _json(await self.service.aggregate(await self._params(request)))

    async def stats(self, request: web.Request) -> web.Response:
        return _json(await self.service.stats())

    async def tail(self, request: web.Request) -> web.StreamResponse:
        logs = self.service.subscribe(dict(request.query))  # a bad filter is a 400, before the stream starts
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        async for log_json in logs:
            await response.write(orjson.dumps(log_json) + b"\n")
        return response

    async def metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return web.Response(body=await self.service.metrics_text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        up = [slot.up for slot in self.service.supervisor.slots]
        return _json({"ready": all(up), "shards_up": sum(up), "shards": len(up)}, 200 if all(up) else 503)
