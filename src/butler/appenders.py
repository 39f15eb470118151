"""The log4net appender files Sense nodes need to send their events to Butler over UDP.

Each scheduler node gets ``C:\\ProgramData\\Qlik\\Sense\\Scheduler\\LocalLogConfig.xml`` (task failed,
aborted, succeeded, distributed; port 9998) and each proxy node
``C:\\ProgramData\\Qlik\\Sense\\Proxy\\LocalLogConfig.xml`` (sessions and connections; port 9997). The
appenders, filters and layouts are those of the files upstream Butler ships, with Butler's address filled
in, and the success type without upstream's stray second slash (Butler reads both).
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from butler.errors import BadRequest

TASK_PORT = 9998
SESSION_PORT = 9997

#: The hostname converter Sense's logging adds to log4net, for ``%hostname`` in the layouts.
HOSTNAME_CONVERTER = "Qlik.Sense.Logging.log4net.Layout.Pattern.HostNamePatternConverter"
_TASK_FIELDS = (
    "%hostname;%property{TaskName};%property{AppName};%property{User};%property{TaskId};%property{AppId};"
    "%date;%level;%property{ExecutionId};%message"
)
_SESSION_FIELDS = (
    "%hostname;%property{Command};%property{UserDirectory};%property{UserId};%property{Origin};"
    "%property{Context};%message"
)


@dataclass(frozen=True)
class Appender:
    name: str
    matches: tuple[str, ...]  # the log lines (substrings) the appender passes; all others are denied
    message_type: str
    fields: str

    @property
    def pattern(self) -> str:
        return f"{self.message_type};{self.fields}"


@dataclass(frozen=True)
class Logger:
    name: str
    appenders: tuple[str, ...]


@dataclass(frozen=True)
class AppenderFile:
    folder: str  # the service's folder under C:\ProgramData\Qlik\Sense
    comment: str
    appenders: tuple[Appender, ...]
    loggers: tuple[Logger, ...]


SCHEDULER = AppenderFile(
    folder="Scheduler",
    comment="Task events of this scheduler node, sent to Butler",
    appenders=(
        Appender(
            "TaskFailLogger",
            # A reload or external program failing after its last retry; a preload failing to start.
            ("Max retries reached", "Failed to start session", "Could not reserve an executor for task"),
            "/scheduler-task-failed/",
            _TASK_FIELDS,
        ),
        Appender(
            "TaskAbortLogger",
            ("Execution State Change to Aborting",),
            "/scheduler-task-aborted/",
            _TASK_FIELDS,
        ),
        Appender(
            "TaskSuccessLogger",
            ("Execution State Change to FinishedSuccess",),
            "/scheduler-task-success/",
            _TASK_FIELDS,
        ),
        Appender(
            # The one line a distribution logs whatever its outcome; Butler asks QRS for the outcome.
            "DistributionTaskLogger",
            ("Exiting execute of Distribute task request.",),
            "/scheduler-distribute/",
            _TASK_FIELDS,
        ),
    ),
    loggers=(
        Logger(
            "System.Scheduler.Scheduler.Master.Task.TaskSession",
            ("TaskFailLogger", "TaskAbortLogger", "TaskSuccessLogger"),
        ),
        Logger("System.Scheduler.Scheduler.Slave.Tasks.ReloadTask", ("DistributionTaskLogger",)),
    ),
)

PROXY = AppenderFile(
    folder="Proxy",
    comment="User session and connection events of this proxy node, sent to Butler",
    appenders=(
        Appender(
            "EventSession",
            ("Start session for user", "Stop session for user"),
            "/proxy-session/",
            _SESSION_FIELDS,
        ),
        Appender(
            "EventConnection",
            ("connection Opened for session", "connection Closed for session"),
            "/proxy-connection/",
            _SESSION_FIELDS,
        ),
    ),
    loggers=(Logger("AuditActivity.Proxy", ("EventSession", "EventConnection")),),
)

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def check_host(host: str) -> str:
    """``host`` if it is an IP address or a DNS name; anything else (quotes, ``<``, spaces, a URL) is
    refused, since log4net's ``remoteAddress`` takes nothing else."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise BadRequest(
            f"{host!r} is not an IP address or host name (letters, digits, '-' and '.'); "
            "give the address the Sense nodes reach Butler at, without scheme or port"
        )
    return host


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise BadRequest(f"port {port} is not between 1 and 65535")
    return port


def _param(parent: ET.Element, name: str, value: str) -> None:
    ET.SubElement(parent, "param", name=name, value=value)


def render(spec: AppenderFile, host: str, port: int) -> str:
    """The XML of ``spec`` sending to ``host:port``."""
    host, port = check_host(host), check_port(port)
    root = ET.Element("configuration")
    root.append(ET.Comment(f" {spec.comment} ({host}:{port}). "))
    for appender in spec.appenders:
        element = ET.SubElement(root, "appender", name=appender.name, type="log4net.Appender.UdpAppender")
        for text in appender.matches:
            _param(
                ET.SubElement(element, "filter", type="log4net.Filter.StringMatchFilter"),
                "stringToMatch",
                text,
            )
        ET.SubElement(element, "filter", type="log4net.Filter.DenyAllFilter")
        _param(element, "remoteAddress", host)
        _param(element, "remotePort", str(port))
        _param(element, "encoding", "utf-8")
        layout = ET.SubElement(element, "layout", type="log4net.Layout.PatternLayout")
        converter = ET.SubElement(layout, "converter")
        _param(converter, "name", "hostname")
        _param(converter, "type", HOSTNAME_CONVERTER)
        _param(layout, "conversionpattern", appender.pattern)
    for logger in spec.loggers:
        element = ET.SubElement(root, "logger", name=logger.name)
        for name in logger.appenders:
            ET.SubElement(element, "appender-ref", ref=name)
    ET.indent(root, space="    ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_files(
    out: Path, host: str, task_port: int = TASK_PORT, session_port: int = SESSION_PORT, force: bool = False
) -> list[Path]:
    """``Scheduler/LocalLogConfig.xml`` and ``Proxy/LocalLogConfig.xml`` under ``out``. Nothing is
    written when either exists and ``force`` is not given, so a pair is never half replaced."""
    documents = {
        out / spec.folder / "LocalLogConfig.xml": render(spec, host, port)
        for spec, port in ((SCHEDULER, task_port), (PROXY, session_port))
    }
    existing = [path for path in documents if path.exists()]
    if existing and not force:
        raise FileExistsError(", ".join(str(path) for path in existing))
    for path, text in documents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
    return list(documents)
