"""The QRS filter language (``?filter=``) and sort order (``?orderby=``).

Grammar: comparisons ``path op literal`` joined by ``and`` (binds tighter) and ``or``, with parentheses;
``not`` only when the site enables it (Qlik does not document it). Property paths are matched
case-insensitively and walk into references (``stream.name``) and collections (``tags.name``); on a
collection a comparison holds when any element satisfies it, and each comparison is checked on its own.
Strings compare case-insensitively; GUIDs may be unquoted; enums accept their number or name; dates
compare as instants. Anything else is refused as Qlik refuses it: ``Cannot parse the expression``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from qliksim.times import instant

GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_OPERATORS = frozenset({"eq", "ne", "gt", "ge", "lt", "le", "sw", "ew", "so"})
_STRING_ONLY = frozenset({"sw", "ew", "so"})
_ORDERING = frozenset({"gt", "ge", "lt", "le"})

#: Enumerations QRS filters accept by name, keyed by the (lower-cased) property name.
ENUMS: dict[str, dict[str, int]] = {
    "tasktype": {"reload": 0, "externalprogram": 1, "usersync": 2, "distribute": 3, "preload": 4},
    "status": {
        name.lower(): number
        for number, name in enumerate(
            [
                "NeverStarted",
                "Triggered",
                "Started",
                "Queued",
                "AbortInitiated",
                "Aborting",
                "Aborted",
                "FinishedSuccess",
                "FinishedFail",
                "Skipped",
                "Retry",
                "Error",
                "Reset",
                "DistributionQueue",
                "DistributionRunning",
            ]
        )
    },
    "detailstype": {"error": 0, "warning": 1, "information": 2},
    "availabilitystatus": {
        "notapplicable": 0,
        "available": 1,
        "noactiveroute": 2,
        "noconfiguredroute": 3,
        "notsynced": 4,
        "notmigrated": 5,
    },
    "servicetype": {
        "repository": 0,
        "proxy": 1,
        "scheduler": 2,
        "engine": 3,
        "appmigration": 4,
        "printing": 5,
    },
    "servicestate": {
        "initializing": 0,
        "certificatesnotinstalled": 1,
        "running": 2,
        "nocommunication": 3,
        "disabled": 4,
        "unknown": 5,
    },
    "abortreason": {"undefined": 0, "manual": 1, "timeout": 2, "deletedtask": 3},
}


class FilterError(ValueError):
    """The expression cannot be used; QRS answers 400 ``Cannot parse the expression: <filter>``."""


@dataclass(frozen=True)
class Literal:
    kind: str  # string, guid, number, bool, null, name
    value: Any


@dataclass(frozen=True)
class Comparison:
    path: tuple[str, ...]
    operator: str
    literal: Literal


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class Junction:
    operator: str  # "and" | "or"
    operands: tuple[Node, ...]


Node = Comparison | Not | Junction


# --- Lexer ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "(", ")", "string", "guid", "number", "word"
    text: str
    value: Any = None


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == " ":
            position += 1
        elif char in "()":
            tokens.append(_Token(char, char))
            position += 1
        elif char == "'":
            value, position = _string(text, position)
            tokens.append(_Token("string", value, value))
        elif match := GUID.match(text, position):
            tokens.append(_Token("guid", match.group(), match.group().lower()))
            position = match.end()
        elif match := _NUMBER.match(text, position):
            number = float(match.group()) if "." in match.group() else int(match.group())
            tokens.append(_Token("number", match.group(), number))
            position = match.end()
        elif match := _PATH.match(text, position):
            tokens.append(_Token("word", match.group()))
            position = match.end()
        else:
            raise FilterError(f"unexpected character {char!r} at position {position}")
    return tokens


def _string(text: str, start: int) -> tuple[str, int]:
    """A quoted string starting at ``start``; ``''`` inside it is one quote."""
    out: list[str] = []
    position = start + 1
    while position < len(text):
        char = text[position]
        if char == "'":
            if text.startswith("''", position):
                out.append("'")
                position += 2
                continue
            return "".join(out), position + 1
        out.append(char)
        position += 1
    raise FilterError("unterminated string")


# --- Parser --------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[_Token], allow_not: bool) -> None:
        self.tokens = tokens
        self.position = 0
        self.allow_not = allow_not

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise FilterError("unexpected end of expression")
        self.position += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() == word:
            self.position += 1
            return True
        return False

    def parse(self) -> Node:
        node = self.or_expression()
        if self.peek() is not None:
            raise FilterError(f"unexpected {self.peek().text!r}")  # type: ignore[union-attr]
        return node

    def or_expression(self) -> Node:
        operands = [self.and_expression()]
        while self.keyword("or"):
            operands.append(self.and_expression())
        return operands[0] if len(operands) == 1 else Junction("or", tuple(operands))

    def and_expression(self) -> Node:
        operands = [self.unary()]
        while self.keyword("and"):
            operands.append(self.unary())
        return operands[0] if len(operands) == 1 else Junction("and", tuple(operands))

    def unary(self) -> Node:
        if self.allow_not and self.keyword("not"):
            return Not(self.primary())
        return self.primary()

    def primary(self) -> Node:
        token = self.peek()
        if token is not None and token.kind == "(":
            self.take()
            node = self.or_expression()
            if self.take().kind != ")":
                raise FilterError("missing ')'")
            return node
        return self.comparison()

    def comparison(self) -> Comparison:
        path = self.take()
        if path.kind != "word" or path.text.lower() in ("and", "or", "not"):
            raise FilterError(f"expected a property name, got {path.text!r}")
        operator = self.take()
        if operator.kind != "word" or operator.text.lower() not in _OPERATORS:
            raise FilterError(f"expected an operator, got {operator.text!r}")
        return Comparison(tuple(path.text.lower().split(".")), operator.text.lower(), self.literal())

    def literal(self) -> Literal:
        token = self.take()
        if token.kind in ("string", "guid", "number"):
            return Literal(token.kind, token.value)
        if token.kind == "word" and "." not in token.text:
            word = token.text.lower()
            if word in ("true", "false"):
                return Literal("bool", word == "true")
            if word == "null":
                return Literal("null", None)
            return Literal("name", word)
        raise FilterError(f"expected a value, got {token.text!r}")


def parse_filter(text: str, allow_not: bool = False) -> Node | None:
    """Parse a filter; None for an empty one. Raises FilterError."""
    if not text.strip():
        return None
    return _Parser(_tokens(text), allow_not).parse()


# --- Evaluation ----------------------------------------------------------------------------------------

_MISSING = object()


def _walk(node: Any, path: tuple[str, ...], found: list[bool]) -> Iterator[Any]:
    """Every value at ``path`` below ``node``; collections are entered element by element."""
    if isinstance(node, list):
        if not node:
            found[0] = True
            yield None
            return
        for item in node:
            yield from _walk(item, path, found)
        return
    if not path:
        found[0] = True
        yield node
        return
    if node is None:
        found[0] = True
        yield None
        return
    if not isinstance(node, dict):
        yield _MISSING
        return
    segment = path[0]
    for key, value in node.items():
        if key.lower() == segment:
            yield from _walk(value, path[1:], found)
            return
    yield _MISSING


def _instant(text: str) -> datetime.datetime | None:
    try:
        return instant(text)
    except ValueError:
        return None


def _compare(value: Any, operator: str, literal: Literal, prop: str) -> bool:
    if literal.kind == "null":
        if operator not in ("eq", "ne"):
            raise FilterError("null can only be compared with eq or ne")
        return (value is None) == (operator == "eq")
    if value is None:
        return operator == "ne"
    if isinstance(value, bool):
        if literal.kind != "bool" or operator not in ("eq", "ne"):
            raise FilterError(f"{prop} is a boolean")
        return bool(value == literal.value) == (operator == "eq")
    if isinstance(value, (int, float)):
        target = literal.value
        if literal.kind == "name":
            names = ENUMS.get(prop)
            if names is None or literal.value not in names:
                raise FilterError(f"{literal.value!r} is not a value of {prop}")
            target = names[literal.value]
        elif literal.kind == "string" and literal.value.lstrip("-").isdigit():
            target = int(literal.value)
        elif literal.kind != "number":
            raise FilterError(f"{prop} is a number")
        if operator in _STRING_ONLY:
            raise FilterError(f"{operator} applies to strings only")
        return _order(value, operator, target)
    if isinstance(value, str):
        if literal.kind in ("bool", "number", "name"):
            raise FilterError(f"{prop} is a string")
        text = str(literal.value)
        if operator in _ORDERING:
            left, right = _instant(value), _instant(text)
            if left is None or right is None:
                raise FilterError(f"{operator} does not apply to strings")
            return _order(left, operator, right)
        left_text, right_text = value.casefold(), text.casefold()
        if operator == "eq":
            return left_text == right_text
        if operator == "ne":
            return left_text != right_text
        if operator == "sw":
            return left_text.startswith(right_text)
        if operator == "ew":
            return left_text.endswith(right_text)
        return right_text in left_text  # so
    raise FilterError(f"{prop} cannot be compared")


def _order(left: Any, operator: str, right: Any) -> bool:
    if operator == "eq":
        return bool(left == right)
    if operator == "ne":
        return bool(left != right)
    if operator == "gt":
        return bool(left > right)
    if operator == "ge":
        return bool(left >= right)
    if operator == "lt":
        return bool(left < right)
    return bool(left <= right)


class _Known:
    """Remembers which property paths resolved on at least one entity."""

    def __init__(self) -> None:
        self.paths: set[tuple[str, ...]] = set()


def _evaluate(node: Node, entity: dict[str, Any], known: _Known) -> bool:
    if isinstance(node, Comparison):
        found = [False]
        values = list(_walk(entity, node.path, found))
        if found[0]:
            known.paths.add(node.path)
        return any(
            _compare(value, node.operator, node.literal, node.path[-1])
            for value in values
            if value is not _MISSING
        )
    if isinstance(node, Not):
        return not _evaluate(node.operand, entity, known)
    if node.operator == "and":
        return all(_evaluate(operand, entity, known) for operand in node.operands)
    return any(_evaluate(operand, entity, known) for operand in node.operands)


def _comparisons(node: Node) -> Iterator[Comparison]:
    if isinstance(node, Comparison):
        yield node
    elif isinstance(node, Not):
        yield from _comparisons(node.operand)
    else:
        for operand in node.operands:
            yield from _comparisons(operand)


def apply_filter(node: Node | None, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entities matching ``node``. FilterError for a property no entity has, or a type mismatch."""
    if node is None:
        return list(entities)
    known = _Known()
    # Every comparison is checked against every entity, so that a property unknown to all of them is
    # reported even where and/or would have skipped it.
    matched = []
    for entity in entities:
        for comparison in _comparisons(node):
            _evaluate(comparison, entity, known)
        if _evaluate(node, entity, known):
            matched.append(entity)
    if entities:
        for comparison in _comparisons(node):
            if comparison.path not in known.paths:
                raise FilterError(f"unknown property {'.'.join(comparison.path)}")
    return matched


def parse_orderby(text: str) -> list[tuple[tuple[str, ...], bool]]:
    """``Name asc, Status desc`` as [(path, descending)]."""
    order = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or not _PATH.fullmatch(words[0]):
            raise FilterError(f"cannot sort by {part.strip()!r}")
        direction = words[1].lower() if len(words) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise FilterError(f"unknown sort direction {words[1]!r}")
        order.append((tuple(words[0].lower().split(".")), direction == "desc"))
    return order


def sort_entities(
    entities: list[dict[str, Any]], order: list[tuple[tuple[str, ...], bool]]
) -> list[dict[str, Any]]:
    result = list(entities)
    for path, descending in reversed(order):
        result.sort(key=_sort_key(path), reverse=descending)
    return result


def _sort_key(path: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[int, Any]]:
    def key(entity: dict[str, Any]) -> tuple[int, Any]:
        value = next((v for v in _walk(entity, path, [False]) if v is not _MISSING and v is not None), None)
        if value is None:
            return (0, "")
        if isinstance(value, str):
            return (1, value.casefold())
        return (2, value)

    return key
