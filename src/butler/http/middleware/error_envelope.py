"""Every error raised further down the chain becomes an answer in Butler's envelope.

HttpErrors are answers already; errors of Butler's services and clients get their status from
``butler.http.errors.from_butler_error``; anything else is a fault of Butler's: logged with its traceback and
answered with a bare 500, which says nothing of Butler's inside.
"""

from __future__ import annotations

import logging

from butler.errors import ButlerError
from butler.http.errors import ClientGone, HttpError, from_butler_error
from butler.http.middleware import App, Context
from butler.http.routing import JSON_TYPE, Reply
from butler.json_encoding import encode_json

log = logging.getLogger("butler.rest")


def envelope_reply(error: HttpError) -> Reply:
    return Reply(error.status, encode_json(error.envelope()), JSON_TYPE, error.headers)


class ErrorEnvelope:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, context: Context) -> Reply:
        try:
            return await self.app(context)
        except HttpError as exc:
            return envelope_reply(exc)
        except ClientGone:
            raise
        except Exception as exc:
            mapped = from_butler_error(exc) if isinstance(exc, ButlerError) else None
            if mapped is None:
                log.exception("%s %s from %s failed", context.method, context.target, context.client_ip)
                mapped = HttpError(500, "Internal Server Error")
            return envelope_reply(mapped)
