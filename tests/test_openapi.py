"""The OpenAPI document: valid, complete, and what the server publishes."""

from __future__ import annotations

import aiohttp
import yaml
from openapi_spec_validator import validate

from butler.app import build_router
from butler.apps import AppService
from butler.config import ENDPOINT_FLAGS, parse_config
from butler.config.settings import CertificateSettings, EngineSettings, QrsSettings, StartTaskFilter
from butler.http.docs import ApiDocument, load_openapi
from butler.kvstore.memory import MemoryStore
from butler.qlik.qrs import QrsClient
from butler.routes import RouteContext
from butler.task_start import TaskStarter
from tests.conftest import StartButler, base_config


def test_document_is_valid_openapi() -> None:
    validate(load_openapi())  # type: ignore[arg-type]


def test_every_route_is_documented_and_every_operation_served(tmp_path: object) -> None:
    every_flag = base_config(**dict.fromkeys(ENDPOINT_FLAGS, True))
    settings = parse_config(every_flag, base_dir=tmp_path)  # type: ignore[arg-type]
    document = ApiDocument(load_openapi())
    # Services need not work here, only exist, so that every route module registers its routes.
    qrs = QrsClient(QrsSettings(use_ssl=False), CertificateSettings())
    starter = TaskStarter(qrs, StartTaskFilter(), None)
    apps = AppService(EngineSettings(use_ssl=False), CertificateSettings(), starter)
    context = RouteContext(settings, key_values=MemoryStore(), task_starter=starter, apps=apps)
    router = build_router(context, document)
    registered = {(r.method, r.path) for r in router.routes if r.documented}
    assert registered == set(document.operations())
    for route in router.routes:
        if route.documented:
            operation = document.operation(route.method, route.path)
            assert operation is not None and operation.get("operationId"), route.path
            assert operation.get("responses"), route.path


async def test_served_documents(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler(base_config(butlerping=True))
    async with http.get(f"{base}/documentation/json") as response:
        assert response.status == 200
        served = await response.json()
    validate(served)
    # Only what this server has registered is published.
    assert set(served["paths"]) == {"/v4/butlerping", "/v2/butlerPing", "/v2/butlerping", "/health"}
    assert served["servers"] == [{"url": "/"}]
    async with http.get(f"{base}/documentation/yaml") as response:
        assert response.status == 200
        assert yaml.safe_load(await response.text()) == served


async def test_swagger_ui_works_offline(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler()
    async with http.get(f"{base}/documentation") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        page = await response.text()
    assert "http://" not in page and "https://" not in page  # no CDN
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert f"/documentation/static/{asset}" in page
        async with http.get(f"{base}/documentation/static/{asset}") as response:
            assert response.status == 200
            assert len(await response.read()) > 10_000
    for bad in ("..%2F..%2Fetc%2Fpasswd", ".hidden", "missing.js"):
        async with http.get(f"{base}/documentation/static/{bad}") as response:
            assert response.status == 404
