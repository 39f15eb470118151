"""The schedule file: upstream's ``butlerSchedule:`` YAML, read without writing and written atomically.

Upstream rewrites the file with a partial list at every start-up and writes it in place, so a crash leaves
half a file, and it overwrites edits an admin made while it ran. Here loading never writes; saving writes a
temporary file next to the target, fsyncs it and renames it over, and refuses when the file changed since
Butler last read or wrote it.

Reading follows js-yaml, which upstream uses (YAML 1.2 core: ``yes``, ``no``, ``on``, ``12:30`` stay text),
except that timestamp-like values stay text too instead of becoming dates. Writing follows upstream's style:
2-space indentation, block lists indented under their key, strings quoted only when a reader could take them
for something else, long strings folded. Comments are lost on the first save, as upstream loses them (PyYAML
does not keep them); unknown keys, of the file and of each entry, are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from butler.errors import BadRequest, Conflict, Unavailable

ROOT_KEY = "butlerSchedule"
STARTUP_STATES = ("start", "started", "stop", "stopped")
KNOWN_STATES = ("started", "stopped")
#: Upstream's key order, which the REST answers and the file use.
FIELDS = (
    "name",
    "cronSchedule",
    "timezone",
    "qlikSenseTaskId",
    "startupState",
    "tags",
    "id",
    "created",
    "lastKnownState",
)
_REQUIRED = ("name", "cronSchedule", "qlikSenseTaskId", "startupState", "id")


class ScheduleFileError(Unavailable):
    """The schedule file, or one entry of it, cannot be used; ``str()`` names the file, line and entry."""

    def __init__(
        self,
        path: Path,
        problem: str,
        *,
        line: int | None = None,
        index: int | None = None,
        entry: str | None = None,
    ) -> None:
        self.path = path
        self.problem = problem
        #: 1-based, as editors count.
        self.line = line
        #: Position in the ``butlerSchedule`` list, 0-based.
        self.index = index
        #: The entry's id and name, as far as it has them.
        self.entry = entry
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f", line {self.line}"
        if self.index is not None:
            where += f", {ROOT_KEY}[{self.index}]"
            if self.entry:
                where += f" ({self.entry})"
        return f"{where}: {self.problem}"


class ScheduleFileChanged(ScheduleFileError, Conflict):
    """Someone else changed the file since Butler last read or wrote it; saving would overwrite their edit."""


class InvalidSchedule(BadRequest):
    """A schedule's fields have the wrong type or value; ``at`` names the field."""


@dataclass
class Schedule:
    """One entry of the schedule file.

    Field names are upstream's keys, so that REST answers and the file need no mapping. ``extra`` holds the
    entry's keys Butler does not know, written back as they were.
    """

    name: str
    cronSchedule: str
    qlikSenseTaskId: str
    startupState: str
    id: str
    timezone: str | None = None
    #: No tags and an empty list are written alike: without the key.
    tags: tuple[str, ...] = ()
    created: str | None = None
    lastKnownState: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The entry in upstream's key order, unset fields left out, unknown keys last."""
        out: dict[str, Any] = {}
        for key in FIELDS:
            value = getattr(self, key)
            if value is None or (key == "tags" and not value):
                continue
            out[key] = list(value) if key == "tags" else value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """Check the types and values of the fields; raises InvalidSchedule naming the first bad one."""
        for key in _REQUIRED:
            if data.get(key) is None:
                raise InvalidSchedule(f"must have required property '{key}'", at="")
        for key in ("name", "cronSchedule", "qlikSenseTaskId", "startupState", "id"):
            _text(data, key)
        for key in ("timezone", "created", "lastKnownState"):
            if data.get(key) is not None:
                _text(data, key)
        if data["startupState"] not in STARTUP_STATES:
            raise InvalidSchedule(f"must be one of {', '.join(STARTUP_STATES)}", at="startupState")
        state = data.get("lastKnownState")
        if state is not None and state not in KNOWN_STATES:
            raise InvalidSchedule(f"must be one of {', '.join(KNOWN_STATES)}", at="lastKnownState")
        tags = data.get("tags")
        if tags is None:
            tags = []
        if not isinstance(tags, list):
            raise InvalidSchedule("must be a list of strings", at="tags")
        for position, tag in enumerate(tags):
            if not isinstance(tag, str):
                raise InvalidSchedule(f"must be a string, not {_kind(tag)} (quote it)", at=f"tags/{position}")
        return cls(
            name=data["name"],
            cronSchedule=data["cronSchedule"],
            qlikSenseTaskId=data["qlikSenseTaskId"],
            startupState=data["startupState"],
            id=data["id"],
            timezone=data.get("timezone"),
            tags=tuple(tags),
            created=data.get("created"),
            lastKnownState=state,
            extra={key: value for key, value in data.items() if key not in FIELDS},
        )


