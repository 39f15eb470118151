"""Base62 <-> base16 conversion, exactly as upstream Butler's (the any-base library).

Qlik Sense shows some ids in base62 (for example in session cookies) and others as hex; load scripts
convert between them. Digits are ``0-9``, then lowercase, then uppercase letters; values are arbitrary
size; leading zeros are not kept and an empty value converts to ``"0"``.
"""

from __future__ import annotations

BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
BASE16 = "0123456789abcdef"

_DIGITS = {alphabet: {c: i for i, c in enumerate(alphabet)} for alphabet in (BASE62, BASE16)}


def convert(value: str, source: str, target: str) -> str:
    """Re-write ``value`` from the ``source`` alphabet in the ``target`` one. ValueError on a foreign digit."""
    digits = _DIGITS[source]
    base = len(source)
    number = 0
    for char in value:
        digit = digits.get(char)
        if digit is None:
            raise ValueError(f"{char!r} is not a digit of this base")
        number = number * base + digit
    if number == 0:
        return target[0]
    out = []
    size = len(target)
    while number:
        number, rest = divmod(number, size)
        out.append(target[rest])
    return "".join(reversed(out))


def base62_to_base16(value: str) -> str:
    return convert(value, BASE62, BASE16)


def base16_to_base62(value: str) -> str:
    return convert(value, BASE16, BASE62)
