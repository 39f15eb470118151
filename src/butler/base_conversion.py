"""Base62 <-> base16 conversion, exactly as upstream Butler's (the any-base library).

Qlik Sense shows some ids in base62 (for example in session cookies) and others as hex; load scripts
convert between them. Digits are ``0-9``, then lowercase, then uppercase letters; values are arbitrary
size; leading zeros are not kept and an empty value converts to ``"0"``.
"""

from __future__ import annotations

import re

BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
BASE16 = "0123456789abcdef"

_DIGITS = {alphabet: {c: i for i, c in enumerate(alphabet)} for alphabet in (BASE62, BASE16)}
_VALID = {alphabet: re.compile(f"[{alphabet}]*") for alphabet in (BASE62, BASE16)}
# Ten base62 digits at a time keep the inner arithmetic on machine-sized integers; within a chunk, digits
# are written two at a time from a table.
_CHUNK = 62**10
_PAIRS = [a + b for a in BASE62 for b in BASE62]


def to_int(value: str, alphabet: str) -> int:
    """The number ``value`` writes in ``alphabet``. ValueError names the first character that is no digit."""
    digits = _DIGITS[alphabet]
    if _VALID[alphabet].fullmatch(value) is None:
        foreign = next(char for char in value if char not in digits)
        raise ValueError(f"{foreign!r} is not a base{len(alphabet)} digit")
    if not value:
        return 0
    if alphabet == BASE16:
        return int(value, 16)  # safe: every character was checked against the lowercase alphabet
    number = 0
    for char in value:
        number = number * 62 + digits[char]
    return number


def from_int(number: int, alphabet: str) -> str:
    """``number`` written in ``alphabet``, without leading zeros."""
    if alphabet == BASE16:
        return format(number, "x")
    if number == 0:
        return "0"
    out: list[str] = []
    while number:
        number, chunk = divmod(number, _CHUNK)
        for _ in range(5):
            chunk, rest = divmod(chunk, 3844)
            out.append(_PAIRS[rest])
    return "".join(reversed(out)).lstrip("0")


def convert(value: str, source: str, target: str) -> str:
    """Re-write ``value`` from the ``source`` alphabet in ``target``; ValueError on a foreign digit."""
    return from_int(to_int(value, source), target)