def _text(data: Mapping[str, Any], key: str) -> None:
    if not isinstance(data[key], str):
        raise InvalidSchedule(f"must be a string, not {_kind(data[key])} (quote it)", at=key)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


@dataclass(frozen=True)
class Fingerprint:
    """What the file looked like when Butler last read or wrote it."""

    mtime_ns: int
    size: int
    sha256: str


@dataclass
class LoadResult:
    """A read schedule file: the entries that loaded, one problem per entry that did not, and the rest."""

    path: Path
    schedules: list[Schedule]
    problems: list[ScheduleFileError]
    #: The file's top-level keys in file order, ``butlerSchedule`` among them; saved back around the new list.
    document: dict[str, Any]
    #: (position, entry as read) of the entries left out; saving puts them back so a typo does not lose them.
    left_out: list[tuple[int, Any]]
    #: None when there is no file.
    fingerprint: Fingerprint | None
    #: The line of each loaded schedule's ``cronSchedule``, by id: where to look when it cannot run.
    cron_lines: dict[str, int] = field(default_factory=dict)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML 1.2 core scalars, as js-yaml reads them."""


class _Dumper(yaml.SafeDumper):
    """Upstream's layout; quotes every string a YAML 1.1 or 1.2 reader could take for something else."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # js-yaml indents a list under its key; PyYAML would write it flush with the key.
        super().increase_indent(flow, False)

    def choose_scalar_style(self) -> str:
        style: str = super().choose_scalar_style()
        event = self.event
        if (
            isinstance(event, yaml.ScalarEvent)
            and style in ("'", "|", ">")
            and _ODD_BREAKS.intersection(event.value)
        ):
            # PyYAML writes these line breaks raw outside double quotes, and readers turn them into others.
            return '"'
        if (
            isinstance(event, yaml.ScalarEvent)
            and event.tag == "tag:yaml.org,2002:str"
            and event.style is None
            and style in ("", "'")
            and not self.flow_level
            and not self.simple_key_context
            and self.analysis is not None
            and self.analysis.allow_block
        ):
            # js-yaml's choice: a literal block for several lines, a folded one for a line too long to fit.
            if "\n" in event.value:
                return "|"
            if len(event.value) > self.best_width - (self.indent or 0):
                return ">"
        return style

    def represent_quoted(self, data: _Quoted) -> yaml.ScalarNode:
        return self.represent_scalar("tag:yaml.org,2002:str", str(data), style="'")

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def write_folded(self, text: str) -> None:
        # PyYAML's, except that a line breaks before the word that would cross the width, not after it, as
        # js-yaml folds: upstream's files then come back byte for byte.
        hints = self.determine_block_hints(text)
        self.write_indicator(">" + hints, True)
        if hints[-1:] == "+":
            self.open_ended = True
        self.write_line_break()
        leading_space = True
        spaces = False
        breaks = True
        start = end = 0
        while end <= len(text):
            ch = text[end] if end < len(text) else None
            if breaks:
                if ch is None or ch not in _BREAKS:
                    if not leading_space and ch is not None and ch != " " and text[start] == "\n":
                        self.write_line_break()
                    leading_space = ch == " "
                    for br in text[start:end]:
                        self.write_line_break(None if br == "\n" else br)
                    if ch is not None:
                        self.write_indent()
                    start = end
            elif spaces:
                if ch != " ":
                    if (
                        start + 1 == end
                        and not leading_space
                        and text[start - 1] not in _BREAKS
                        and self.column + 1 + _word_length(text, end) > self.best_width
                    ):
                        # Only a single space between words of a line that starts with neither a space nor a
                        # break may become a line break: YAML keeps the breaks around more-indented lines.
                        self.write_indent()
                    else:
                        self._write_text(text[start:end])
                    start = end
            elif ch is None or ch in " " + _BREAKS:
                self._write_text(text[start:end])
                if ch is None:
                    self.write_line_break()
                start = end
            if ch is not None:
                breaks = ch in _BREAKS
                spaces = ch == " "
            end += 1

    def _write_text(self, data: str) -> None:
        self.column += len(data)
        self.stream.write(data)


