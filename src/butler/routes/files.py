"""Files and folders for load scripts: ``/v4/filecopy``, ``/v4/filemove``, ``/v4/filedelete``,
``/v4/createdir``, ``/v4/createdirqvd`` and the old ``/v2/createDir``, ``/v2/createDirQVD``."""

from __future__ import annotations

import logging
from typing import Any

from butler.config import Settings
from butler.files import FileService
from butler.http.errors import HttpError
from butler.http.routing import ApiRequest, Reply, Route, json_reply
from butler.services import Services

log = logging.getLogger("butler")

MISSING = "Required parameter missing"


def _failed(what: str, exc: OSError) -> HttpError:
    return HttpError(500, f"{what}: {exc.strerror or exc}")


def warn_unlimited(settings: Settings) -> None:
    """At start-up: say when createdir may write anywhere."""
    if settings.endpoints.enabled("createDir") and settings.files.create_dir is None:
        log.warning(
            "POST /v4/createdir can create folders anywhere Butler may write; "
            "Butler.createDirApprovedDirectories limits it"
        )


def routes(services: Services) -> list[Route]:
    files = FileService(services.settings.files)

    def required(body: dict[str, Any], *names: str) -> list[str]:
        values = [body.get(name) for name in names]
        if not all(values):
            raise HttpError(400, MISSING)
        return [str(v) for v in values]

    async def copy(request: ApiRequest) -> Reply:
        from_file, to_file = required(request.body, "fromFile", "toFile")
        overwrite, preserve = (
            request.body.get("overwrite") is True,
            request.body.get("preserveTimestamp") is True,
        )
        try:
            source, target = await files.copy(from_file, to_file, overwrite, preserve)
        except OSError as exc:
            raise _failed("Failed copying file", exc) from None
        return json_reply(
            {"fromFile": source, "toFile": target, "overwrite": overwrite, "preserveTimestamp": preserve}, 201
        )

    async def move(request: ApiRequest) -> Reply:
        from_file, to_file = required(request.body, "fromFile", "toFile")
        overwrite = request.body.get("overwrite") is True
        try:
            source, target = await files.move(from_file, to_file, overwrite)
        except OSError as exc:
            raise _failed("Failed moving file", exc) from None
        return json_reply({"fromFile": source, "toFile": target, "overwrite": overwrite}, 201)

    async def delete(request: ApiRequest) -> Reply:
        (path,) = required(request.body, "deleteFile")
        try:
            await files.delete(path)
        except OSError as exc:
            raise _failed("Failed deleting file", exc) from None
        return Reply(204)

    async def make(directory: Any, qvd: bool) -> str:
        """Create the folder; returns what the caller is told: the folder as sent, or for ``qvd`` the
        folder created, relative to ``qvdPath``."""
        if directory is None:
            raise HttpError(400, MISSING)
        try:
            if qvd:
                return await files.create_qvd_dir(str(directory))
            await files.create_dir(str(directory))
        except OSError as exc:
            raise HttpError(400, f"Failed to create directory: {exc.strerror or exc}") from None
        return str(directory)

    async def create_dir(request: ApiRequest) -> Reply:
        return json_reply({"directory": await make(request.body.get("directory"), qvd=False)}, 201)

    async def create_qvd_dir(request: ApiRequest) -> Reply:
        return json_reply({"directory": await make(request.body.get("directory"), qvd=True)}, 201)

    async def v2_create_dir(request: ApiRequest) -> Reply:
        return json_reply({"directory": await make(request.query.get("directory"), qvd=False)})

    async def v2_create_qvd_dir(request: ApiRequest) -> Reply:
        return json_reply({"directory": await make(request.query.get("directory"), qvd=True)})

    handlers = [
        ("PUT", "/v4/filecopy", copy),
        ("PUT", "/v4/filemove", move),
        ("DELETE", "/v4/filedelete", delete),
        ("POST", "/v4/createdir", create_dir),
        ("POST", "/v4/createdirqvd", create_qvd_dir),
        ("GET", "/v2/createDir", v2_create_dir),
        ("GET", "/v2/createDirQVD", v2_create_qvd_dir),
    ]
    return [Route(method, path, handler) for method, path, handler in handlers]
