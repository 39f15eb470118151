"""Base62 <-> base16 conversion endpoints (``/v4`` and the old ``/v2`` spelling)."""

from __future__ import annotations

from butler.base_conversion import BASE16, BASE62, convert
from butler.http.errors import HttpError
from butler.http.routing import JSON_HEADERS, ApiRequest, Handler, Reply, Route
from butler.services import Services

_ALPHABETS = {"base62": BASE62, "base16": BASE16}


def _converter(source: str, target: str, *, bare: bool) -> Handler:
    """A handler converting query parameter ``source`` to ``target``.

    ``/v4`` answers ``{"base62": ..., "base16": ...}``; the old ``/v2`` API answered the bare value.
    A foreign digit is the caller's mistake: 400 (upstream answers 500), with upstream's message first.
    """
    failure = f"Failed converting from {source} to {target}"
    digits = "0-9 and a-f (lowercase)" if source == "base16" else "0-9, a-z and A-Z"

    async def handler(request: ApiRequest) -> Reply:
        value = request.query[source]
        try:
            converted = convert(value, _ALPHABETS[source], _ALPHABETS[target])
        except ValueError as exc:
            raise HttpError(400, f"{failure}: {exc}; {source} digits are {digits}") from None
        # Both values are made of alphabet digits only (convert checked the input), so they need no JSON
        # escaping; formatting the body directly keeps this hot endpoint cheap.
        if bare:
            return Reply(200, f'"{converted}"'.encode(), headers=JSON_HEADERS)
        base62, base16 = (value, converted) if source == "base62" else (converted, value)
        return Reply(200, f'{{"base62":"{base62}","base16":"{base16}"}}'.encode(), headers=JSON_HEADERS)

    return handler


def routes(services: Services) -> list[Route]:
    return [
        Route("GET", "/v4/base62tobase16", _converter("base62", "base16", bare=False)),
        Route("GET", "/v4/base16tobase62", _converter("base16", "base62", bare=False)),
        Route("GET", "/v2/base62ToBase16", _converter("base62", "base16", bare=True)),
        Route("GET", "/v2/base16ToBase62", _converter("base16", "base62", bare=True)),
    ]