_BREAKS = "\n\x85\u2028\u2029"
_ODD_BREAKS = frozenset(_BREAKS[1:])


def _word_length(text: str, start: int) -> int:
    end = start
    while end < len(text) and text[end] not in " " + _BREAKS:
        end += 1
    return end - start


class _Quoted(str):
    """A string upstream always writes in single quotes: cron expressions (``*`` would start an alias)."""

    __slots__ = ()


_Dumper.add_representer(_Quoted, _Dumper.represent_quoted)


def _core_schema() -> None:
    resolvers = {
        first: [
            (tag, regexp)
            for tag, regexp in entries
            if not tag.endswith((":bool", ":int", ":float", ":timestamp"))
        ]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _Loader.yaml_implicit_resolvers = resolvers
    core = [
        ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), "tTfF"),
        ("tag:yaml.org,2002:int", _INT, "-+0123456789"),
        ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789."),
    ]
    for tag, regexp, first in core:
        _Loader.add_implicit_resolver(tag, regexp, list(first))
        # Strings that only YAML 1.2 reads as numbers (``1e3``, ``0o17``) are quoted as well.
        _Dumper.add_implicit_resolver(tag, regexp, list(first))
    for tag, construct in _SCALARS.items():
        if tag.endswith((":bool", ":int", ":float")):
            _Loader.add_constructor(tag, lambda _, node, construct=construct: construct(str(node.value)))


_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


def _int_of(value: str) -> int:
    if value.startswith(("0o", "0x")):
        return int(value, 0)
    return int(value, 10)


def _float_of(value: str) -> float:
    value = value.lower()
    if value.endswith(".inf"):
        return float("-inf") if value.startswith("-") else float("inf")
    if value == ".nan":
        return float("nan")
    return float(value)


#: How each implicitly typed plain scalar becomes a value, by the tag its resolver gives it.
_SCALARS: dict[str, Callable[[str], Any]] = {
    "tag:yaml.org,2002:str": str,
    "tag:yaml.org,2002:null": lambda _: None,
    "tag:yaml.org,2002:bool": lambda value: value.lower() == "true",
    "tag:yaml.org,2002:int": _int_of,
    "tag:yaml.org,2002:float": _float_of,
}

_core_schema()


def resolve(configured: str, config_dir: Path) -> Path:
    """The schedule file's path; a relative one is taken from the config file's folder, not the CWD."""
    path = Path(configured).expanduser()
    return path if path.is_absolute() else config_dir / path


