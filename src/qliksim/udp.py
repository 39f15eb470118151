"""The log4net UDP appenders of a Sense site: scheduler task events and proxy session events.

One datagram per event, UTF-8, fields joined with ``;`` exactly as the appender files Butler's users
install produce them (``/scheduler-task-failed/;host;task;app;user;taskId;appId;date;level;execId;msg``
and ``/proxy-session/;host;command;directory;user;origin;context;msg``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, field

log = logging.getLogger("qliksim.udp")

TASK_EVENT_TYPES = {
    "fail": "/scheduler-task-failed/",
    "abort": "/scheduler-task-aborted/",
    "success": "/scheduler-task-success/",
    "distribute": "/scheduler-distribute/",
}
TASK_EVENT_MESSAGES = {
    "fail": "Max retries reached for task, task failed. Execution State Change to FinishedFail",
    "abort": "Execution State Change to Aborting",
    "success": "Execution State Change to FinishedSuccess",
    # The one line DistributionTaskLogger passes, whatever the outcome: a listener asks QRS for it.
    "distribute": "Exiting execute of Distribute task request.",
}


def log4net_date(moment: datetime.datetime) -> str:
    """log4net's default ``%date``: ``yyyy-MM-dd HH:mm:ss,fff``."""
    return moment.strftime("%Y-%m-%d %H:%M:%S,") + f"{moment.microsecond // 1000:03d}"


@dataclass
class TaskEvent:
    outcome: str  # success | fail | abort | distribute (a distribution run's end, of any outcome)
    hostname: str
    task_name: str
    app_name: str
    user: str
    task_id: str
    app_id: str
    execution_id: str
    moment: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    def datagram(self, success_type_typo: bool = False) -> bytes:
        kind = TASK_EVENT_TYPES[self.outcome]
        if self.outcome == "success" and success_type_typo:
            kind = "/scheduler-task-success//"  # as in the appender file upstream Butler ships
        level = (
            "INFO"
            if self.outcome in ("success", "distribute")
            else ("WARN" if self.outcome == "abort" else "ERROR")
        )
        fields = [
            kind,
            self.hostname,
            self.task_name,
            self.app_name,
            self.user,
            self.task_id,
            self.app_id,
            log4net_date(self.moment),
            level,
            self.execution_id,
            TASK_EVENT_MESSAGES[self.outcome],
        ]
        return ";".join(fields).encode()


@dataclass
class SessionEvent:
    command: str  # Start session | Stop session | Open connection | Close connection
    hostname: str
    user_directory: str
    user_id: str
    origin: str = "AppAccess"
    context: str = "/hub/"
    session_id: str = ""

    def datagram(self) -> bytes:
        prefix = "/proxy-session/" if self.command.endswith("session") else "/proxy-connection/"
        verb = {
            "Start session": "Start session for user",
            "Stop session": "Stop session for user",
            "Open connection": "connection Opened for session",
            "Close connection": "connection Closed for session",
        }[self.command]
        message = f"{verb} '{self.user_directory}\\{self.user_id}'; session {self.session_id}"
        fields = [
            prefix,
            self.hostname,
            self.command,
            self.user_directory,
            self.user_id,
            self.origin,
            self.context,
            message,
        ]
        return ";".join(fields).encode()


class UdpSender:
    """Sends datagrams to a fixed list of ``(host, port)`` targets; failures are logged, never raised."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = targets
        self.sent = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        if self.targets:
            loop = asyncio.get_running_loop()
            self._transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("0.0.0.0", 0)
            )

    def send(self, payload: bytes) -> None:
        if self._transport is None:
            return
        for target in self.targets:
            try:
                self._transport.sendto(payload, target)
                self.sent += 1
            except OSError as exc:
                log.warning("cannot send UDP event to %s:%s: %s", *target, exc)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def parse_target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
