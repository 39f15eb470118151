"""Handlebars templates of alerts, rendered as handlebars.js 4.7 renders them.

Users keep upstream's templates and their own edits of them, so the output must be upstream's byte for byte.
The parsing and rendering are dotpromptz-handlebars's: of the Python Handlebars libraries it is the one whose
output matches handlebars.js on the shipped templates (tests/test_templates.py compares the two). The pybars
family leaves ``=`` unescaped, ends a ``{{!-- --}}`` comment at its first ``}}`` (the shipped templates have
such comments) and prints Python's form of lists and dicts; the Rust-based ones print ``-0.0`` and ``1e21``.

What that library does not do the JavaScript way is done here, on a copy of the context made per render:

- numbers print as JavaScript prints them (``1e+21``, ``1e-7``, ``-0`` as ``0``, integers past 2**53 rounded);
- an object's keys come in JavaScript's order (integer-like keys first, ascending), for ``{{#each}}``;
- ``eq``, upstream's only helper, is JavaScript's ``===``; ``log`` writes to Butler's log, not stdout.

Known differences, on templates no one ships: ``.length`` of an array or string renders empty; some tags
handlebars.js rejects as malformed render (a lone ``}`` after ``}}`` as text, ``{{a..b}}`` as empty); a raw
block ``{{{{name}}}}`` shows its content even when ``name`` is false or missing.

Hostile data cannot make a render fail or recurse without end: the copy stops at ``MAX_DEPTH`` levels (no
template reaches that deep), and escaping is linear in the text.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from dotpromptz_handlebars import Handlebars, HelperOptions

from butler.errors import BadRequest

log = logging.getLogger(__name__)

#: Levels of nested objects and arrays a render sees; deeper ones are empty.
MAX_DEPTH = 64
# Template files are few (named in the config); the bound only stops a leak if paths ever vary.
_CACHE_SIZE = 256
# A property name JavaScript treats as an array index, which objects list first and in numeric order.
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")
_ARRAY_INDEX_MAX = 2**32 - 2


class TemplateError(BadRequest):
    """A template that cannot be read, parsed or rendered; the message names the template and the problem."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"template {source}: {problem}")
        self.source = source


class _JsNumber(str):
    """A number as JavaScript prints it, keeping the number for ``eq``.

    Only non-zero numbers become one: a non-empty string is true to ``#if`` as they are, while 0 stays a
    number so that it remains false.
    """

    __slots__ = ("value",)
    value: int | float

    def __new__(cls, value: int | float) -> _JsNumber:
        self = super().__new__(cls, js_number(value))
        self.value = value
        return self


def js_number(value: int | float) -> str:
    """``String(value)`` in JavaScript, for an int or float (ECMAScript Number::toString)."""
    if isinstance(value, int) and abs(value) < 2**53:
        return str(value)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf if value > 0 else -math.inf
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    # repr() is the shortest text that reads back as the same double, which is what JavaScript prints too.
    _, digit_tuple, exponent = Decimal(repr(abs(number))).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = exponent + k
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        mantissa = digits[0] + (f".{digits[1:]}" if k > 1 else "")
        text = f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return sign + text


def _key(key: object) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int | float):
        return js_number(key)
    return str(key)


def _js_view(value: Any, depth: int = 0) -> Any:
    """``value`` as the JSON-like data handlebars.js would see, in the shapes the library reads."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return 0 if value == 0 else _JsNumber(value)
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            return {}
        items = [(_key(k), v) for k, v in value.items()]
        indexes = sorted(
            (int(k), k, v) for k, v in items if _ARRAY_INDEX.fullmatch(k) and int(k) <= _ARRAY_INDEX_MAX
        )
        index_keys = {k for _, k, _ in indexes}
        ordered = [(k, v) for _, k, v in indexes] + [(k, v) for k, v in items if k not in index_keys]
        return {k: _js_view(v, depth + 1) for k, v in ordered}
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        if depth >= MAX_DEPTH:
            return []
        return [_js_view(item, depth + 1) for item in value]
    return str(value)


def _strictly_equal(a: Any, b: Any) -> bool:
    """JavaScript's ``a === b`` on data: primitives by value, objects and arrays by identity."""
    a = a.value if isinstance(a, _JsNumber) else a
    b = b.value if isinstance(b, _JsNumber) else b
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, numbers) and isinstance(b, numbers):
        return a == b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is b


def _eq(args: list[Any], options: HelperOptions) -> bool:
    a, b = (*args, None, None)[:2]
    return _strictly_equal(a, b)


def _log(args: list[Any], options: HelperOptions) -> str:
    log.info("template log: %s", " ".join(str(a) for a in args))
    return ""


def _engine() -> Handlebars:
    engine = Handlebars()
    engine.register_helper("eq", _eq)
    engine.register_helper("log", _log)
    return engine


_ENGINE = _engine()
# What the library raises for a template it cannot parse or render (its own errors are ValueErrors).
_LIBRARY_ERRORS = (ValueError, TypeError, LookupError, AttributeError, RecursionError)


class Template:
    """A parsed template; ``render`` may be called any number of times, from any task."""

    __slots__ = ("_render", "source")

    def __init__(self, render: Callable[..., str], source: str) -> None:
        self._render = render
        #: Where the template came from (a file's path), as error messages name it.
        self.source = source

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(self, context: Mapping[str, Any]) -> str:
        """The template filled in from ``context``; TemplateError when it cannot be (a partial, a helper)."""
        data = _js_view(context)
        try:
            return self._render(data)
        except _LIBRARY_ERRORS as e:
            raise TemplateError(self.source, f"cannot be rendered: {_problem(e)}") from e


def _problem(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "blocks nested too deeply"
    return str(error) or type(error).__name__


def compile_template(text: str, source: str = "<template>") -> Template:
    """Parse ``text``; TemplateError naming ``source`` when it is not a valid template."""
    try:
        render = _ENGINE.compile(text)
    except _LIBRARY_ERRORS as e:
        raise TemplateError(source, f"is not a valid template: {_problem(e)}") from e
    return Template(render, source)


_cache: dict[Path, tuple[tuple[int, int], Template]] = {}


def load_template(path: Path) -> Template:
    """The template in file ``path``, parsed again only when the file changed; TemplateError when it
    cannot be read or is not a valid template."""
    try:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = _cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        # As Node reads them: UTF-8 with invalid bytes replaced, and line ends left as they are (read_text
        # would turn \r\n into \n).
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise TemplateError(str(path), f"cannot be read: {e.strerror or e}") from e
    template = compile_template(text, str(path))
    if len(_cache) >= _CACHE_SIZE:
        _cache.clear()
    _cache[path] = (stamp, template)
    return template