def load(path: Path) -> LoadResult:
    """Read the schedule file without ever writing it.

    A missing or empty file holds no schedules. Raises ScheduleFileError when the file as a whole cannot be
    used (not YAML, no ``butlerSchedule`` list); an entry that cannot be used is reported in ``problems`` and
    left out.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
            info = os.fstat(file.fileno())
    except FileNotFoundError:
        return LoadResult(path, [], [], {}, [], None)
    except OSError as exc:
        raise ScheduleFileError(path, f"cannot read the schedule file: {exc.strerror or exc}") from exc
    fingerprint = Fingerprint(info.st_mtime_ns, len(data), hashlib.sha256(data).hexdigest())
    plain = _read_plain(data)
    if plain is not None:
        with contextlib.suppress(_NeedsNodes):
            return _entries(path, plain[0], fingerprint, None, plain[1])
    # A problem is reported with its line, which only the node tree knows.
    loader = _Loader(data)
    try:
        root = loader.get_single_node()
        document = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ScheduleFileError(path, f"not valid YAML: {exc.problem or exc}", line=line) from exc
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
        raise ScheduleFileError(path, f"not valid YAML: {' '.join(str(exc).split())}") from exc
    finally:
        loader.dispose()
    return _entries(path, document, fingerprint, root, {})


class _NeedsNodes(Exception):
    """What was read needs the node tree: a YAML feature the plain reader leaves to it, or a problem."""


def _read_plain(data: bytes) -> tuple[Any, dict[int, int]] | None:
    """The document, and the line of each entry's ``cronSchedule`` by position, read from the parser's events.

    Ten times leaner than PyYAML's node tree, which holds two marks per value until the whole file is
    built: a file of 10,000 schedules is read in a third of the time and without the node tree's 60 MB peak.
    Returns None for what it leaves to the node tree: tags, anchors and aliases, complex keys, several
    documents, and anything that is not valid YAML.
    """
    loader = _Loader(data)
    try:
        return _build(loader)
    except (_NeedsNodes, yaml.YAMLError, UnicodeDecodeError, ValueError):
        return None
    finally:
        loader.dispose()


def _build(loader: Any) -> tuple[Any, dict[int, int]]:
    resolvers = loader.yaml_implicit_resolvers
    containers: list[Any] = []
    keys: list[Any] = []  # per open container: the mapping key awaiting its value, or _NO_KEY
    cron_lines: dict[int, int] = {}
    root: Any = None
    documents = 0
    while True:
        event = loader.get_event()
        kind = type(event)
        if kind is yaml.ScalarEvent:
            if event.tag is not None or event.anchor is not None:
                raise _NeedsNodes
            text = event.value
            tag = (
                loader.resolve(yaml.ScalarNode, text, event.implicit)
                if event.implicit[0] and (not text or text[0] in resolvers or None in resolvers)
                else "tag:yaml.org,2002:str"
            )
            construct = _SCALARS.get(tag)
            if construct is None:
                raise _NeedsNodes
            value = construct(text)
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            if event.tag is not None or event.anchor is not None:
                raise _NeedsNodes
            value = {} if kind is yaml.MappingStartEvent else []
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            containers.pop()
            keys.pop()
            if keys:
                keys[-1] = _NO_KEY
            continue
        elif kind is yaml.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise _NeedsNodes
            continue
        elif kind is yaml.StreamEndEvent:
            return root, cron_lines
        elif kind is yaml.AliasEvent:
            raise _NeedsNodes
        else:
            continue
        if not containers:
            root = value
        elif type(containers[-1]) is list:
            containers[-1].append(value)
        elif keys[-1] is _NO_KEY:
            if type(value) is list or type(value) is dict:
                raise _NeedsNodes
            keys[-1] = value
            continue
        else:
            key = keys[-1]
            containers[-1][key] = value
            if key == "cronSchedule" and len(containers) == 3 and keys[0] == ROOT_KEY:
                cron_lines[len(containers[1]) - 1] = event.start_mark.line + 1
        if type(value) is list or type(value) is dict:
            # A mapping's key stays until its value ends: the entries are found under ``butlerSchedule``.
            containers.append(value)
            keys.append(_NO_KEY)
        elif containers:
            keys[-1] = _NO_KEY


_NO_KEY = object()


def _entries(
    path: Path,
    document: Any,
    fingerprint: Fingerprint,
    root: yaml.Node | None,
    cron_by_position: dict[int, int],
) -> LoadResult:
    """The schedules of a read document. Without ``root`` (the node tree), raises _NeedsNodes at the first
    problem, which is then read again with it to name the line."""
    if document is None:
        return LoadResult(path, [], [], {}, [], fingerprint)
    if not isinstance(document, dict):
        _needs(root)
        raise ScheduleFileError(
            path, f"must be a mapping with the key {ROOT_KEY}, not {_kind(document)}", line=1
        )
    if ROOT_KEY not in document:
        _needs(root)
        raise ScheduleFileError(path, f"has no {ROOT_KEY} key; is it the schedule file?", line=1)
    entries = document[ROOT_KEY]
    list_node = _value_node(root, ROOT_KEY)
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        _needs(root)
        line = _line(list_node) if list_node is not None else None
        raise ScheduleFileError(path, f"{ROOT_KEY} must be a list, not {_kind(entries)}", line=line)
    item_nodes = list(list_node.value) if isinstance(list_node, yaml.SequenceNode) else []
    schedules: list[Schedule] = []
    problems: list[ScheduleFileError] = []
    left_out: list[tuple[int, Any]] = []
    seen: dict[str, tuple[int, int | None]] = {}
    cron_lines: dict[str, int] = {}
    for index, entry in enumerate(entries):
        node = item_nodes[index] if index < len(item_nodes) else None
        line = _line(node) if node is not None else None
        try:
            if not isinstance(entry, dict):
                raise InvalidSchedule(f"must be a mapping of schedule fields, not {_kind(entry)}", at="")
            schedule = Schedule.from_dict(entry)
            if schedule.id in seen:
                first, first_line = seen[schedule.id]
                at = f" (line {first_line})" if first_line is not None else ""
                raise InvalidSchedule(f"is already the id of {ROOT_KEY}[{first}]{at}", at="id")
        except InvalidSchedule as exc:
            _needs(root)
            field_line = _field_line(node, exc.at) if exc.at else None
            problems.append(
                ScheduleFileError(path, str(exc), line=field_line or line, index=index, entry=_label(entry))
            )
            left_out.append((index, entry))
            continue
        seen[schedule.id] = (index, line)
        schedules.append(schedule)
        cron_line = _field_line(node, "cronSchedule") if root is not None else cron_by_position.get(index)
        if cron_line is not None:
            cron_lines[schedule.id] = cron_line
    return LoadResult(path, schedules, problems, document, left_out, fingerprint, cron_lines)


def _needs(root: yaml.Node | None) -> None:
    if root is None:
        raise _NeedsNodes


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _value_node(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    found: yaml.Node | None = None
    # The last of repeated keys, whose value is the one read.
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            found = value_node
    return found


def _field_line(node: yaml.Node | None, at: str) -> int | None:
    parts = at.split("/")
    value = _value_node(node, parts[0])
    if value is None:
        return None
    if len(parts) > 1 and isinstance(value, yaml.SequenceNode) and parts[1].isdigit():
        items = value.value
        if int(parts[1]) < len(items):
            return _line(items[int(parts[1])])
    return _line(value)


def _label(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    parts = []
    if isinstance(entry.get("id"), str | int):
        parts.append(f"id {entry['id']}")
    if isinstance(entry.get("name"), str):
        parts.append(repr(" ".join(entry["name"].split())))
    return ", ".join(parts) or None


def document_of(
    schedules: Sequence[Schedule],
    base: Mapping[str, Any] | None = None,
    left_out: Sequence[tuple[int, Any]] = (),
) -> dict[str, Any]:
    """The document to write: ``base``'s top-level keys with the schedules, and ``left_out`` back in place."""
    entries: list[Any] = []
    for schedule in schedules:
        entry = schedule.as_dict()
        entry["cronSchedule"] = _Quoted(entry["cronSchedule"])
        entries.append(entry)
    for index, entry in sorted(left_out, key=lambda item: item[0]):
        entries.insert(min(index, len(entries)), entry)
    document = dict(base or {})
    document[ROOT_KEY] = entries
    return document


