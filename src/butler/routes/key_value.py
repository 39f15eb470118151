"""Key-value store endpoints (``/v4/keyvalues...``, ``/v4/keylist``), over the key-value service."""

from __future__ import annotations

from butler.http.errors import HttpError
from butler.http.routing import TEXT_TYPE, ApiRequest, Reply, Route, json_reply
from butler.json_encoding import encode_json
from butler.kvstore import InvalidPair, check_pair
from butler.services import Services

MISSING = "Required parameter is missing"


def routes(services: Services) -> list[Route]:
    store = services.key_values
    if store is None:  # the endpoints are switched off
        return []

    def not_found(namespace: str, key: str) -> HttpError:
        return HttpError(400, f"Key '{key}' not found in namespace: {namespace}")

    async def list_namespaces(request: ApiRequest) -> Reply:
        return json_reply(await store.namespaces())

    async def get_value(request: ApiRequest) -> Reply:
        namespace, key = request.params["namespace"], request.query["key"]
        value = await store.get(namespace, key)
        if value is None:
            raise not_found(namespace, key)
        return json_reply({"namespace": namespace, "key": key, "value": value})

    async def key_exists(request: ApiRequest) -> Reply:
        namespace, key = request.params["namespace"], request.query["key"]
        value = await store.get(namespace, key)
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
        try:
            ttl = check_pair(namespace, key, body.get("ttl") or 0)
        except InvalidPair as exc:
            raise HttpError(400, exc.located("params" if exc.field == "namespace" else "body")) from None
        value = body.get("value")
        await store.set(namespace, key, value, ttl)
        answer = {"namespace": namespace, "key": key}
        if value is not None:
            answer["value"] = value
        return json_reply(answer | {"ttl": ttl}, 201)

    async def delete_pair(request: ApiRequest) -> Reply:
        namespace, key = request.params["namespace"], request.params["key"]
        if not key:
            raise HttpError(400, MISSING)
        if not await store.delete(namespace, key):
            raise not_found(namespace, key)
        return Reply(204)

    async def delete_namespace(request: ApiRequest) -> Reply:
        await store.drop(request.params["namespace"])
        return Reply(204)

    async def list_keys(request: ApiRequest) -> Reply:
        namespace = request.params["namespace"]
        keys = await store.keys(namespace)
        # Upstream answers this one as JSON text with a text/plain content type; kept for its callers.
        return Reply(
            200, encode_json({"namespace": namespace, "keys": [{"key": k} for k in keys]}), TEXT_TYPE
        )

    handlers = [
        ("GET", "/v4/keyvaluesnamespaces", list_namespaces),
        ("GET", "/v4/keyvalues/{namespace}", get_value),
        ("GET", "/v4/keyvalues/{namespace}/keyexists", key_exists),
        ("POST", "/v4/keyvalues/{namespace}", add_pair),
        ("DELETE", "/v4/keyvalues/{namespace}/{key}", delete_pair),
        ("DELETE", "/v4/keyvalues/{namespace}", delete_namespace),
        ("GET", "/v4/keylist/{namespace}", list_keys),
    ]
    return [Route(method, path, handler) for method, path, handler in handlers]
