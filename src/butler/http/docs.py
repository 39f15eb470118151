"""The OpenAPI document and the Swagger UI that shows it.

``openapi.yaml`` in this package is the API contract: besides being published at ``/documentation/json``
and ``/documentation/yaml``, it supplies each route's enable flag and the schemas its requests are
validated against, so the published document and the server cannot disagree. The published copy lists
only the routes this server has registered.

Swagger UI's files are served by Butler itself: Sense servers often have no internet access.
"""

from __future__ import annotations

import copy
import json
import mimetypes
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from swagger_ui_bundle import swagger_ui_path

from butler.auth import DEFAULT_TOKEN_HEADER
from butler.http.errors import HttpError
from butler.http.routing import JSON_TYPE, ApiRequest, Reply, Route
from butler.http.validation import Validator, object_schema, plain_string

_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Butler API</title>
  <link rel="stylesheet" href="/documentation/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="/documentation/static/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/documentation/static/swagger-ui-bundle.js"></script>
  <script src="/documentation/static/swagger-ui-standalone-preset.js"></script>
  <script>
    window.onload = function () {
      window.ui = SwaggerUIBundle({
        url: "/documentation/json",
        dom_id: "#swagger-ui",
        presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
        layout: "StandaloneLayout"
      });
    };
  </script>
</body>
</html>
"""

_METHODS = ("get", "put", "post", "delete", "patch")

#: Where the documentation pages are served; every path below it is one of them.
DOCS_PATH = "/documentation"


def load_openapi() -> dict[str, Any]:
    text = resources.files("butler").joinpath("openapi.yaml").read_text(encoding="utf-8")
    document: dict[str, Any] = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return document


class ApiDocument:
    """The OpenAPI document, its operations looked up by method and path."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        item = self.document.get("paths", {}).get(path)
        if item is None:
            return None
        operation: dict[str, Any] | None = item.get(method.lower())
        return operation

    def operations(self) -> list[tuple[str, str]]:
        """(METHOD, path) of every operation in the document."""
        return [
            (method.upper(), path)
            for path, item in self.document.get("paths", {}).items()
            for method in item
            if method in _METHODS
        ]

    def bind(self, route: Route) -> None:
        """Give a route its enable flag and request validators from its operation."""
        operation = self.operation(route.method, route.path)
        if operation is None:
            raise LookupError(f"{route.method} {route.path} is not in openapi.yaml")
        route.flag = operation.get("x-enable-flag")
        route.operation = operation.get("operationId")
        route.scope = operation.get("x-scope")
        route.session = bool(operation.get("x-session-cookie"))
        parameters = [self._resolve(p) for p in operation.get("parameters", [])]
        query = object_schema(parameters, "query")
        if query is not None:
            route.query_check = Validator("querystring", self._resolve_all(query))
        path = object_schema(parameters, "path")
        # The router only yields strings; plain string parameters need no check.
        if path is not None and not all(plain_string(p) for p in path["properties"].values()):
            route.params_check = Validator("params", self._resolve_all(path))
        body = operation.get("requestBody")
        if body is not None:
            content = self._resolve(body).get("content", {})
            media: dict[str, Any] = content.get("application/json") or next(iter(content.values()), {})
            route.body_check = Validator("body", self._resolve_all(media.get("schema", {})))

    def published(self, routes: list[Route], token_header: str = DEFAULT_TOKEN_HEADER) -> dict[str, Any]:
        """The document as served: only the registered routes, and the token header this Butler reads.

        The server URL is relative, so "Try it out" reaches the Butler that served the page whatever name,
        port or proxy the browser came through.
        """
        registered = {(r.method.lower(), r.path) for r in routes if r.documented}
        document = copy.deepcopy(self.document)
        paths: dict[str, Any] = {}
        for path, item in document.get("paths", {}).items():
            kept = {k: v for k, v in item.items() if k not in _METHODS or (k, path) in registered}
            if any(k in _METHODS for k in kept):
                paths[path] = kept
        document["paths"] = paths
        # Swagger UI shows every listed tag as a heading, even one whose operations are all switched off.
        used = {
            tag
            for item in paths.values()
            for k, op in item.items()
            if k in _METHODS
            for tag in op.get("tags", [])
        }
        document["tags"] = [tag for tag in document.get("tags", []) if tag["name"] in used]
        document["servers"] = [{"url": "/"}]
        # Swagger UI's "Authorize" sends the token in the header the scheme names.
        schemes = document.get("components", {}).get("securitySchemes", {})
        if "tokenHeader" in schemes:
            schemes["tokenHeader"]["name"] = token_header
        return document

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def _resolve_all(self, node: Any) -> Any:
        if isinstance(node, dict):
            node = self._resolve(node)
            return {k: self._resolve_all(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._resolve_all(v) for v in node]
        return node


class DocumentationSite:
    """Routes for ``/documentation`` (Swagger UI), ``/documentation/json`` and ``/documentation/yaml``."""

    def __init__(
        self, document: ApiDocument, routes: list[Route], token_header: str = DEFAULT_TOKEN_HEADER
    ) -> None:
        self._document = document
        self._routes = routes
        self._token_header = token_header
        self._static_dir = Path(str(swagger_ui_path))
        self._static_cache: dict[str, Reply] = {}

    def routes(self) -> list[Route]:
        pages = [
            (DOCS_PATH, self.page),
            (f"{DOCS_PATH}/json", self.json),
            (f"{DOCS_PATH}/yaml", self.yaml),
            (f"{DOCS_PATH}/static/{{file}}", self.static),
        ]
        return [Route("GET", path, handler, rate_limited=False, documented=False) for path, handler in pages]

    @cached_property
    def _published(self) -> dict[str, Any]:
        # Built on first use: the route list is complete by then, and start-up stays fast.
        return self._document.published(self._routes, self._token_header)

    async def page(self, request: ApiRequest) -> Reply:
        return Reply(200, _HTML.encode(), "text/html; charset=utf-8")

    async def json(self, request: ApiRequest) -> Reply:
        return Reply(200, json.dumps(self._published, indent=2).encode(), JSON_TYPE)

    async def yaml(self, request: ApiRequest) -> Reply:
        text = yaml.safe_dump(self._published, sort_keys=False, allow_unicode=True)
        return Reply(200, text.encode(), "application/x-yaml")

    async def static(self, request: ApiRequest) -> Reply:
        name = request.params["file"]
        cached = self._static_cache.get(name)
        if cached is not None:
            return cached
        # Only plain file names of the bundle; anything with a separator or dot-dot is not one of them.
        if "/" in name or "\\" in name or name.startswith(".") or not (self._static_dir / name).is_file():
            raise HttpError(404, f"No such file: {name}")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        reply = Reply(
            200,
            (self._static_dir / name).read_bytes(),
            content_type,
            {"Cache-Control": "public, max-age=86400"},
        )
        self._static_cache[name] = reply
        return reply
