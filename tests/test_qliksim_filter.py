"""The QRS filter language: the examples of Qlik's documentation, and generated expressions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qliksim.filter import FilterError, apply_filter, parse_filter, parse_orderby, sort_entities

ENTITIES: list[dict[str, Any]] = [
    {
        "id": "7552d9fc-d1bb-4975-9a38-18357de531ea",
        "name": "Sales",
        "published": True,
        "taskType": 0,
        "stream": {"id": "aaaaaaaa-0000-0000-0000-000000000001", "name": "Everyone"},
        "tags": [{"name": "butler"}, {"name": "night's"}],
        "objectTypes": ["App", "ReloadTask"],
        "customProperties": [{"value": "tasks1", "definition": {"name": "taskGroup"}}],
        "lastUsed": "2024-04-30T10:00:00.000Z",
        "serviceType": 3,
        "organization": "ACME Inc.",
    },
    {
        "id": "e3b27f50-b1c0-4879-88fc-c7cdd9c1cf3e",
        "name": "Joe Smith",
        "published": False,
        "taskType": 1,
        "stream": None,
        "tags": [],
        "objectTypes": ["User"],
        "customProperties": [{"value": "tasks2", "definition": {"name": "other"}}],
        "lastUsed": "2024-05-02T00:00:00.000Z",
        "serviceType": 1,
        "organization": "Other",
    },
]


def names(text: str, **kwargs: Any) -> list[str]:
    return [e["name"] for e in apply_filter(parse_filter(text, **kwargs), ENTITIES)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id eq 7552d9fc-d1bb-4975-9a38-18357de531ea", ["Sales"]),
        ("id eq 7552D9FC-D1BB-4975-9A38-18357DE531EA", ["Sales"]),
        ("Name eq 'sales'", ["Sales"]),
        ("ServiceType eq Engine", ["Sales"]),
        ("serviceType eq 1", ["Joe Smith"]),
        ("Organization eq 'ACME Inc.' or Name eq 'Joe Smith'", ["Sales", "Joe Smith"]),
        (
            "(customProperties.definition.name eq 'taskGroup') and (customProperties.value eq 'tasks1')",
            ["Sales"],
        ),
        ("name eq 'Sales' and (stream.name eq 'Everyone' or stream eq null)", ["Sales"]),
        (
            "(id eq 7552d9fc-d1bb-4975-9a38-18357de531ea or id eq e3b27f50-b1c0-4879-88fc-c7cdd9c1cf3e) or "
            "(tags.name eq 'a' or tags.name eq 'b') or (published eq true)",
            ["Sales", "Joe Smith"],
        ),
        ("stream eq null", ["Joe Smith"]),
        ("customProperties.value ne null", ["Sales", "Joe Smith"]),
        ("published eq true", ["Sales"]),
        ("stream.name eq 'Everyone'", ["Sales"]),
        ("stream.id eq aaaaaaaa-0000-0000-0000-000000000001", ["Sales"]),
        ("tags.name eq 'butler'", ["Sales"]),
        ("tags.name eq 'night''s'", ["Sales"]),
        ("objectTypes eq 'ReloadTask'", ["Sales"]),
        ("name so 'ale'", ["Sales"]),
        ("name sw 'JOE'", ["Joe Smith"]),
        ("name ew 'smith'", ["Joe Smith"]),
        ("lastUsed le '2024-05-01T23:59:59.999Z'", ["Sales"]),
        ("lastUsed gt '2024-05-01 12:00:00'", ["Joe Smith"]),
        ("taskType eq 0", ["Sales"]),
        ("taskType ge 0 and taskType lt 1", ["Sales"]),
        ("a eq 1 or name eq 'x'".replace("a eq 1 or ", ""), []),
        ("", ["Sales", "Joe Smith"]),
    ],
)
def test_documented_examples(text: str, expected: list[str]) -> None:
    assert names(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "name eq",
        "name eq 'open",
        "(name eq 'x'",
        "name eq 'x')",
        "name xx 'x'",
        "nosuch eq 1",
        "name gt 'x'",
        "published eq 'yes'",
        "taskType eq Nonsense",
        "not name eq 'x'",
        "name eq 'x' and",
        "eq 'x'",
        "name eq x.y",
        "name eq 'a' 'b'",
        "name eq 'a'; drop",
    ],
)
def test_refused(text: str) -> None:
    with pytest.raises(FilterError):
        names(text)


def test_not_only_when_enabled() -> None:
    assert names("not name eq 'sales'", allow_not=True) == ["Joe Smith"]


def test_and_binds_tighter_than_or() -> None:
    assert names("name eq 'Sales' or name eq 'Joe Smith' and published eq true") == ["Sales"]
    assert names("(name eq 'Sales' or name eq 'Joe Smith') and published eq false") == ["Joe Smith"]


def test_orderby() -> None:
    assert [e["name"] for e in sort_entities(ENTITIES, parse_orderby("name asc"))] == ["Joe Smith", "Sales"]
    assert [e["name"] for e in sort_entities(ENTITIES, parse_orderby("published desc, name"))] == [
        "Sales",
        "Joe Smith",
    ]
    with pytest.raises(FilterError):
        parse_orderby("name sideways")


# --- Generated expressions ------------------------------------------------------------------------------

FIELDS = {"name": ["Sales", "Joe Smith"], "organization": ["ACME Inc.", "Other"]}


@st.composite
def comparisons(draw: st.DrawFn) -> tuple[str, Any]:
    field = draw(st.sampled_from(sorted(FIELDS)))
    value = draw(st.sampled_from([*FIELDS[field], "x'y", "O''Brien", "a b"]))
    negate = draw(st.booleans())
    operator = "ne" if negate else "eq"
    text = f"{field} {operator} '{value.replace(chr(39), chr(39) * 2)}'"

    def predicate(entity: dict[str, Any]) -> bool:
        return (entity[field].casefold() == value.casefold()) != negate

    return text, predicate


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> tuple[str, Any]:
    if depth >= 3 or draw(st.booleans()):
        return draw(comparisons())
    left = draw(expressions(depth + 1))
    right = draw(expressions(depth + 1))
    operator = draw(st.sampled_from(["and", "or"]))
    combine = (lambda a, b: a and b) if operator == "and" else (lambda a, b: a or b)
    return f"({left[0]} {operator} {right[0]})", lambda e: combine(left[1](e), right[1](e))


@settings(max_examples=300, deadline=None)
@given(expressions())
def test_generated_expressions_with_parentheses(case: tuple[str, Any]) -> None:
    text, predicate = case
    assert names(text) == [e["name"] for e in ENTITIES if predicate(e)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(comparisons(), min_size=2, max_size=5),
    st.lists(st.sampled_from(["and", "or"]), min_size=4, max_size=4),
)
def test_generated_precedence(parts: list[tuple[str, Any]], operators: list[str]) -> None:
    """Without parentheses, and binds tighter than or."""
    text = parts[0][0]
    groups: list[list[Any]] = [[parts[0][1]]]
    for (piece, predicate), operator in zip(parts[1:], operators, strict=False):
        text += f" {operator} {piece}"
        if operator == "and":
            groups[-1].append(predicate)
        else:
            groups.append([predicate])
    expected = [e["name"] for e in ENTITIES if any(all(p(e) for p in group) for group in groups)]
    assert names(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12))
def test_any_quoted_string_round_trips(value: str) -> None:
    quoted = value.replace("'", "''")
    node = parse_filter(f"name eq '{quoted}'")
    assert node is not None and node.literal.value == value  # type: ignore[union-attr]
