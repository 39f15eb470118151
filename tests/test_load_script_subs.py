"""``butler_subs.qvs``, ours and upstream's: the request each sub builds, read out of the script with the
sub's parameters given test values, sent as Qlik's REST connector sends it to a real Butler connected to the
simulated Sense site, and the answer checked for what the sub expects: a 2xx, JSON, and every field the sub
reads afterwards."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
import yarl

from butler.config import ENDPOINT_FLAGS
from butler.load_script import subs_text
from tests.conftest import Broker, StartButler, run_butler, udp_ports
from tests.receivers import Receiver, status
from tests.test_apps import app_id, engine_config
from tests.test_events import FAILING_TASK, open_session, udp_config
from tests.test_monitors_e2e import NEVER_RELEASE
from tests.test_task_start import APP1, APP2, butler_config

UPSTREAM = Path(__file__).resolve().parent / "data" / "upstream" / "butler_subs.qvs"

# --- Reading the subs ---------------------------------------------------------------------------------------


@dataclass
class Sub:
    name: str
    params: list[str]
    lines: list[str]


@dataclass
class Request:
    """What a sub sends, and what it selects from the answer and reads afterwards."""

    connection: str
    url: str
    body: str | None
    headers: dict[str, str]
    selected: list[str]  # fields of the answer's root
    nested: dict[str, list[str]]  # fields of objects under a key of the root
    reads: list[str]


def strip_comment(line: str) -> str:
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif line.startswith("//", index):
            return line[:index]
    return line


def read_subs(text: str) -> dict[str, Sub]:
    subs: dict[str, Sub] = {}
    current: Sub | None = None
    for raw in text.splitlines():
        line = strip_comment(raw).strip()
        if current is None:
            start = re.match(r"sub\s+(\w+)\s*(?:\((.*)\))?\s*$", line, re.IGNORECASE)
            if start:
                params = [p.strip() for p in (start.group(2) or "").split(",") if p.strip()]
                current = Sub(start.group(1), params, [])
        elif re.match(r"end\s+sub\b", line, re.IGNORECASE):
            subs[current.name] = current
            current = None
        elif line:
            current.lines.append(line)
    return subs


CONTROL = re.compile(r"(if\b.*\bthen|elseif\b.*\bthen|else|end\s*if|endif|for\b.*|next\b.*)$", re.IGNORECASE)


def statements(lines: list[str]) -> list[tuple[bool, str]]:
    """(is it a control line, its text): control lines end at the line's end, statements at a ``;`` outside
    quotes."""
    found: list[tuple[bool, str]] = []
    pending = ""
    for line in lines:
        if not pending and CONTROL.match(line.rstrip(";").strip()):
            found.append((True, line.rstrip(";").strip()))
            continue
        pending += line + "\n"
        quote, start = "", 0
        for index, char in enumerate(pending):
            if quote:
                quote = "" if char == quote else quote
            elif char in "'\"[":
                quote = "]" if char == "[" else char
            elif char == ";":
                found.append((False, pending[start:index].strip()))
                start = index + 1
        pending = pending[start:].lstrip()
    assert not pending.strip(), f"unterminated statement: {pending}"
    return found


Node = Any  # a statement's text, or ("if", [(condition, body)], else body), or ("for", header, body)


def block(items: list[tuple[bool, str]], index: int, ends: tuple[str, ...]) -> tuple[list[Node], int]:
    nodes: list[Node] = []
    while index < len(items):
        control, text = items[index]
        low = text.lower()
        if control and re.match("|".join(ends) or "$^", low):
            return nodes, index
        if control and low.startswith("if"):
            branches = []
            otherwise: list[Node] = []
            condition = re.sub(r"\s*then$", "", text[2:], flags=re.IGNORECASE)
            body, index = block(items, index + 1, (r"elseif\b", r"else\b", r"end\s*if", r"endif"))
            branches.append((condition, body))
            while True:
                low = items[index][1].lower()
                if low.startswith("elseif"):
                    condition = re.sub(r"\s*then$", "", items[index][1][6:], flags=re.IGNORECASE)
                    body, index = block(items, index + 1, (r"elseif\b", r"else\b", r"end\s*if", r"endif"))
                    branches.append((condition, body))
                elif low.startswith("else"):
                    otherwise, index = block(items, index + 1, (r"end\s*if", r"endif"))
                else:
                    break
            nodes.append(("if", branches, otherwise))
        elif control and low.startswith("for"):
            body, index = block(items, index + 1, (r"next\b",))
            nodes.append(("for", text, body))
        else:
            assert not control, f"unexpected {text!r}"
            nodes.append(text)
        index += 1
    return nodes, index


TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|('(?:[^']|'')*')|([A-Za-z_][\w.]*)|(<>|<=|>=|[=<>&+\-*/(),]))")


class Expression:
    """A Qlik script expression, evaluated: strings, numbers, variables, the functions the subs use."""

    def __init__(self, text: str, script: Script) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        while text[position:].strip():
            match = TOKEN.match(text, position)
            assert match, f"cannot read {text[position:]!r}"
            kind = ("number", "string", "name", "op")[match.lastindex - 1]  # type: ignore[operator]
            self.tokens.append((kind, match.group(match.lastindex or 0)))
            position = match.end()
        self.script = script
        self.at = 0

    def value(self) -> Any:
        result = self.either()
        assert self.at == len(self.tokens), f"left over: {self.tokens[self.at :]}"
        return result

    def peek(self) -> str:
        return self.tokens[self.at][1].lower() if self.at < len(self.tokens) else ""

    def take(self) -> str:
        self.at += 1
        return self.tokens[self.at - 1][1]

    def either(self) -> Any:
        return self.binary({"or": lambda a, b: truth(a) or truth(b)}, self.both)

    def both(self) -> Any:
        return self.binary({"and": lambda a, b: truth(a) and truth(b)}, self.negation)

    def binary(self, operators: dict[str, Callable[[Any, Any], Any]], operand: Callable[[], Any]) -> Any:
        left = operand()
        while self.peek() in operators:
            apply = operators[self.take().lower()]
            left = apply(left, operand())
        return left

    def negation(self) -> Any:
        if self.peek() == "not":
            self.take()
            return not truth(self.negation())
        return self.comparison()

    def comparison(self) -> Any:
        left = self.concatenation()
        if self.peek() in ("=", "<>", "<", ">", "<=", ">="):
            op = self.take()
            right = self.concatenation()
            a, b = (number(left), number(right))
            if a is None or b is None:
                a, b = str(left or ""), str(right or "")
            return {"=": a == b, "<>": a != b, "<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
        return left

    def concatenation(self) -> Any:
        return self.binary({"&": lambda a, b: text_of(a) + text_of(b)}, self.sum)

    def sum(self) -> Any:
        plus, minus = (lambda a, b: num(a) + num(b)), (lambda a, b: num(a) - num(b))
        return self.binary({"+": plus, "-": minus}, self.product)

    def product(self) -> Any:
        return self.binary({"*": lambda a, b: num(a) * num(b), "/": lambda a, b: num(a) / num(b)}, self.unary)

    def unary(self) -> Any:
        if self.peek() == "-":
            self.take()
            return -num(self.unary())
        return self.primary()

    def primary(self) -> Any:
        kind, token = self.tokens[self.at]
        self.at += 1
        if kind == "number":
            return float(token)
        if kind == "string":
            return token[1:-1].replace("''", "'")
        if token == "(":
            inner = self.either()
            assert self.take() == ")"
            return inner
        if self.peek() == "(":
            self.take()
            args: list[Any] = []
            while self.peek() != ")":
                args.append(self.either())
                if self.peek() == ",":
                    self.take()
            self.take()
            return self.script.function(token, args)
        if token.lower() == "null":
            return None
        return self.script.variables.get(token)


def number(value: Any) -> float | None:
    if isinstance(value, bool):
        return -1.0 if value else 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def num(value: Any) -> float:
    """A number as Qlik's arithmetic takes it: what is not one counts as 0."""
    return number(value) or 0.0


