"""A table of routes for a service whose paths are read segment by segment, as the Repository Service's.

A pattern is a path of segments: a literal (``start``), a parameter shown as its name in the route's label
(``{id}``: the label ``task/{id}/start`` counts every task's starts together), or a parameter shown as its
value (``<collection>``: ``app/full`` and ``tag/full`` are counted apart), optionally limited to a set of
values. Routes are tried in the order they are listed; the first whose method, length and segments fit
answers. A route may have no handler: a path that must not reach a broader route listed after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Generic, NamedTuple, TypeVar

H = TypeVar("H")


class _Segment(NamedTuple):
    literal: str | None  # for a literal segment
    name: str  # for a parameter
    allowed: frozenset[str] | None  # the values a parameter may take; None for any


class _Route(NamedTuple, Generic[H]):
    segments: tuple[_Segment, ...]
    handler: H | None
    # The label: the pattern itself, or where it shows values, one piece per segment (None: the value).
    label: str | tuple[str | None, ...]


class Match(NamedTuple, Generic[H]):
    handler: H | None
    label: str  # the route, as calls are counted by
    args: dict[str, str]


class RouteTable(Generic[H]):
    def __init__(
        self,
        routes: Iterable[tuple[str, str, H | None]],
        values: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """``routes`` are (method, pattern, handler); ``values`` limits a parameter to these values."""
        allowed = {name: frozenset(choices) for name, choices in (values or {}).items()}
        # Indexed by method and length: a request is compared with the few routes that could fit it.
        self._routes: dict[tuple[str, int], list[_Route[H]]] = {}
        for method, pattern, handler in routes:
            texts = pattern.split("/")
            segments = tuple(_segment(text, allowed) for text in texts)
            shown = [None if text.startswith("<") else text for text in texts]
            label = pattern if None not in shown else tuple(shown)
            self._routes.setdefault((method, len(texts)), []).append(_Route(segments, handler, label))

    def match(self, method: str, parts: list[str]) -> Match[H]:
        """The route of ``parts`` (the path's segments); one without a handler when no route fits."""
        for route in self._routes.get((method, len(parts)), ()):
            args: dict[str, str] = {}
            for (literal, name, allowed), part in zip(route.segments, parts, strict=True):
                if literal is not None:
                    if part != literal:
                        break
                elif allowed is not None and part not in allowed:
                    break
                else:
                    args[name] = part
            else:
                label = route.label
                if not isinstance(label, str):
                    label = "/".join([p if x is None else x for x, p in zip(label, parts, strict=True)])
                return Match(route.handler, label, args)
        return Match(None, "/".join(parts), {})


def _segment(text: str, allowed: dict[str, frozenset[str]]) -> _Segment:
    if text[:1] in ("{", "<") and text[-1:] in ("}", ">"):
        return _Segment(None, text[1:-1], allowed.get(text[1:-1]))
    return _Segment(text, "", None)