def render(document: Mapping[str, Any]) -> bytes:
    """The file's bytes for a parsed document, in upstream's style."""
    text = yaml.dump(
        dict(document),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        indent=2,
        width=80,
    )
    return text.encode("utf-8")


def fingerprint_of(path: Path) -> Fingerprint | None:
    """The file's fingerprint now; None when it does not exist."""
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            digest = hashlib.file_digest(file, "sha256").hexdigest()
    except FileNotFoundError:
        return None
    return Fingerprint(info.st_mtime_ns, info.st_size, digest)


def _same(known: Fingerprint | None, current: Fingerprint | None) -> bool:
    if known is None or current is None:
        return known is current
    # A touch or a rewrite with the same bytes is not a change; the content decides.
    return known.size == current.size and known.sha256 == current.sha256


def replace_atomically(path: Path, data: bytes, before_replace: Callable[[], None] | None = None) -> None:
    """Put ``data`` in ``path`` so that a crash at any moment leaves either the old file or the new one.

    ``before_replace`` runs when the new file is on disk, just before it takes the old one's place; raising
    there leaves the old file.
    """
    folder = path.parent
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            if sys.platform != "win32":
                try:
                    mode = stat.S_IMODE(os.stat(path).st_mode)
                except FileNotFoundError:
                    mode = 0o644
                os.fchmod(file.fileno(), mode)
        if before_replace is not None:
            before_replace()
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    # The rename is durable only once the folder is; Windows cannot open a folder for this.
    if sys.platform == "win32":
        return
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems do not sync folders; the rename itself is still atomic
    finally:
        os.close(handle)


