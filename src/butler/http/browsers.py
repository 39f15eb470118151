"""Requests a browser sends for a page of another web site are refused before anything runs.

Butler has no authentication, and some of its GET routes change things (the ``/v2`` routes start tasks,
create folders, publish messages). Without this check any page a Sense admin opens could drive Butler with
an ``<img src>`` or a ``fetch()`` that needs no CORS preflight. Butler's real callers (load scripts through
Qlik's REST connector, curl, ETL tools) send neither ``Origin`` nor ``Sec-Fetch-Site``; browsers send
``Sec-Fetch-Site`` on every request (Chromium 76, Firefox 90, Safari 16.4 and later) and ``Origin`` on every
request that is not a same-origin or no-cors GET. Neither header can be set by a page's script.

The rule:

- ``Sec-Fetch-Site: same-origin`` passes: the browser itself says the page is one of Butler's own (Swagger
  UI's "Try it out"), also behind a proxy that changes the scheme or port the browser sees.
- An ``Origin`` listed in ``Butler.restServerConfig.allowedOrigins`` passes.
- Without ``Sec-Fetch-Site`` (or with ``none``: the admin typed the URL), a request passes when it has no
  ``Origin`` or an ``Origin`` equal to Butler's own (the scheme and the ``Host`` it was called by).
- Everything else is refused: ``cross-site``, and ``same-site`` too, since a page on another port of the
  same host or on another server of the same intranet domain is not Butler's; ``Origin: null`` (sandboxed
  frames, local files) as well.

The documentation pages are open to any page: they change nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NoReturn
from urllib.parse import urlsplit

from aiohttp.web_request import BaseRequest

from butler.http.errors import HttpError

log = logging.getLogger("butler.rest")

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SETTING = "Butler.restServerConfig.allowedOrigins"


def parse_origin(text: str) -> str:
    """``text`` as browsers write it in ``Origin``: ``scheme://host[:port]``, lower case, no default port.

    Raises ValueError saying what is wrong with it.
    """
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not an origin ({exc})") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("expected http:// or https:// and a host name, like https://sense.company.com")
    if not parts.hostname.isascii():
        # Browsers send an international name in its ASCII form; the Unicode one would never match.
        raise ValueError("write an international host name in its ASCII form (xn--...), as browsers send it")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        raise ValueError("an origin is only scheme://host[:port], without user, path or query")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    shown_port = f":{port}" if port is not None and port != _DEFAULT_PORTS[parts.scheme] else ""
    return f"{parts.scheme}://{host}{shown_port}"


class BrowserCheck:
    """Refuses browser requests made for pages of other origins (403 in Butler's envelope).

    ``open_paths`` are path prefixes every page may load (``/documentation`` covers its sub-paths).
    """

    def __init__(self, allowed_origins: Iterable[str] = (), open_paths: Iterable[str] = ()) -> None:
        self.allowed_origins = frozenset(parse_origin(o) for o in allowed_origins)
        self._open_paths = tuple(open_paths)
        self._open_prefixes = tuple(f"{p}/" for p in self._open_paths)

    def check(self, request: BaseRequest, method: str, path: str) -> None:
        """Raise the 403 for a request ``method path`` that a browser made for another site's page."""
        headers = request.headers
        origin = headers.get("Origin")
        site = headers.get("Sec-Fetch-Site")
        if (origin is None and site is None) or site == "same-origin":
            return
        if path in self._open_paths or path.startswith(self._open_prefixes):
            return
        fetched_by_user = site is None or site == "none"
        if origin is None:
            if fetched_by_user:
                return
            _refuse(
                request,
                method,
                f"A page of another web site (Sec-Fetch-Site: {site}) may not call Butler; browsers may "
                f"call it from its own pages, and from pages of origins listed in {_SETTING} in requests "
                "that carry the page's Origin",
                f"another web site (Sec-Fetch-Site: {site})",
            )
        try:
            normalized = parse_origin(origin)
        except ValueError:
            what = " (a sandboxed frame or a local file)" if origin == "null" else ""
            _refuse(
                request,
                method,
                f"A page of origin '{origin}'{what} may not call Butler; "
                f"browsers may call it from its own pages and from pages of origins listed in {_SETTING}",
                f"origin {origin[:100]!r}",
            )
        if normalized in self.allowed_origins or (fetched_by_user and _is_own(normalized, request)):
            return
        _refuse(
            request,
            method,
            f"A page of {normalized} may not call Butler; add {normalized} to {_SETTING} if its pages may",
            normalized,
        )


def _refuse(request: BaseRequest, method: str, message: str, page: str) -> NoReturn:
    log.warning(
        "Refused %s %s from %s: made by a browser for a page of %s",
        method,
        request.raw_path,
        request.remote,
        page,
    )
    raise HttpError(403, message)


def _is_own(origin: str, request: BaseRequest) -> bool:
    host = request.headers.get("Host")
    if not host:
        return False
    try:
        return origin == parse_origin(f"{request.scheme}://{host}")
    except ValueError:
        return False
