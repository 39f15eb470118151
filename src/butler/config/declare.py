"""One declaration per config key: the settings classes declare the keys, everything else is derived.

A settings class (``butler.config.settings``) declares each key it reads as a dataclass field made by
``setting`` (the key's path below the class's section, its spec, default and a one-line help) or ``part`` (a
nested settings class, in a section of its own or in the same one). From those fields come the validation
tree with its defaults (``section_of``), the defaults of the settings objects themselves, the objects built
from a validated file (``build``) and the text of ``butler config check --explain`` (``explain``). A key is
therefore added, renamed or re-defaulted in one place, and the validator, the settings object, the
explanation and the README check cannot disagree about it.

Keys upstream Butler knows but this version does not use are named in the class's ``UPSTREAM_ONLY`` (paths
relative to its section): they are accepted without checks and explained as such.

Sections repeated with the same keys (one per alert event) are declared once: ``part`` also takes
``{name: class}`` (a dict of settings objects, one section each), ``items`` reads a list of sections, and
``variant`` makes a class whose keys have other defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

from butler.config.schema import Key, ListOf, Section, Spec, default_of

_DECLARED = "butler.config"

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class _Declared:
    """What a settings field says about its key(s)."""

    key: str
    help: str
    entry: Key | None = None  # a key of the file
    part: type[Any] | None = None  # or a nested settings class
    parts: Mapping[str, type[Any]] | None = None  # or one per name, each in section key.name
    items: type[Any] | None = None  # or a list of them
    addition: bool = False  # for a part: every key below is an addition
    additions: Collection[str] = ()  # for parts: the names whose keys are all additions
    convert: Callable[[Any], Any] | None = None
    file: bool = False


def setting(
    key: str,
    spec: Spec,
    default: Any = None,
    *,
    help: str,
    required: bool = False,
    addition: bool = False,
    convert: Callable[[Any], Any] | None = None,
    file: bool = False,
) -> Any:
    """A settings field read from ``key`` (dotted, relative to the class's section).

    ``default`` is the key's value when it is absent, as written in the file (None: null, an empty list,
    or a section's own defaults); ``convert`` turns the file's value into the attribute's; ``file`` marks a
    file path, resolved against the config file's folder.
    """
    if file:
        help += " (a relative path is resolved against the config file's folder)"
    entry = Key(spec, required=required, default=default, help=help, addition=addition)
    declared = _Declared(key, help, entry=entry, convert=convert, file=file)
    if required:
        return dataclasses.field(metadata={_DECLARED: declared})
    # The attribute's default is the file's default converted, so the two cannot drift apart.
    return dataclasses.field(
        default=_attribute(declared, default_of(entry), Path()), metadata={_DECLARED: declared}
    )


def part(
    key: str,
    cls: type[Any] | Mapping[str, type[Any]],
    *,
    help: str = "",
    addition: bool = False,
    additions: Collection[str] = (),
) -> Any:
    """A field holding the nested settings class ``cls``, read from section ``key`` ("" for the same one).

    ``addition``: the whole section is an addition to upstream's keys. Given ``{name: cls}`` instead, the
    field holds a dict of settings objects by name, each read from section ``key.name`` (``name`` when
    ``key`` is ""), those named in ``additions`` being additions.
    """
    assert key or not addition, "an addition needs a section of its own"
    if isinstance(cls, Mapping):
        classes = dict(cls)
        declared = _Declared(key, help, parts=classes, additions=frozenset(additions))
        return dataclasses.field(
            default_factory=lambda: {name: inner() for name, inner in classes.items()},
            metadata={_DECLARED: declared},
        )
    declared = _Declared(key, help, part=cls, addition=addition)
    if _required(section_of(cls)):
        return dataclasses.field(metadata={_DECLARED: declared})
    return dataclasses.field(default_factory=cls, metadata={_DECLARED: declared})


def items(key: str, cls: type[Any], *, help: str, addition: bool = False) -> Any:
    """A field holding a tuple of settings objects ``cls``, read from the list at ``key`` (each item a
    section declared by ``cls``, so its paths are resolved and its defaults filled in as for a section)."""
    entry = Key(ListOf(section_of(cls)), help=help, addition=addition)
    declared = _Declared(key, help, entry=entry, items=cls)
    return dataclasses.field(default=(), metadata={_DECLARED: declared})


def variant(cls: type[_T], name: str, **defaults: Any) -> type[_T]:
    """A subclass of settings class ``cls`` whose fields named in ``defaults`` get those defaults (as
    written in the file), or for a ``part`` field, that settings class instead.

    Sections that differ only in their defaults (one per event) are then declared once.
    """
    fields: list[tuple[str, Any, Any]] = []
    for attribute, default in defaults.items():
        field = {f.name: f for f in dataclasses.fields(cast(Any, cls))}[attribute]
        declared: _Declared = field.metadata[_DECLARED]
        if declared.part is not None:
            declared = dataclasses.replace(declared, part=default)
            new = dataclasses.field(default_factory=default, metadata={_DECLARED: declared})
        else:
            assert declared.entry is not None and not declared.entry.required, attribute
            entry = dataclasses.replace(declared.entry, default=default)
            declared = dataclasses.replace(declared, entry=entry)
            new = dataclasses.field(
                default=_attribute(declared, default_of(entry), Path()), metadata={_DECLARED: declared}
            )
        fields.append((attribute, field.type, new))
    made = dataclasses.make_dataclass(name, fields, bases=(cls,), frozen=True, kw_only=True)
    made.__module__ = cls.__module__
    made.__doc__ = cls.__doc__
    return cast(type[_T], made)


def section_of(cls: type[Any]) -> Section:
    """The validation tree of the keys ``cls`` declares (a fresh one on each call)."""
    section = Section()
    for declared in _declarations(cls):
        if declared.parts is not None:
            for name, inner_cls in declared.parts.items():
                inner = section_of(inner_cls)
                if name in declared.additions:
                    _mark_addition(inner)
                _place(section, f"{declared.key}.{name}" if declared.key else name, Key(inner))
        elif declared.part is None:
            assert declared.entry is not None
            _place(section, declared.key, declared.entry)
        elif declared.key:
            inner = section_of(declared.part)
            if declared.addition:
                _mark_addition(inner)
            _place(section, declared.key, Key(inner, help=declared.help))
        else:
            _merge(section, section_of(declared.part))
    for path in getattr(cls, "UPSTREAM_ONLY", ()):
        *parents, name = path.split(".")
        holder = _section_at(section, parents)
        holder.tolerated |= {name}
    _summarize(section)
    return section


def build(cls: type[Any], values: Mapping[str, Any], base_dir: Path, **extra: Any) -> Any:
    """``cls`` made from validated ``values`` (its section, defaults filled in), plus ``extra`` fields."""
    arguments: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        declared = field.metadata.get(_DECLARED)
        if declared is None:
            continue
        value = _value_at(values, declared.key)
        if declared.part is not None:
            arguments[field.name] = build(declared.part, value, base_dir)
        elif declared.parts is not None:
            arguments[field.name] = {
                name: build(inner, value[name], base_dir) for name, inner in declared.parts.items()
            }
        elif declared.items is not None:
            arguments[field.name] = tuple(build(declared.items, item, base_dir) for item in value)
        else:
            arguments[field.name] = _attribute(declared, value, base_dir)
    return cls(**arguments, **extra)


def declared_values(settings: Any, prefix: str) -> Iterator[tuple[str, Any, Spec]]:
    """Every key a settings object was built from, with its full path below ``prefix``, the value it holds
    (converted, as Butler uses it) and its spec; an item of a list of sections is named ``key[index]``."""
    for field in dataclasses.fields(settings):
        declared = field.metadata.get(_DECLARED)
        if declared is None:
            continue
        value = getattr(settings, field.name)
        path = f"{prefix}.{declared.key}" if declared.key else prefix
        if declared.part is not None:
            yield from declared_values(value, path)
        elif declared.parts is not None:
            for name, inner in value.items():
                yield from declared_values(inner, f"{path}.{name}" if declared.key else f"{prefix}.{name}")
        elif declared.items is not None:
            for index, item in enumerate(value):
                yield from declared_values(item, f"{path}[{index}]")
        else:
            assert declared.entry is not None
            yield path, value, declared.entry.spec


def leaf_keys(section: Section, prefix: str) -> Iterator[tuple[str, Key]]:
    """Every key below ``section`` that is not itself a section, with its full path."""
    for name, entry in section.keys.items():
        path = f"{prefix}.{name}"
        if isinstance(entry.spec, Section):
            yield from leaf_keys(entry.spec, path)
        else:
            yield path, entry


class UnknownKey(LookupError):
    """``explain`` was asked about a key that is not declared; ``suggestion`` is the likely one, if any."""

    def __init__(self, path: str, suggestion: str | None) -> None:
        super().__init__(path)
        self.path = path
        self.suggestion = suggestion


def explain(root: Section, path: str) -> str:
    """What the key at dotted ``path`` below ``root`` means: origin, help, type and default."""
    names = path.split(".")
    section, entry = root, None
    for index, name in enumerate(names):
        here = ".".join(names[: index + 1])
        if entry is not None:
            if not isinstance(entry.spec, Section):
                raise UnknownKey(here, None)
            section = entry.spec
        entry = section.keys.get(name)
        if entry is None:
            if name in section.tolerated:
                return (
                    f"{here} (upstream key)\n  a key of upstream Butler this version does not use: accepted, "
                    "and ignored with everything below it"
                )
            # Looser than for a file's keys: someone asking about a key often knows only part of its name.
            near = section.suggest(name, cutoff=0.6)
            raise UnknownKey(here, ".".join([*names[:index], near]) if near else None)
    assert entry is not None
    lines = [f"{path} ({'addition' if entry.addition else 'upstream key'})"]
    if entry.help:
        lines.append(f"  {entry.help}")
    if isinstance(entry.spec, Section):
        lines.append("  type: a section with the keys " + ", ".join(entry.spec.keys))
        if entry.spec.tolerated:
            lines.append("  accepted and ignored (upstream's): " + ", ".join(sorted(entry.spec.tolerated)))
    else:
        lines.append(f"  type: {entry.spec.expected}")
    if entry.required:
        lines.append("  default: none, the key is required")
    elif not isinstance(entry.spec, Section):
        lines.append(f"  default: {_show(default_of(entry))}")
    return "\n".join(lines)


def _declarations(cls: type[Any]) -> Iterator[_Declared]:
    for field in dataclasses.fields(cls):
        declared = field.metadata.get(_DECLARED)
        if declared is not None:
            yield declared


def _section_at(section: Section, names: list[str]) -> Section:
    """The section at ``names`` below ``section``, made on the way where the declarations only imply it."""
    for name in names:
        entry = section.keys.setdefault(name, Key(Section()))
        assert isinstance(entry.spec, Section), name
        section = entry.spec
    return section


def _mark_addition(section: Section) -> None:
    # Copies: a setting's Key is shared by every section made from its class.
    for name, entry in section.keys.items():
        spec = entry.spec
        if isinstance(spec, Section):
            spec = dataclasses.replace(spec, keys=dict(spec.keys))
            _mark_addition(spec)
        section.keys[name] = dataclasses.replace(entry, spec=spec, addition=True)


def _merge(section: Section, inner: Section) -> None:
    """Add ``inner``'s keys to ``section``: two classes may declare keys of one section (as the Slack
    webhook of the REST API and Slack's alerts do), but never the same key."""
    section.tolerated |= inner.tolerated
    for name, entry in inner.keys.items():
        present = section.keys.get(name)
        if present is None:
            section.keys[name] = entry
            continue
        assert isinstance(present.spec, Section) and isinstance(entry.spec, Section), f"{name} declared twice"
        # Merged into a copy, as for additions: the present Key may be a setting's, shared.
        merged = dataclasses.replace(present.spec, keys=dict(present.spec.keys))
        _merge(merged, entry.spec)
        section.keys[name] = dataclasses.replace(present, spec=merged, help=present.help or entry.help)


def _place(section: Section, path: str, entry: Key) -> None:
    *parents, name = path.split(".")
    holder = _section_at(section, parents)
    assert name not in holder.keys, f"{path} is declared twice"
    holder.keys[name] = entry


def _summarize(section: Section) -> None:
    """A section must be present when a key in it must; it is an addition when all its keys are."""
    for entry in section.keys.values():
        if isinstance(entry.spec, Section) and entry.spec.keys:
            _summarize(entry.spec)
            entry.required = _required(entry.spec)
            entry.addition = all(inner.addition for inner in entry.spec.keys.values())


def _required(section: Section) -> bool:
    return any(entry.required for entry in section.keys.values())


def _value_at(values: Mapping[str, Any], path: str) -> Any:
    value: Any = values
    for name in path.split(".") if path else ():
        value = value[name]
    return value


def _attribute(declared: _Declared, value: Any, base_dir: Path) -> Any:
    if declared.file:
        value = _file(declared, value, base_dir)
    return declared.convert(value) if declared.convert else value


def _file(declared: _Declared, value: str | None, base_dir: Path) -> Path | None:
    # An empty path means the default where null is not allowed, and "no file" where it is.
    if not value:
        assert declared.entry is not None
        nullable = getattr(declared.entry.spec, "nullable", False)
        value = None if nullable else declared.entry.default
    return base_dir / Path(value).expanduser() if value else None


def _show(value: Any) -> str:
    """A default as it would be written in the config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return str(yaml.safe_dump(value, default_flow_style=True, sort_keys=False)).strip()
    return str(value) if value != "" else "''"


__all__ = [
    "UnknownKey",
    "build",
    "declared_values",
    "explain",
    "items",
    "leaf_keys",
    "part",
    "section_of",
    "setting",
    "variant",
]
