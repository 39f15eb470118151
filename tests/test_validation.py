"""Request validation coerces and fails exactly as upstream Butler's ajv settings do."""

from __future__ import annotations

from typing import Any

import pytest

from butler.http.errors import HttpError
from butler.http.validation import Validator

KV_BODY = {
    "type": "object",
    "properties": {"key": {"type": "string"}, "value": {"type": "string"}, "ttl": {"type": "number"}},
    "required": ["key"],
}
TASK_BODY = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["keyvaluestore", "starttaskid"]},
            "payload": {"type": "object"},
        },
    },
}


def fails(schema: dict[str, Any], value: Any, part: str = "body") -> str:
    with pytest.raises(HttpError) as caught:
        Validator(part, schema)(value)
    assert caught.value.status == 400
    assert caught.value.code == "FST_ERR_VALIDATION"
    return caught.value.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"key": "k", "value": 12345.5}, {"key": "k", "value": "12345.5"}),
        ({"key": "k", "value": 7.0}, {"key": "k", "value": "7"}),
        ({"key": "k", "value": True}, {"key": "k", "value": "true"}),
        ({"key": "k", "ttl": "300"}, {"key": "k", "ttl": 300}),
        ({"key": "k", "ttl": "1.5"}, {"key": "k", "ttl": 1.5}),
        ({"key": "k", "ttl": True}, {"key": "k", "ttl": 1}),
        ({"key": "k", "extra": [1]}, {"key": "k", "extra": [1]}),
        ({"key": ["only"]}, {"key": "only"}),
    ],
)
def test_coercion(value: dict[str, Any], expected: dict[str, Any]) -> None:
    assert Validator("body", KV_BODY)(value) == expected


def test_messages_name_the_field() -> None:
    assert fails(KV_BODY, {"value": "v"}) == "body must have required property 'key'"
    assert fails(KV_BODY, {"key": "k", "ttl": "soon"}) == "body/ttl must be number"
    assert fails(KV_BODY, {"key": {"a": 1}}) == "body/key must be string"
    assert fails(KV_BODY, None) == "body must be object"
    assert fails(KV_BODY, "text body") == "body must be object"


def test_array_bodies() -> None:
    assert fails(TASK_BODY, None) == "body/0 must be object"
    assert fails(TASK_BODY, {"type": "starttaskid"}) == "body must be array"
    assert fails(TASK_BODY, [{"type": "nope"}]) == "body/0/type must be equal to one of the allowed values"
    assert Validator("body", TASK_BODY)([]) == []


def test_booleans() -> None:
    schema = {"type": "object", "properties": {"flag": {"type": "boolean"}}}
    check = Validator("querystring", schema)
    assert check({"flag": "true"}) == {"flag": True}
    assert check({"flag": "false"}) == {"flag": False}
    assert fails(schema, {"flag": "yes"}, "querystring") == "querystring/flag must be boolean"


def test_repeated_query_keys_are_refused() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert fails(schema, {"a": ["1", "2"]}, "querystring") == "querystring/a must be string"


def test_integers_lengths_and_defaults() -> None:
    schema = {
        "type": "object",
        "properties": {
            "mode": {"type": "integer", "minimum": 0, "maximum": 2, "default": 0},
            "name": {"type": "string", "maxLength": 3},
        },
    }
    check = Validator("body", schema)
    assert check({}) == {"mode": 0}
    assert check({"mode": "2"}) == {"mode": 2}
    assert fails(schema, {"mode": 1.5}) == "body/mode must be integer"
    assert fails(schema, {"mode": 5}) == "body/mode must be <= 2"
    assert fails(schema, {"name": "long"}) == "body/name must NOT have more than 3 characters"
