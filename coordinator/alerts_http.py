"""HTTP endpoints of alerting (DESIGN §8 ``/api/v1/alerts/...``) over the ``alerts_*`` RPC ops.

    GET    /api/v1/alerts/rules                  -> {"rules": [rule + state, ...]}
    POST   /api/v1/alerts/rules[?replace=true]   body: a rule object, or {"rule": {...}, "replace": bool}
                                                 -> 201 the rule (200 when it replaced one)
    GET    /api/v1/alerts/rules/{name}           -> the rule with its state, 404 if unknown
    DELETE /api/v1/alerts/rules/{name}           -> {"removed": name}
    POST   /api/v1/alerts/rules/{name}/enable    -> the rule
    POST   /api/v1/alerts/rules/{name}/disable   -> the rule
    GET    /api/v1/alerts/history?since=&limit=  -> {"alerts": [...]} oldest first

The handlers only translate HTTP to the RPC ops (``api.service.handle_rpc``); errors are
``ShardlogError`` classes that ``HttpApi``'s middleware turns into their status codes (400 bad rule,
404 unknown rule), so the rules behave the same over HTTP, the CLI and the Python API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from storage.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from coordinator.http import HttpApi

PREFIX = "/api/v1/alerts"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise BadRequest(f"{name} {value!r} must be true or false")


def add_routes(app: web.Application, api: "HttpApi") -> None:
    """Register the alerting endpoints on ``app`` (called from ``HttpApi.app``)."""

    async def call(op: str, args: dict[str, Any]) -> Any:
        return await api.service.handle_rpc(op, args)

    async def list_rules(request: web.Request) -> web.Response:
        return _json(await call("alerts_list", {}))

    async def add_rule(request: web.Request) -> web.Response:
        body = await api._body(request)
        try:
            data = orjson.loads(body or b"null")
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON ({exc}); send a rule object such as "
                             '{"name": "errors", "query": "level:ERROR", "threshold": 10, "window": "5m"}') from None
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON rule object, e.g. "
                             '{"name": "errors", "query": "level:ERROR", "threshold": 10, "window": "5m"}')
        replace = _flag(request.query.get("replace", "false"), "replace")
        if isinstance(data.get("rule"), dict):  # the RPC's own shape
            replace = _flag(data.get("replace", replace), "replace")
            data = data["rule"]
        existed = any(rule["name"] == str(data.get("name", "")).strip()
                      for rule in (await call("alerts_list", {}))["rules"])
        rule = await call("alerts_add", {"rule": data, "replace": replace})
        return _json(rule, 200 if existed else 201)

    async def get_rule(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        for rule in (await call("alerts_list", {}))["rules"]:
            if rule["name"] == name:
                return _json(rule)
        raise NotFound(f"no alert rule named {name!r}; GET {PREFIX}/rules lists the rules")

    async def remove_rule(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await call("alerts_remove", {"name": name})
        return _json({"removed": name})

    async def enable_rule(request: web.Request) -> web.Response:
        return _json(await call("alerts_enable", {"name": request.match_info["name"]}))

    async def disable_rule(request: web.Request) -> web.Response:
        return _json(await call("alerts_disable", {"name": request.match_info["name"]}))

    async def history(request: web.Request) -> web.Response:
        args: dict[str, Any] = {}
        since = request.query.get("since")
        if since:
            args["since"] = since
        limit = request.query.get("limit")
        if limit is not None:
            if not limit.strip().isdigit():
                raise BadRequest(f"limit {limit!r} must be an integer from 1 to 100000")
            args["limit"] = int(limit)
        return _json(await call("alerts_history", args))

    app.router.add_get(f"{PREFIX}/rules", list_rules)
    app.router.add_post(f"{PREFIX}/rules", add_rule)
    app.router.add_get(f"{PREFIX}/rules/{{name}}", get_rule)
    app.router.add_delete(f"{PREFIX}/rules/{{name}}", remove_rule)
    app.router.add_post(f"{PREFIX}/rules/{{name}}/enable", enable_rule)
    app.router.add_post(f"{PREFIX}/rules/{{name}}/disable", disable_rule)
    app.router.add_get(f"{PREFIX}/history", history)
