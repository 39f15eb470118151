"""``butler task start|status`` and ``butler app reload``: Sense tasks and app reloads through a running
Butler, for people at a terminal and for other schedulers (SQL Server Agent, Windows Task Scheduler, an
Airflow bash operator), which read the exit code.

``--wait`` follows each run: the start is synchronous for a second (``?wait=true&timeout=1``), which gives
each run's execution id, and then ``GET /v4/reloadtask/{taskId}/status?executionId=`` is polled until the
run has ended, so the command reports on the runs it started and on no other.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from butler.client import ButlerClient, ClientError, Refused
from butler.executions import FINAL, STATUS_NAMES

OK = 0
FAILED = 1
USAGE = 2
ABORTED = 3
TIMEOUT = 4
UNREACHABLE = 5
#: Ctrl-C, as shells report it.
INTERRUPTED = 130
#: The ``outcome`` that ``--json`` gives for each exit code.
OUTCOMES = {
    OK: "success",
    FAILED: "failed",
    USAGE: "refused",
    ABORTED: "aborted",
    TIMEOUT: "timeout",
    UNREACHABLE: "unreachable",
}
EXIT_CODES = (
    "Exit codes: 0 success (without --wait: started); 1 a run or reload failed (or QRS would not start a "
    "task); 2 usage error or a request Butler refused (unknown or invalid id, denied by "
    "Butler.startTaskFilter, no access); 3 a run was aborted; 4 --timeout passed with a run still going "
    "(it goes on in Qlik Sense); 5 Butler cannot be reached, or it or Qlik Sense failed; 130 Ctrl-C."
)
#: When several runs end differently, the code of the worst: a failure over an abort over a timeout.
_SEVERITY = (UNREACHABLE, USAGE, FAILED, ABORTED, TIMEOUT, OK)

SUCCESS_CODE = STATUS_NAMES.index("FinishedSuccess")
ABORTED_CODE = STATUS_NAMES.index("Aborted")
#: Seconds between two looks at a run.
POLL_SECONDS = 0.5
#: Seconds between two progress lines when the output is not a terminal and nothing changed.
PLAIN_EVERY = 10.0


def worst(codes: list[int]) -> int:
    return min(codes, key=_SEVERITY.index, default=OK)


def run_code(run: dict[str, Any]) -> int:
    """The exit code a run's state gives: success, failed, aborted, or still going (timeout)."""
    code = run.get("statusCode")
    if code not in FINAL:
        return TIMEOUT
    return OK if code == SUCCESS_CODE else ABORTED if code == ABORTED_CODE else FAILED


def printable(text: Any) -> str:
    """Text from Qlik Sense made safe for a terminal: control characters (escape sequences in a script
    log or a task name) would move the cursor or change colours."""
    return "".join("?" if unicodedata.category(c) == "Cc" else c for c in str(text))


