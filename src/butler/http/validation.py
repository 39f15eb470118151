"""Request validation with the coercion rules and messages of upstream Butler (Fastify + ajv).

Butler's callers are Qlik load scripts, whose REST connector sends numbers as strings and strings as
numbers; upstream accepts those because ajv runs with ``coerceTypes: 'array'``. The same schemas that the
OpenAPI document publishes are compiled here into checkers that coerce exactly as ajv does and fail with
ajv's first message (``body/ttl must be number``, ``querystring must have required property 'key'``).

Only the JSON-schema keywords Butler's API uses are supported: type, nullable, properties, required,
items, enum, default, minimum, maximum, minLength, maxLength, minItems, maxItems.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from butler.http.errors import HttpError, validation_error

Checker = Callable[[Any], Any]


class _Invalid(Exception):
    """A validation failure. ``path`` is built while the error travels up, so valid input pays nothing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = ""


_SCALARS = (str, int, float, bool, type(None))


def _js_string(value: Any) -> str | None:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    return None


def _js_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return 1 if value else 0
    if value is None:
        return 0
    if isinstance(value, str) and value.strip():
        try:
            number = float(value.strip())
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        return (
            int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
        )
    return None


def _coerce(value: Any, kind: str) -> tuple[bool, Any]:
    """Return (ok, value) after ajv's scalar coercion of ``value`` to JSON type ``kind``."""
    if kind == "object":
        return type(value) is dict, value
    if isinstance(value, list) and len(value) == 1 and kind not in ("array", "object"):
        value = value[0]  # coerceTypes 'array': a one-element array stands for its element
    if kind == "string":
        if isinstance(value, str):
            return True, value
        text = _js_string(value)
        return text is not None, text
    if kind in ("number", "integer"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number: int | float | None = value
        else:
            number = _js_number(value)
        if number is None:
            return False, value
        if kind == "integer":
            if isinstance(number, float) and not number.is_integer():
                return False, value
            return True, int(number)
        return True, number
    if kind == "boolean":
        if isinstance(value, bool):
            return True, value
        table = {"true": True, "false": False, 1: True, 0: False, None: False}
        if isinstance(value, (str, int, float, type(None))) and value in table:
            return True, table[value]
        return False, value
    if kind == "array":
        if isinstance(value, list):
            return True, value
        if isinstance(value, _SCALARS):
            return True, [value]
        return False, value
    if kind == "null":
        if value is None or value == "" or value is False or value == 0:
            return True, None
        return False, value
    raise ValueError(f"unsupported schema type {kind!r}")


_CONSTRAINTS = frozenset(
    {
        "type",
        "nullable",
        "properties",
        "required",
        "items",
        "enum",
        "default",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
    }
)


def plain_string(schema: dict[str, Any]) -> bool:
    """True for a schema that any string satisfies unchanged."""
    return schema.get("type") == "string" and not (_CONSTRAINTS & set(schema)) - {"type"}


def compile_schema(schema: dict[str, Any]) -> Checker:
    """Compile a JSON schema into ``check(value) -> coerced value`` that raises on the first error."""
    kind: str | None = schema.get("type")
    nullable = bool(schema.get("nullable"))
    steps: list[Checker] = []

    if kind == "object" or "properties" in schema:
        properties = {name: (compile_schema(sub), sub) for name, sub in schema.get("properties", {}).items()}
        plain_strings = frozenset(
            name for name, sub in schema.get("properties", {}).items() if plain_string(sub)
        )
        required: list[str] = list(schema.get("required", []))

        def check_object(value: Any) -> Any:
            for name in required:
                if name not in value:
                    raise _Invalid(f"must have required property '{name}'")
            for name, (checker, sub) in properties.items():
                if name in value:
                    item = value[name]
                    if name in plain_strings and type(item) is str:
                        continue
                    try:
                        value[name] = checker(item)
                    except _Invalid as exc:
                        exc.path = f"/{name}{exc.path}"
                        raise
                elif "default" in sub:
                    value[name] = sub["default"]
            return value

        steps.append(check_object)
    if kind == "array":
        item_checker = compile_schema(schema["items"]) if "items" in schema else None
        min_items, max_items = schema.get("minItems"), schema.get("maxItems")

        def check_array(value: Any) -> Any:
            if min_items is not None and len(value) < min_items:
                raise _Invalid(f"must NOT have fewer than {min_items} items")
            if max_items is not None and len(value) > max_items:
                raise _Invalid(f"must NOT have more than {max_items} items")
            if item_checker is not None:
                for index, item in enumerate(value):
                    try:
                        value[index] = item_checker(item)
                    except _Invalid as exc:
                        exc.path = f"/{index}{exc.path}"
                        raise
            return value

        steps.append(check_array)
    if "minLength" in schema or "maxLength" in schema:
        min_len, max_len = schema.get("minLength"), schema.get("maxLength")

        def check_length(value: Any) -> Any:
            if max_len is not None and len(value) > max_len:
                raise _Invalid(f"must NOT have more than {max_len} characters")
            if min_len is not None and len(value) < min_len:
                raise _Invalid(f"must NOT have fewer than {min_len} characters")
            return value

        steps.append(check_length)
    if "minimum" in schema or "maximum" in schema:
        low, high = schema.get("minimum"), schema.get("maximum")

        def check_range(value: Any) -> Any:
            if low is not None and value < low:
                raise _Invalid(f"must be >= {low}")
            if high is not None and value > high:
                raise _Invalid(f"must be <= {high}")
            return value

        steps.append(check_range)
    if "enum" in schema:
        allowed = list(schema["enum"])

        def check_enum(value: Any) -> Any:
            if value not in allowed:
                raise _Invalid("must be equal to one of the allowed values")
            return value

        steps.append(check_enum)

    def check(value: Any) -> Any:
        if value is None and nullable:
            return None
        if kind is not None:
            ok, value = _coerce(value, kind)
            if not ok:
                raise _Invalid(f"must be {kind}")
        for step in steps:
            value = step(value)
        return value

    return check


class Validator:
    """Validates one part of a request (``querystring``, ``params`` or ``body``) against its schema."""

    def __init__(self, part: str, schema: dict[str, Any]) -> None:
        self.part = part
        self.schema = schema
        self._check = compile_schema(schema)

    def __call__(self, value: Any) -> Any:
        try:
            return self._check(value)
        except _Invalid as exc:
            raise validation_error(f"{self.part}{exc.path} {exc.message}") from None


def object_schema(parameters: list[dict[str, Any]], location: str) -> dict[str, Any] | None:
    """Build one object schema from the OpenAPI parameters of a location (``query`` or ``path``)."""
    selected = [p for p in parameters if p.get("in") == location]
    if not selected:
        return None
    return {
        "type": "object",
        "properties": {p["name"]: p.get("schema", {}) for p in selected},
        "required": [p["name"] for p in selected if p.get("required")],
    }


__all__ = ["HttpError", "Validator", "compile_schema", "object_schema"]