def text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return str(int(value)) if value == int(value) else str(value)
    return str(value)


def truth(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    as_number = number(value)
    return bool(as_number) if as_number is not None else False


class Script:
    """Runs one sub up to the request it makes (the ``SQL ... WITH CONNECTION`` statement)."""

    def __init__(self, variables: dict[str, str], tables: dict[str, list[dict[str, str]]]) -> None:
        self.variables = dict(variables)
        self.tables = tables
        self.connection = ""

    def expand(self, text: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda m: self.variables.get(m.group(1), ""), text)

    def function(self, name: str, args: list[Any]) -> Any:
        name = name.lower()
        if name == "replace":
            return text_of(args[0]).replace(text_of(args[1]), text_of(args[2]))
        if name == "left":
            return text_of(args[0])[: int(number(args[1]) or 0)]
        if name == "len":
            return float(len(text_of(args[0])))
        if name == "chr":
            return chr(int(number(args[0]) or 0))
        if name == "index":
            return float(
                index_of(text_of(args[0]), text_of(args[1]), int(number(args[2]) if len(args) > 2 else 1))
            )
        if name == "noofrows":
            return float(len(self.tables[text_of(args[0])]))
        if name == "peek":
            return self.tables[text_of(args[2])][int(number(args[1]) or 0)][text_of(args[0])]
        raise AssertionError(f"the reader does not know {name}()")

    def run(self, nodes: list[Node], text: str) -> Request | None:
        for node in nodes:
            if isinstance(node, str):
                request = self.statement(self.expand(node), text)
                if request is not None:
                    return request
            elif node[0] == "if":
                _, branches, otherwise = node
                chosen = next(
                    (body for cond, body in branches if truth(Expression(self.expand(cond), self).value())),
                    otherwise,
                )
                request = self.run(chosen, text)
                if request is not None:
                    return request
            else:
                request = self.loop(node[1], node[2], text)
                if request is not None:
                    return request
        return None

    def loop(self, header: str, body: list[Node], text: str) -> Request | None:
        header = self.expand(header)
        each = re.match(r"for\s+each\s+(\w+)\s+in\s+FieldValueList\((.*)\)$", header, re.IGNORECASE)
        if each:
            name = text_of(Expression(each.group(2), self).value())
            values = [row[name] for rows in self.tables.values() for row in rows if name in row]
            variable = each.group(1)
        else:
            counted = re.match(r"for\s+(\w+)\s*=\s*(.+?)\s+to\s+(.+)$", header, re.IGNORECASE)
            assert counted, f"unknown loop {header!r}"
            first = int(number(Expression(counted.group(2), self).value()) or 0)
            last = int(number(Expression(counted.group(3), self).value()) or 0)
            values = [str(i) for i in range(first, last + 1)]
            variable = counted.group(1)
        for value in values:
            self.variables[variable] = value
            request = self.run(body, text)
            if request is not None:
                return request
        return None

    def statement(self, text: str, sub_text: str) -> Request | None:
        assignment = re.match(r"(let|set)\s+(\w+)\s*(=\s*(.*))?$", text, re.IGNORECASE | re.DOTALL)
        if assignment:
            kind, name, has_value, value = assignment.groups()
            if has_value is not None:
                self.variables[name] = (
                    value.strip() if kind.lower() == "set" else text_of(Expression(value, self).value())
                )
            return None
        connect = re.match(r"LIB\s+CONNECT\s+TO\s+'([^']*)'", text, re.IGNORECASE)
        if connect:
            self.connection = connect.group(1)
            return None
        if re.search(r"WITH\s+CONNECTION", text, re.IGNORECASE):
            return self.request(text, sub_text)
        return None

    def request(self, text: str, sub_text: str) -> Request:
        select = re.search(r"SQL\s+SELECT(.*?)FROM\s+JSON", text, re.IGNORECASE | re.DOTALL)
        assert select, text
        columns = select.group(1)
        nested = {
            table: re.findall(r'"([^"]+)"', inner)
            for inner, table in re.findall(
                r'\(\s*SELECT(.*?)FROM\s+"([^"]+)"\s+FK\s+"[^"]+"\s*\)', columns, re.IGNORECASE | re.DOTALL
            )
        }
        root = re.sub(r"\(\s*SELECT.*?\)", "", columns, flags=re.IGNORECASE | re.DOTALL)
        opening = re.search(r"WITH\s+CONNECTION\s*\(", text, re.IGNORECASE)
        assert opening, text
        words = re.findall(r'"((?:[^"]|"")*)"|(\w[\w-]*)|(\))', text[opening.end() :])
        url, body, headers = "", None, {}
        index = 0
        while index < len(words):
            quoted, word, close = words[index]
            if close:
                break
            keyword = word.upper()
            if keyword == "URL":
                url = words[index + 1][0].replace('""', '"')
                index += 2
            elif keyword == "BODY":
                body = words[index + 1][0].replace('""', '"')
                index += 2
            elif keyword in ("HTTPHEADER", "QUERY"):
                name, value = (words[index + 1][0], words[index + 2][0].replace('""', '"'))
                if keyword == "QUERY":
                    url += ("&" if "?" in url else "?") + f"{name}={value}"
                else:
                    headers[name] = value
                index += 3
            else:
                raise AssertionError(f"unknown WITH CONNECTION item {quoted or word!r}")
        after = re.split(r"WITH\s+CONNECTION", sub_text, maxsplit=1, flags=re.IGNORECASE)[-1]
        return Request(
            connection=self.connection,
            url=url,
            body=body,
            headers=headers,
            selected=[f for f in re.findall(r'"([^"]+)"', root) if not f.startswith("__")],
            nested={t: [f for f in fs if not f.startswith("__")] for t, fs in nested.items()},
            reads=reads_after(after),
        )


def index_of(text: str, part: str, nth: int) -> int:
    """Qlik's Index(): the 1-based position of the nth occurrence (counted from the end when negative)."""
    positions = [i + 1 for i in range(len(text)) if text.startswith(part, i)]
    try:
        return positions[nth - 1] if nth > 0 else positions[nth]
    except IndexError:
        return 0


def reads_after(text: str) -> list[str]:
    """The answer's fields the script uses once the request is made: ``Peek('field', ...)``, and the fields
    of LOAD statements over the connector's table."""
    reads = re.findall(r"Peek\('([^']+)'", text, re.IGNORECASE)
    for load in re.findall(r"LOAD(.*?)RESIDENT\s+RestConnectorMasterTable", text, re.IGNORECASE | re.DOTALL):
        load = re.sub(r"\bas\s+(\[[^\]]*\]|\"[^\"]*\"|\w+)", "", load, flags=re.IGNORECASE)
        reads += [f for f in re.findall(r"\[([^\]]+)\](?!\s*:)", load) if not f.startswith("__")]
    return list(dict.fromkeys(reads))


def extract(sub: Sub, args: list[str], variables: dict[str, str], tables: dict[str, Any]) -> Request:
    assert len(args) == len(sub.params), f"{sub.name} takes {sub.params}"
    script = Script({**variables, **dict(zip(sub.params, args, strict=True))}, tables)
    nodes, _ = block(statements(sub.lines), 0, ())
    request = script.run(nodes, "\n".join(sub.lines))
    assert request is not None, f"{sub.name} makes no request"
    return request


# --- Sending a sub's request as Qlik's REST connector does ------------------------------------------------

#: The two data connections as the subs' header tells admins to create them: the method, and the body and
#: headers sent unless the sub's WITH CONNECTION gives its own.
CONNECTIONS = {
    "Butler_GET": ("GET", None, {}),
    "Butler_POST": ("POST", "{}", {"Content-Type": "application/json"}),
}


@dataclass
class Answer:
    request: Request
    method: str
    headers: dict[str, str]
    status: int
    text: str
    json: Any = None


@dataclass
class SubsFile:
    """One subs file, its subs called against one Butler; every call is recorded."""

    subs: dict[str, Sub]
    http: aiohttp.ClientSession
    variables: dict[str, str]
    called: list[str] = field(default_factory=list)

    async def send(self, name: str, *args: str, tables: dict[str, Any] | None = None) -> Answer:
        request = extract(self.subs[name], list(args), self.variables, tables or {})
        method, default_body, default_headers = CONNECTIONS[request.connection]
        headers = {**default_headers, **request.headers}
        body = None if method == "GET" else (request.body if request.body is not None else default_body)
        async with self.http.request(
            method, yarl.URL(request.url), data=None if body is None else body.encode(), headers=headers
        ) as response:
            text = await response.text()
        self.called.append(name)
        return Answer(request, method, headers, response.status, text)

    async def call(
        self,
        name: str,
        *args: str,
        tables: dict[str, Any] | None = None,
        optional: frozenset[str] = frozenset(),
    ) -> Answer:
        """The sub's request sent, and its answer checked as the sub needs it: a 2xx, JSON (the connector
        reads the answer as JSON, whatever its content type), each field the sub reads present (those in
        ``optional`` may be missing, as the connector gives null for them)."""
        answer = await self.send(name, *args, tables=tables)
        assert 200 <= answer.status < 300, f"{name}: {answer.status} {answer.text}"
        request = answer.request
        if not answer.text:
            assert not request.reads, f"{name} reads {request.reads} from an empty answer"
            return answer
        answer.json = json.loads(answer.text)
        for read in request.reads:
            if read in optional:
                continue
            if read == "@Value":
                assert isinstance(answer.json, list), f"{name}: {answer.json}"
                assert all(not isinstance(v, dict | list) for v in answer.json), f"{name}: {answer.json}"
                continue
            rows = answer.json if isinstance(answer.json, list) else [answer.json]
            table = next((t for t, fields in request.nested.items() if read in fields), None)
            if table is None:
                assert read in request.selected, f"{name} reads {read!r}, which it does not select"
            else:
                rows = [item for row in rows for item in as_list(row[table])]
            assert rows, f"{name}: no rows to read {read!r} from: {answer.text}"
            for row in rows:
                assert read in row, f"{name} reads {read!r}, not in the answer {answer.text}"
        return answer


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- Butler, on the simulated site, with every endpoint on --------------------------------------------------


@dataclass
class Site:
    base: str
    folders: dict[str, Path]
    hook: Receiver
    slack: Receiver


@pytest.fixture
async def site(
    start_butler: StartButler,
    simulator: Any,
    site_certs: Any,
    broker: Broker,
    receivers: Callable[[], Awaitable[Receiver]],
    tmp_path: Path,
) -> Site:
    folders = {name: tmp_path / name for name in ("from", "to", "delete", "qvd", "made")}
    for path in folders.values():
        path.mkdir()
    slack, hook = await receivers(), await receivers()
    flags = {name: True for name in ENDPOINT_FLAGS if name not in ("senseStartTask", "keyValueStore")}
    task_port, session_port = udp_ports()
    document = udp_config(butler_config(simulator, site_certs, **flags), task_port, session_port)
    butler = document["Butler"]
    pair = [{"fromDirectory": str(folders["from"]), "toDirectory": str(folders["to"])}]
    butler["fileCopyApprovedDirectories"] = pair
    butler["fileMoveApprovedDirectories"] = pair
    butler["fileDeleteApprovedDirectories"] = [str(folders["delete"])]
    butler["createDirApprovedDirectories"] = [str(folders["made"])]
    butler["configDirectories"] = {"qvdPath": str(folders["qvd"])}
    butler["configEngine"] = engine_config(simulator)
    butler["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": broker.port}
    butler["slackNotification"] = {"enable": False, "restMessage": {"webhookURL": slack.url}}
    butler["webhookNotification"] = {
        "enable": True,
        "reloadTaskFailure": {
            "webhooks": [{"description": "ops", "webhookURL": hook.url, "httpMethod": "POST"}]
        },
    }
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(yaml.safe_dump({"butlerSchedule": []}))
    butler["scheduler"] = {"enable": True, "configfile": str(schedules)}
    butler["auditLog"] = {"enable": True, "file": str(tmp_path / "audit.jsonl")}
    butler["qlikSenseLicense"] = {"licenseRelease": {"enable": True, "neverRelease": NEVER_RELEASE}}
    simulator.udp.targets = [("127.0.0.1", task_port)]
    simulator.session_udp.targets = [("127.0.0.1", session_port)]
    return Site(await start_butler(document), folders, hook, slack)


@pytest.fixture
async def subs_files(site: Site) -> AsyncIterator[Callable[[str], SubsFile]]:
    async with aiohttp.ClientSession() as http:
        host, port = site.base.rsplit(":", 1)
        variables = {"vButlerHost": host, "vButlerPort": port}

        def open_file(which: str) -> SubsFile:
            text = subs_text() if which == "ours" else UPSTREAM.read_text(encoding="utf-8")
            return SubsFile(read_subs(text), http, variables)

        yield open_file


BOTH = pytest.mark.parametrize("which", ["ours", "upstream"])


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


# --- The subs, called -------------------------------------------------------------------------------------

#: The subs of both files that make no request to Butler.
NO_REQUEST = {"NiceTrace", "ButlerInit"}
#: The subs each test calls, every one of them: together every sub of both files that makes a request.
KEY_VALUE_SUBS = {
    "AddKeyValue",
    "GetKeyValue",
    "ExistsKeyValue",
    "GetAllKeysInNamespace",
    "GetKeyValueNamespaces",
    "DeleteKeyValue",
    "DeleteKeyValueNamespace",
}
TASK_SUBS = {
    "GetEnabledButlerAPIEndpoints",
    "StartTask",
    "StartTask_KeyValue",
    "GetKeyValue",
    "ReloadSenseApp",
    "GetTaskStatus",
}
FILE_SUBS = {"CopyFile", "MoveFile", "DeleteFile", "CreateDir", "CreateDirQVD"}
MESSAGE_SUBS = {"PostToMQTT", "PostToSlack"}
SERVICE_SUBS = {
    "ButlerPing",
    "Base62ToBase16",
    "Base16ToBase62",
    "GetApps",
    "GetAppScript",
    "GetActiveUserCount",
    "GetActiveUsers",
}
SCHEDULE_SUBS = {
    "CreateSchedule",
    "GetSchedules",
    "UpdateSchedule",
    "StartSchedule",
    "StopSchedule",
    "StartAllSchedules",
    "StopAllSchedules",
    "GetScheduleRuns",
    "DeleteSchedule",
}
MONITORING_SUBS = {"GetAlerts", "RetryAlert", "GetLicenseReleases", "GetAuditLog"}
GROUPS = (
    KEY_VALUE_SUBS,
    TASK_SUBS,
    FILE_SUBS,
    MESSAGE_SUBS,
    SERVICE_SUBS,
    SCHEDULE_SUBS,
    MONITORING_SUBS,
)


@BOTH
async def test_key_value_subs(subs_files: Callable[[str], SubsFile], which: str) -> None:
    subs = subs_files(which)
    await subs.call("AddKeyValue", "chain", "year", "2026", "0")
    await subs.call("AddKeyValue", "chain", "region", "north", "60")
    assert (await subs.call("GetKeyValue", "chain", "year", "vYear")).json["value"] == "2026"
    # Butler's answer, as upstream's, has no ttl: upstream's sub reads it as null.
    exists = await subs.call("ExistsKeyValue", "chain", "region", "vExists", optional=frozenset({"ttl"}))
    assert exists.json["keyExists"] is True and exists.json["keyValue"]["value"] == "north"
    listed = await subs.call("GetAllKeysInNamespace", "Keys", "chain")
    assert sorted(k["key"] for k in listed.json["keys"]) == ["region", "year"]
    assert "chain" in (await subs.call("GetKeyValueNamespaces", "Namespaces")).json
    await subs.call("DeleteKeyValue", "chain", "year")
    # No key, no keyValue: the connector leaves its fields null.
    gone = await subs.call(
        "ExistsKeyValue", "chain", "year", "vExists", optional=frozenset({"namespace", "key", "value", "ttl"})
    )
    assert gone.json["keyExists"] is False
    await subs.call("DeleteKeyValueNamespace", "chain")
    assert "chain" not in (await subs.call("GetKeyValueNamespaces", "Namespaces")).json
    assert_called(subs, KEY_VALUE_SUBS)


def assert_called(subs: SubsFile, names: set[str]) -> None:
    assert set(subs.called) == names & set(subs.subs), set(subs.called) ^ (names & set(subs.subs))


@BOTH
async def test_task_subs(subs_files: Callable[[str], SubsFile], which: str, simulator: Any) -> None:
    subs = subs_files(which)
    endpoints = await subs.call("GetEnabledButlerAPIEndpoints", "Endpoints")
    assert {"senseStartTask", "keyValueStore", "fileCopy"} <= set(endpoints.json)
    started = await subs.call("StartTask", APP1["taskId"], "", "", "", "")
    assert started.json["tasksId"]["started"] == [APP1]
    tables = {
        "TaskIds": [{"TaskIds.TaskId": APP2["taskId"]}],
        "Tags": [{"Tags.Tag": "startTask2"}],
        "CPs": [{"CPs.Name": "taskGroup", "CPs.Value": "tasks1"}],
        "KVs": [{"KVs.Namespace": "chain", "KVs.Key": "from", "KVs.Value": "StartTask", "KVs.TTL": "0"}],
    }
    several = await subs.call("StartTask", "-", "TaskIds", "Tags", "CPs", "KVs", tables=tables)
    assert APP2 in several.json["tasksId"]["started"]
    assert several.json["tasksTag"] and several.json["tasksCP"]
    await subs.call("StartTask_KeyValue", APP1["taskId"], "chain", "parameter", "from-script", "0")
    value = await subs.call("GetKeyValue", "chain", "parameter", "vValue")
    assert value.json["value"] == "from-script"
    app1 = app_id(simulator, "App1")
    reloaded = await subs.call("ReloadSenseApp", app1, "false", "0", "[]", "[]")
    assert reloaded.json["appId"] == app1
    if which == "ours":
        await until(lambda: task_finished(subs, APP1["taskId"]))
        task = await subs.call("GetTaskStatus", APP1["taskId"], "Status")
        assert (task.json["taskId"], task.json["status"]) == (APP1["taskId"], "FinishedSuccess")
    assert_called(subs, TASK_SUBS)


async def task_finished(subs: SubsFile, task_id: str) -> bool:
    answer = await subs.send("GetTaskStatus", task_id, "Status")
    return answer.status == 200 and json.loads(answer.text).get("status") == "FinishedSuccess"


@BOTH
async def test_file_subs(subs_files: Callable[[str], SubsFile], which: str, site: Site) -> None:
    subs = subs_files(which)
    folders = site.folders
    (folders["from"] / "a.qvd").write_text("copied")
    (folders["from"] / "b.qvd").write_text("moved")
    (folders["delete"] / "c.qvd").write_text("deleted")
    await subs.call("CopyFile", str(folders["from"] / "a.qvd"), str(folders["to"] / "a.qvd"), "true", "true")
    assert (folders["to"] / "a.qvd").read_text() == "copied"
    await subs.call("MoveFile", str(folders["from"] / "b.qvd"), str(folders["to"] / "b.qvd"), "true")
    assert (folders["to"] / "b.qvd").read_text() == "moved" and not (folders["from"] / "b.qvd").exists()
    await subs.call("DeleteFile", str(folders["delete"] / "c.qvd"))
    assert not (folders["delete"] / "c.qvd").exists()
    await subs.call("CreateDir", str(folders["made"] / "x" / "y"))
    assert (folders["made"] / "x" / "y").is_dir()
    await subs.call("CreateDirQVD", "sales/2026")
    assert (folders["qvd"] / "sales" / "2026").is_dir()
    assert_called(subs, FILE_SUBS)


@BOTH
async def test_message_subs(
    subs_files: Callable[[str], SubsFile], which: str, broker: Broker, site: Site
) -> None:
    subs = subs_files(which)
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe("sense/reloads")
        await subs.call("PostToMQTT", "sense/reloads", "Sales reloaded")
        async with asyncio.timeout(10):
            message = await anext(aiter(client.messages))
        assert bytes(message.payload).decode() == "Sales reloaded"  # type: ignore[arg-type]
    posted = await subs.call("PostToSlack", "sense-reloads", "Butler", "Sales reloaded", ":ghost:")
    assert posted.json["channel"] == "#sense-reloads"
    [(_, _, slack)] = site.slack.got
    assert (slack["channel"], slack["text"]) == ("#sense-reloads", "Sales reloaded")
    assert_called(subs, MESSAGE_SUBS)


async def test_our_service_subs(subs_files: Callable[[str], SubsFile], simulator: Any) -> None:
    subs = subs_files("ours")
    assert (await subs.call("ButlerPing", "vPing")).json["response"] == "Butler reporting for duty"
    base16 = await subs.call("Base62ToBase16", "6DMW88LpSok9Z7P7hUK0wv7bF", "vBase16")
    assert base16.json["base16"] == "3199af08bfeeaf5d420f27ed9c01e74370077"
    base62 = await subs.call("Base16ToBase62", "3199af08bfeeaf5d420f27ed9c01e74370077", "vBase62")
    assert base62.json["base62"] == "6DMW88LpSok9Z7P7hUK0wv7bF"
    apps = await subs.call("GetApps", "Apps")
    app1 = app_id(simulator, "App1")
    assert {"id": app1, "name": "App1"} in apps.json
    script = await subs.call("GetAppScript", app1, "vScript")
    assert script.json["loadScript"] == simulator.site.app_content[app1]["script"]
    await open_session(simulator, "LAB", "anna", "sense1")

    async def counted() -> bool:
        return json.loads((await subs.send("GetActiveUserCount", "", "vCount")).text)["response"] == 1

    await until(counted)
    assert (await subs.call("GetActiveUserCount", "sense1", "vCount")).json == {"response": 1}
    users = await subs.call("GetActiveUsers", "Users")
    assert [(u["userDirectory"], u["userId"]) for u in users.json] == [("LAB", "anna")]
    assert_called(subs, SERVICE_SUBS)


async def test_our_schedule_subs(subs_files: Callable[[str], SubsFile]) -> None:
    subs = subs_files("ours")
    created = await subs.call(
        "CreateSchedule", "Mornings", "0 30 6 * * 1-5", "Europe/Stockholm", APP1["taskId"], "stopped", "vId"
    )
    schedule_id = created.json["id"]
    [listed] = (await subs.call("GetSchedules", "Schedules")).json
    assert (listed["id"], listed["cronSchedule"], listed["lastKnownState"]) == (
        schedule_id,
        "0 30 6 * * 1-5",
        "stopped",
    )
    updated = await subs.call(
        "UpdateSchedule", schedule_id, "Evenings", "* * * * * *", "UTC", APP1["taskId"], "stopped"
    )
    assert (updated.json["name"], updated.json["cronSchedule"]) == ("Evenings", "* * * * * *")
    assert (await subs.call("StartSchedule", schedule_id)).json[0]["lastKnownState"] == "started"

    async def fired() -> bool:
        return bool(json.loads((await subs.send("GetScheduleRuns", schedule_id, "Runs")).text)["runs"])

    await until(fired)
    runs = await subs.call("GetScheduleRuns", schedule_id, "Runs")
    assert runs.json["id"] == schedule_id and runs.json["runs"][0]["outcome"]
    assert (await subs.call("StopSchedule", schedule_id)).json[0]["lastKnownState"] == "stopped"
    assert [s["lastKnownState"] for s in (await subs.call("StartAllSchedules")).json] == ["started"]
    assert [s["lastKnownState"] for s in (await subs.call("StopAllSchedules")).json] == ["stopped"]
    await subs.call("DeleteSchedule", schedule_id)
    assert (await subs.send("GetSchedules", "Schedules")).text == "[]"
    assert_called(subs, SCHEDULE_SUBS)


async def test_our_monitoring_subs(subs_files: Callable[[str], SubsFile], simulator: Any, site: Site) -> None:
    subs = subs_files("ours")
    site.hook.answers = [status(400)]  # refused for good: a dead letter at once
    failing = next(t for t in simulator.site.tasks.values() if t["name"] == FAILING_TASK)
    simulator.scheduler.start(failing["id"])

    async def dead() -> bool:
        alerts = json.loads((await subs.send("GetAlerts", failing["id"], "Alerts")).text)
        return bool(alerts) and alerts[0]["deliveries"][0]["state"] == "dead"

    await until(dead)
    [alert] = (await subs.call("GetAlerts", failing["id"], "Alerts")).json
    assert (alert["taskId"], alert["taskName"]) == (failing["id"], FAILING_TASK)
    assert (await subs.call("GetAlerts", "", "Alerts")).json == [alert]
    retried = await subs.call("RetryAlert", alert["alertId"])
    assert [d["state"] for d in retried.json["retried"]] == ["pending"]

    async def released() -> bool:
        return bool(json.loads((await subs.send("GetLicenseReleases", "Releases")).text)["releases"])

    await until(released)
    releases = await subs.call("GetLicenseReleases", "Releases")
    assert sorted(r["userId"] for r in releases.json["releases"]) == ["anna", "maria", "olle"]
    audit = await subs.call("GetAuditLog", "", "Audit")
    assert "retryAlert" in {record["operation"] for record in audit.json}
    since = await subs.call("GetAuditLog", "2000-01-01T00:00:00Z", "Audit")
    assert len(since.json) >= len(audit.json)
    assert_called(subs, MONITORING_SUBS)


# --- What the files hold ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ours", "upstream"])
def test_every_sub_is_called(which: str) -> None:
    text = subs_text() if which == "ours" else UPSTREAM.read_text(encoding="utf-8")
    assert set(read_subs(text)) - NO_REQUEST == set().union(*GROUPS) & set(read_subs(text))
    assert set(read_subs(UPSTREAM.read_text(encoding="utf-8"))) <= set(read_subs(subs_text()))


#: Operations no sub calls, and why: other names of the same operation, endpoints for monitoring tools,
#: the legacy v2 API, answers Qlik's REST connector cannot read as JSON (New Relic's status text, the
#: schedules' status text, as upstream answers them), and the admin's status page.
NOT_FOR_LOAD_SCRIPTS = {
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/status"),
    ("GET", "/status/data"),
    ("GET", "/status/login"),
    ("POST", "/status/login"),
    ("POST", "/status/logout"),
    ("GET", "/v4/senselistapps"),
    ("GET", "/v4/senseappdump/{appId}"),
    ("POST", "/v4/reloadtask/{taskId}/start"),
    ("POST", "/v4/newrelic/event"),
    ("POST", "/v4/newrelic/metric"),
    ("GET", "/v4/schedules/status"),
}


def test_our_subs_reach_every_operation() -> None:
    document = yaml.safe_load(resources_openapi())
    operations = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete") and not path.startswith("/v2/")
    }
    variables = {"vButlerHost": "http://butler", "vButlerPort": "8080"}
    reached = set()
    for sub in read_subs(subs_text()).values():
        if sub.name in NO_REQUEST:
            continue
        args = [f"p{i}" for i in range(len(sub.params))]
        request = extract(sub, args, variables, {name: [] for name in args})  # tables too, all empty
        method = request.headers.get("X-HTTP-Method-Override", CONNECTIONS[request.connection][0])
        path = yarl.URL(request.url).path
        matches = [
            (m, template)
            for m, template in operations
            if m == method and re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", template), path)
        ]
        # The most literal template wins, as in Butler's router (/v4/schedules/startall before {id}).
        reached.add(max(matches, key=lambda match: match[1].count("/") - match[1].count("{")))
    assert operations - NOT_FOR_LOAD_SCRIPTS == reached


def resources_openapi() -> str:
    from importlib import resources

    return resources.files("butler").joinpath("openapi.yaml").read_text(encoding="utf-8")


def test_the_command_line_writes_the_subs(tmp_path: Path) -> None:
    done = run_butler("load-script", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "butler_subs.qvs"
    assert written.read_text(encoding="utf-8") == subs_text()
    assert "PostToSlack" in read_subs(written.read_text(encoding="utf-8"))
    written.write_text("the admin's own copy")
    done = run_butler("load-script", "--out", str(written))
    assert done.returncode == 1 and "--force" in done.stderr
    assert written.read_text() == "the admin's own copy"
    assert run_butler("load-script", "--out", str(written), "--force").returncode == 0
    assert written.read_text(encoding="utf-8") == subs_text()
