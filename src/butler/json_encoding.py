"""JSON encoding shared by the REST answers and the services that hand over already encoded JSON."""

from __future__ import annotations

import json
from typing import Any

import orjson

# orjson encodes ten times faster than the standard library, which matters at 15,000 requests/s; the
# standard encoder remains for the rare value orjson refuses (integers beyond 64 bits).
_FALLBACK = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_json(data: Any) -> bytes:
    try:
        return orjson.dumps(data)
    except TypeError:
        return _FALLBACK.encode(data).encode()