def clock(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"


# -- the progress display ----------------------------------------------------------------------------------


def _enable_redraw(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that takes cursor movements; on Windows the console is asked to
    read them (Windows 10 and later can)."""
    if not stream.isatty():
        return False
    if sys.platform != "win32":
        return True
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.windll.kernel32
    handle = kernel32.GetStdHandle(-11)  # the console's standard output
    mode = wintypes.DWORD()
    if not kernel32.GetConsoleMode(handle, ctypes.byref(mode)):
        return False
    return bool(kernel32.SetConsoleMode(handle, mode.value | 0x0004))  # ENABLE_VIRTUAL_TERMINAL_PROCESSING


class Progress:
    """One line per run. On a terminal the block is drawn again in place; otherwise a line is printed when
    a run's state changes, and every ``PLAIN_EVERY`` seconds while nothing does, for a scheduler's log."""

    def __init__(self, stream: TextIO, redraw: bool | None = None) -> None:
        self.stream = stream
        self.redraw = _enable_redraw(stream) if redraw is None else redraw
        self._drawn = 0
        #: By line: what told its state, when it was printed, and the line printed (not on a terminal).
        self._printed: dict[int, tuple[str, float, str]] = {}

    def show(self, lines: list[str], changes: list[str]) -> None:
        """Show ``lines``; ``changes`` is what in each line, unlike the elapsed time, tells a change."""
        if self.redraw:
            width = max(20, shutil.get_terminal_size().columns - 1)  # a line as wide wraps on some terminals
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.stream.write(up + "".join(f"\x1b[2K{line[:width]}\n" for line in lines))
            self._drawn = len(lines)
        else:
            now = time.monotonic()
            for index, (line, change) in enumerate(zip(lines, changes, strict=True)):
                before = self._printed.get(index)
                if before is None or before[0] != change or now - before[1] >= PLAIN_EVERY:
                    self.stream.write(line + "\n")
                    self._printed[index] = (change, now, line)
        self.stream.flush()

    def end(self, lines: list[str]) -> None:
        """The final state: drawn over the block on a terminal; otherwise each line not printed just so."""
        if self.redraw:
            self.show(lines, lines)
            return
        for index, line in enumerate(lines):
            before = self._printed.get(index)
            if before is None or before[2] != line:
                self.stream.write(line + "\n")
        self.stream.flush()


# -- task start ----------------------------------------------------------------------------------------


@dataclass
class Request:
    """What ``butler task start`` was asked: task ids, tags, custom properties and key-value pairs."""

    task_ids: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    custom_properties: list[tuple[str, str]] = field(default_factory=list)
    key_values: list[tuple[str, str, str]] = field(default_factory=list)

    def items(self) -> list[dict[str, Any]]:
        """The body of ``PUT /v4/reloadtask/-/start``: pairs first, stored before any task starts."""
        return [
            *(
                {"type": "keyvaluestore", "payload": {"namespace": ns, "key": key, "value": value}}
                for ns, key, value in self.key_values
            ),
            *({"type": "starttaskid", "payload": {"taskId": task_id}} for task_id in self.task_ids),
            *({"type": "starttasktag", "payload": {"tag": tag}} for tag in self.tags),
            *(
                {
                    "type": "starttaskcustomproperty",
                    "payload": {"customPropertyName": name, "customPropertyValue": value},
                }
                for name, value in self.custom_properties
            ),
        ]


def refusals(answer: dict[str, Any]) -> list[str]:
    """Why parts of a start request were not started, one message each."""
    ids = answer.get("tasksId") or {}
    return [
        *(f"task {printable(e['taskId'])}: not a task in Qlik Sense" for e in ids.get("invalid", [])),
        *(f"task {printable(e['taskId'])}: denied by Butler.startTaskFilter" for e in ids.get("denied", [])),
        *(
            f"tag {printable(e['tag'])}: denied by Butler.startTaskFilter"
            for e in answer.get("tasksTagDenied", [])
        ),
        *(
            f"custom property {printable(e['name'])}={printable(e['value'])}: denied by "
            "Butler.startTaskFilter"
            for e in answer.get("tasksCPDenied", [])
        ),
    ]


def started_tasks(answer: dict[str, Any]) -> list[dict[str, str]]:
    """The tasks a start answer lists as started, each once, in the answer's order."""
    listed = [
        *(answer.get("tasksId") or {}).get("started", []),
        *answer.get("tasksTag", []),
        *answer.get("tasksCP", []),
    ]
    return list({entry["taskId"]: entry for entry in listed}.values())


def describe_run(run: dict[str, Any], elapsed: float | None = None) -> str:
    """One line for a run: its task, status, node and time."""
    name = printable(run.get("taskName") or run.get("taskId"))
    node = run.get("executingNodeName")
    where = f" on {printable(node)}" if node else ""
    if run_code(run) != TIMEOUT and isinstance(run.get("duration"), int | float):
        when = f" in {clock(run['duration'] / 1000)}"
    elif elapsed is not None:
        when = f", {clock(elapsed)} elapsed"
    else:
        when = ""
    return f"{name}: {printable(run.get('status', '?'))}{where}{when}"


def script_log_lines(run: dict[str, Any]) -> list[str]:
    """A failed or aborted run's script-log tail, under a heading; nothing for the others."""
    tail = run.get("scriptLogTail")
    if run_code(run) in (OK, TIMEOUT):
        return []
    name = printable(run.get("taskName") or run.get("taskId"))
    details = [f"  {printable(d)}" for d in run.get("details") or [] if d]
    if not tail:
        return [f"{name}: no script log", *details[-5:]]
    return [f"Script log of {name}, last {len(tail)} lines:", *(f"  {printable(line)}" for line in tail)]


async def follow_runs(
    client: ButlerClient,
    runs: list[dict[str, Any]],
    deadline: float | None,
    progress: Progress | None,
    began: float,
) -> None:
    """Look at each unfinished run until all have ended or ``deadline`` (monotonic) passed; ``runs`` keeps
    each one's last known state."""
    while True:
        going = [run for run in runs if run_code(run) == TIMEOUT and run.get("executionId")]
        elapsed = time.monotonic() - began
        if progress is not None:
            progress.show(
                [describe_run(run, elapsed) for run in runs],
                [f"{run.get('status')}{run.get('executingNodeName')}" for run in runs],
            )
        if not going or (deadline is not None and time.monotonic() >= deadline):
            return
        await asyncio.sleep(
            POLL_SECONDS if deadline is None else min(POLL_SECONDS, max(0, deadline - time.monotonic()))
        )
        states = await asyncio.gather(
            *(client.task_status(run["taskId"], run["executionId"]) for run in going)
        )
        for run, state in zip(going, states, strict=True):
            run.update(state)


@dataclass
class Report:
    """What a command prints and the code it exits with."""

    code: int
    document: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def start(
    client: ButlerClient, request: Request, wait: bool, limit: float | None, progress: Progress | None
) -> Report:
    began = time.monotonic()
    # Waiting, the start is synchronous for at most a second: long enough to learn each run's execution id.
    answer = await client.start_tasks(request.items(), 1 if wait else None)
    problems = refusals(answer)
    failed = [
        f"task {printable(e.get('taskName') or e['taskId'])}: Qlik Sense did not start it: "
        + printable(e.get("message"))
        for e in answer.get("tasksStartFailed", [])
    ]
    tasks = started_tasks(answer)
    codes = [USAGE] * bool(problems) + [FAILED] * bool(failed)
    if not tasks and not problems and not failed:
        problems.append("no task matched: nothing started")
        codes.append(USAGE)
    document: dict[str, Any] = {"start": answer}
    if not wait or not tasks:
        lines = [f"{printable(t['taskName'])}: started" for t in tasks]
        return Report(worst(codes), document, lines, problems + failed)
    runs = [dict(run) for run in answer.get("executions", [])]
    deadline = None if limit is None else began + limit
    await follow_runs(client, runs, deadline, progress, began)
    elapsed = time.monotonic() - began
    lines = [describe_run(run, elapsed) for run in runs]
    if progress is not None:
        progress.end(lines)
        lines = []
    for run in runs:
        run["finished"] = run_code(run) != TIMEOUT
        lines.extend(script_log_lines(run))
    document["runs"] = runs
    codes.extend(run_code(run) for run in runs)
    return Report(worst(codes), document, lines, problems + failed)


async def status(client: ButlerClient, task_id: str) -> Report:
    """A task's last run; the exit code is that run's (0 while it runs or when it never ran)."""
    run = await client.task_status(task_id)
    code = run_code(run)
    return Report(0 if code == TIMEOUT else code, {"run": run}, [describe_run(run), *script_log_lines(run)])


async def reload_app(
    client: ButlerClient,
    app_id: str,
    partial: bool,
    wait: bool,
    limit: float | None,
    progress: Progress | None,
) -> Report:
    kind = "partial reload" if partial else "reload"
    if not wait:
        answer = await client.reload_app(app_id, partial, False)
        return Report(OK, {"reload": answer}, [f"App {printable(app_id)}: {kind} started"])
    began = time.monotonic()
    reload = asyncio.ensure_future(client.reload_app(app_id, partial, True))
    try:
        while True:
            done, _ = await asyncio.wait([reload], timeout=POLL_SECONDS)
            elapsed = time.monotonic() - began
            if done:
                break
            if limit is not None and elapsed >= limit:
                line = f"App {printable(app_id)}: still reloading after {clock(elapsed)}"
                return Report(TIMEOUT, {"reload": {"appId": app_id}}, [line])
            if progress is not None:
                progress.show([f"App {printable(app_id)}: {kind}ing, {clock(elapsed)} elapsed"], [kind])
    finally:
        reload.cancel()
    answer = reload.result()
    took = clock(answer.get("durationMs", 0) / 1000)
    if answer.get("success"):
        line = f"App {printable(app_id)}: {kind} succeeded in {took}"
    else:
        why = answer.get("error") or "the Engine said no"
        line = f"App {printable(app_id)}: {kind} failed: {printable(why)}"
    if progress is not None:
        progress.end([line])
    return Report(OK if answer.get("success") else FAILED, {"reload": answer}, [] if progress else [line])


# -- running a command -------------------------------------------------------------------------------------


def execute(
    client: ButlerClient,
    command: Callable[[ButlerClient], Awaitable[Report]],
    as_json: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    """Run ``command`` with ``client`` open, print its report (or JSON alone) and give its exit code."""

    async def run() -> Report:
        async with client:
            return await command(client)

    try:
        report = asyncio.run(run())
    except KeyboardInterrupt:
        err.write("butler: stopped waiting; what was started goes on in Qlik Sense\n")
        return INTERRUPTED
    except Refused as exc:
        report = Report(USAGE, {}, problems=[f"Butler refused the request ({exc.status}): {printable(exc)}"])
    except ClientError as exc:
        report = Report(UNREACHABLE, {}, problems=[printable(exc)])
    if as_json:
        document = {"outcome": OUTCOMES[report.code], "exitCode": report.code, **report.document}
        if report.problems:
            document["problems"] = report.problems
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write("".join(line + "\n" for line in report.lines))
        err.write("".join(f"butler: {problem}\n" for problem in report.problems))
    return report.code
