"""A small declarative validator for Butler's YAML config file.

Butler's config is a deep tree of plain YAML values. Validating it with a generic JSON-schema library gives
messages such as ``'abc' is not of type 'integer'``; an admin editing a 1,300-line file needs the key path,
what was expected and, for a typo, the key they probably meant. Each spec here checks one value, appends
messages of the form ``Butler.restServerConfig.serverPort: expected an integer 1-65535, got 'abc'`` and
returns the value with defaults filled in. A section or list with nothing but comments below it (a YAML null)
counts as empty, as admins leave the template's optional parts.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

_MISSING: Any = object()


def describe(value: Any) -> str:
    """Render a config value the way it appears in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


class Spec:
    """One expected value. ``check`` returns the value to keep (or None after reporting an error)."""

    @property
    def expected(self) -> str:
        return "a value"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        raise NotImplementedError

    def fail(self, value: Any, path: str, errors: list[str]) -> None:
        errors.append(f"{path}: expected {self.expected}, got {describe(value)}")


@dataclass
class Bool(Spec):
    @property
    def expected(self) -> str:
        return "true or false"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, bool):
            return value
        self.fail(value, path, errors)
        return None


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


@dataclass
class Number(Spec):
    """A number within bounds: an integer or a decimal (seconds, for example)."""

    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    #: What the messages call a value of this spec.
    kind: ClassVar[str] = "a number"

    @property
    def expected(self) -> str:
        return self._range + (" or null" if self.nullable else "")

    @property
    def _range(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"{self.kind} {_plain(self.minimum)}-{_plain(self.maximum)}"
        if self.minimum is not None:
            return f"{self.kind} >= {_plain(self.minimum)}"
        return self.kind

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is of this spec's kind, bounds aside."""
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if value is None and self.nullable:
            return None
        in_range = (
            self.accepts(value)
            and (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
        )
        if in_range:
            return value
        self.fail(value, path, errors)
        return None


@dataclass
class Int(Number):
    """An integer within bounds."""

    kind: ClassVar[str] = "an integer"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Str(Spec):
    nullable: bool = False

    @property
    def expected(self) -> str:
        return "a string or null" if self.nullable else "a string"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, str) or (value is None and self.nullable):
            return value
        self.fail(value, path, errors)
        return None


@dataclass
class Secret(Str):
    """A password or token: a value of the wrong type is named by its kind only, since the message goes to
    the console and the log (a numeric password left unquoted in the YAML would be shown whole)."""

    def fail(self, value: Any, path: str, errors: list[str]) -> None:
        if isinstance(value, bool | Mapping | list) or value is None:
            shown = describe(value)
        else:
            shown = "a number" if isinstance(value, int | float) else f"a {type(value).__name__}"
        errors.append(f"{path}: expected {self.expected}, got {shown} (not shown: a secret)")


@dataclass
class Enum(Spec):
    choices: tuple[str, ...] = ()

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(self.choices)

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, str) and value in self.choices:
            return value
        self.fail(value, path, errors)
        return None


@dataclass
class ListOf(Spec):
    """A list of items; a null is an empty list, or stays null when ``nullable`` (then null means unset)."""

    item: Spec = field(default_factory=Spec)
    nullable: bool = False

    @property
    def expected(self) -> str:
        return f"a list of {self.item.expected}"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if value is None:
            return None if self.nullable else []
        if not isinstance(value, list):
            self.fail(value, path, errors)
            return []
        return [self.item.check(item, f"{path}[{index}]", errors) for index, item in enumerate(value)]


@dataclass
class Key:
    """A key of a section: its spec, whether it must be present, the default when it is not, a one-line help,
    and whether it is an addition to upstream Butler's keys."""

    spec: Spec
    required: bool = False
    default: Any = None
    help: str = ""
    addition: bool = False


@dataclass
class Section(Spec):
    """A mapping with known keys. Unknown keys are errors, with a suggestion for near misses.

    ``tolerated`` names keys that upstream Butler knows but this section does not use: they are accepted
    and reported back so the caller can warn about them once. A null is an empty section unless the section
    is not ``nullable`` (the file itself must be a mapping).
    """

    keys: dict[str, Key] = field(default_factory=dict)
    tolerated: frozenset[str] = frozenset()
    nullable: bool = True

    @property
    def expected(self) -> str:
        return "a mapping"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if value is None and self.nullable:
            value = {}
        if not isinstance(value, Mapping):
            self.fail(value, path, errors)
            return None
        result: dict[str, Any] = {}
        for name, item in value.items():
            if not isinstance(name, str):
                errors.append(f"{path}: keys must be strings, got {describe(name)}")
                continue
            key = self.keys.get(name)
            if key is None:
                if name not in self.tolerated:
                    near = self.suggest(name)
                    errors.append(
                        f"{path}.{name}: unknown key" + (f" (did you mean '{near}'?)" if near else "")
                    )
                continue
            result[name] = key.spec.check(item, f"{path}.{name}", errors)
        for name, key in self.keys.items():
            if name in result:
                continue
            if key.required:
                errors.append(f"{path}.{name}: required key is missing ({key.spec.expected})")
            else:
                result[name] = default_of(key)
        return result

    def suggest(self, name: str, cutoff: float = 0.75) -> str | None:
        """The known key an unknown ``name`` was probably meant to be: the same in another case, or close."""
        known = [*self.keys, *self.tolerated]
        lowered = {k.lower(): k for k in known}
        if name.lower() in lowered:
            return lowered[name.lower()]
        close = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
        return close[0] if close else None


def default_of(key: Key) -> Any:
    """The value of an absent optional key; an absent section gets its own defaults filled in."""
    if isinstance(key.spec, Section) and key.default is None:
        return key.spec.check({}, "", [])
    if isinstance(key.spec, ListOf) and key.default is None and not key.spec.nullable:
        return []
    return key.default


def validate(spec: Spec, value: Any, path: str) -> tuple[Any, list[str]]:
    """Check ``value`` against ``spec``; return the value with defaults filled in and the error messages."""
    errors: list[str] = []
    result = spec.check(value, path, errors)
    return result, errors
