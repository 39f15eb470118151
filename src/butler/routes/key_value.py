"""Key-value store endpoints (``/v4/keyvalues...``, ``/v4/keylist``), over the key-value service."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from butler.http.errors import HttpError
from butler.http.routing import TEXT_TYPE, ApiRequest, Reply, Route, encode_json, json_reply
from butler.kvstore import KeyValueError, KeyValueStore, StoreUnavailable
from butler.routes import RouteContext

MISSING = "Required parameter is missing"
T = TypeVar("T")


def routes(context: RouteContext) -> list[Route]:
    store = context.key_values

    def service() -> KeyValueStore:
        if store is None:  # only when the endpoints are off, and then these routes are not registered
            raise HttpError(503, "The key-value store is not available")
        return store

    async def call(operation: Awaitable[T]) -> T:
        try:
            return await operation
        except StoreUnavailable as exc:
            raise HttpError(503, str(exc)) from None
        except KeyValueError as exc:
            raise HttpError(400, str(exc)) from None

    def not_found(namespace: str, key: str) -> HttpError:
        return HttpError(400, f"Key '{key}' not found in namespace: {namespace}")

    async def list_namespaces(request: ApiRequest) -> Reply:
        return json_reply(await call(service().namespaces()))

    async def get_value(request: ApiRequest) -> Reply:
        namespace, key = request.params["namespace"], request.query["key"]
        value = await call(service().get(namespace, key))
        if value is None:
            raise not_found(namespace, key)
        return json_reply({"namespace": namespace, "key": key, "value": value})

    async def key_exists(request: ApiRequest) -> Reply:
        namespace, key = request.params["namespace"], request.query["key"]
        value = await call(service().get(namespace, key))
        if value is None:
            return json_reply({"keyExists": False, "keyValue": {}})
        return json_reply(
            {"keyExists": True, "keyValue": {"namespace": namespace, "key": key, "value": value}}
        )

    async def add_pair(request: ApiRequest) -> Reply:
        namespace, body = request.params["namespace"], request.body
        key = body.get("key")
        if not key:
            raise HttpError(400, MISSING)
        ttl = int(body.get("ttl", 0) or 0)
        value = body.get("value")
        await call(service().set(namespace, key, value, ttl))
        answer = {"namespace": namespace, "key": key}
        if value is not None:
            answer["value"] = value
        return json_reply(answer | {"ttl": ttl}, 201)

    async def delete_pair(request: ApiRequest) -> Reply:
        namespace, key = request.params["namespace"], request.params["key"]
        if not key:
            raise HttpError(400, MISSING)
        if not await call(service().delete(namespace, key)):
            raise not_found(namespace, key)
        return Reply(204)

    async def delete_namespace(request: ApiRequest) -> Reply:
        await call(service().drop(request.params["namespace"]))
        return Reply(204)

    async def list_keys(request: ApiRequest) -> Reply:
        namespace = request.params["namespace"]
        keys = await call(service().keys(namespace))
        # Upstream answers this one as JSON text with a text/plain content type; kept for its callers.
        return Reply(
            200, encode_json({"namespace": namespace, "keys": [{"key": k} for k in keys]}), TEXT_TYPE
        )

    return [
        Route("GET", "/v4/keyvaluesnamespaces", list_namespaces),
        Route("GET", "/v4/keyvalues/{namespace}", get_value),
        Route("GET", "/v4/keyvalues/{namespace}/keyexists", key_exists),
        Route("POST", "/v4/keyvalues/{namespace}", add_pair),
        Route("DELETE", "/v4/keyvalues/{namespace}/{key}", delete_pair),
        Route("DELETE", "/v4/keyvalues/{namespace}", delete_namespace),
        Route("GET", "/v4/keylist/{namespace}", list_keys),
    ]