_UNREAD = object()


class ScheduleFile:
    """The schedule file of one Butler: loads and saves it, and never overwrites someone else's edit."""

    def __init__(self, path: Path) -> None:
        # A link stays a link: the file it points to is the one replaced.
        self.path = Path(os.path.realpath(path))
        self._known: object = _UNREAD
        self._document: dict[str, Any] = {}
        self._left_out: list[tuple[int, Any]] = []
        self._lock = asyncio.Lock()

    @property
    def fingerprint(self) -> Fingerprint | None:
        """The file as Butler last read or wrote it; None when it did not exist (or was never read)."""
        return self._known if isinstance(self._known, Fingerprint) else None

    async def load(self) -> LoadResult:
        """Read the file (see ``load``) and remember it; ``save`` keeps what Butler does not manage."""
        async with self._lock:
            result = await asyncio.to_thread(load, self.path)
            self._known = result.fingerprint
            # The entries are written from the schedules: the keys around the list and its place are kept.
            self._document = {
                key: None if key == ROOT_KEY else value for key, value in result.document.items()
            }
            self._left_out = result.left_out
            return result

    def changed_on_disk(self) -> bool:
        """Whether the file differs from what Butler last read or wrote (or exists and was never read)."""
        current = fingerprint_of(self.path)
        if self._known is _UNREAD:
            return current is not None
        known = self._known if isinstance(self._known, Fingerprint) else None
        return not _same(known, current)

    async def save(self, schedules: Sequence[Schedule]) -> None:
        """Write ``schedules`` with the file's other keys and the entries that did not load, atomically.

        Raises ScheduleFileChanged when the file changed since Butler last read or wrote it, ScheduleFileError
        when it cannot be written. Saves wait for each other.
        """
        async with self._lock:
            document = document_of(schedules, self._document, self._left_out)
            known = self._known
            self._known = await asyncio.to_thread(self._write, document, known)

    def _write(self, document: dict[str, Any], known: object) -> Fingerprint:
        try:
            data = render(document)
        except (yaml.YAMLError, RecursionError) as exc:
            raise ScheduleFileError(self.path, f"cannot be written as YAML: {exc}") from exc
        try:
            # Checked as late as possible, so that an edit made while the new file was written is not lost.
            replace_atomically(self.path, data, lambda: self._check_unchanged(known))
            info = os.stat(self.path)
        except OSError as exc:
            raise ScheduleFileError(self.path, f"cannot be written: {exc.strerror or exc}") from exc
        return Fingerprint(info.st_mtime_ns, len(data), hashlib.sha256(data).hexdigest())

    def _check_unchanged(self, known: object) -> None:
        current = fingerprint_of(self.path)
        if known is _UNREAD:
            if current is not None:
                raise ScheduleFileChanged(self.path, "exists but Butler has not read it; load it first")
            return
        if not _same(known if isinstance(known, Fingerprint) else None, current):
            raise ScheduleFileChanged(self.path, "changed on disk since Butler read it; reload it first")


__all__ = [
    "FIELDS",
    "ROOT_KEY",
    "Fingerprint",
    "InvalidSchedule",
    "LoadResult",
    "Schedule",
    "ScheduleFile",
    "ScheduleFileChanged",
    "ScheduleFileError",
    "document_of",
    "fingerprint_of",
    "load",
    "render",
    "replace_atomically",
    "resolve",
]
