"""The scheduler: Sense tasks started on cron schedules, kept in upstream's schedule file.

Schedules are read from the file at start-up (``Butler.scheduler.enable``) without writing it; each keeps the
state it had (``lastKnownState``). One timer loop serves every schedule: a heap of due times, so ten
thousand schedules cost one sleeping task, not ten thousand. A fire goes through the task-start service,
as a REST start does: the task must exist, ``startTaskFilter`` applies, QRS's answer is awaited; a task still
running is not started again (the skip is recorded). Each schedule keeps its last fires (due and fired time,
outcome) for ``GET /v4/schedules/{id}/runs``. Every change made over REST is written to the file atomically;
a file changed on disk since Butler read it is not overwritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import heapq
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from butler.errors import BadRequest, NotFound
from butler.executions import FINAL, STATUS_NAMES
from butler.qlik.qrs import QrsError
from butler.qlik.repository import TaskWithResult
from butler.scheduler.claims import ClaimsUnavailable, FireClaims, LocalClaims
from butler.scheduler.cron import Cron, CronError
from butler.scheduler.store import Schedule, ScheduleFile, ScheduleFileError, load
from butler.stopping import cancel_and_wait
from butler.task_start import TaskStarter

log = logging.getLogger("butler.scheduler")

#: What a schedule may say (additions to upstream's fields): ``overlap`` (a fire while the task still runs:
#: ``skip`` it, ``queue`` it until the run ends, or ``allow`` the start, which Sense then ignores) and
#: ``misfire`` (a fire due while Butler was down: ``skip`` it, or ``runOnce`` at start-up when it was due
#: within ``misfireGraceSeconds``). The first of each is the default.
RULES = {"overlap": ("skip", "queue", "allow"), "misfire": ("skip", "runOnce")}
#: How long after its due time a fire missed while Butler was down may still be made (``runOnce``).
DEFAULT_GRACE_SECONDS = 300.0
#: Fire outcomes that are alerted: the task did not start (refused by QRS, unknown, not allowed).
FAILED = frozenset({"failed", "invalid", "denied"})
#: Problems listed in ``/health`` (all are counted, and logged when the file is read).
STATS_PROBLEMS = 20
#: Schedules set up at start-up between two turns of the event loop (about 10 ms of work).
ADD_BATCH = 500
#: How long a started run is followed at most (seconds): a reload running longer ends unrecorded.
FOLLOW_LIMIT = 6 * 3600.0
#: Butler's and Sense's clocks may differ by this much (seconds) when matching a run to its fire.
CLOCK_SLACK = 5.0
#: Due times looked through for the last one missed (a per-second schedule with a 300 s grace has 300).
MAX_MISSED_LOOKUP = 100_000
#: Task states in which a start would do nothing but be ignored by Sense's scheduler.
RUNNING_STATES = frozenset({1, 2, 3, 4, 5})
STARTED = frozenset({"start", "started"})


@dataclass
class Run:
    """One fire of a schedule."""

    due: float
    fired: float
    outcome: str  # started, skipped, denied, invalid, failed
    detail: str = ""
    #: How the started run ended (QRS's status name) and its execution result, once known.
    status: str | None = None
    execution_result_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "due": _iso(self.due),
            "fired": _iso(self.fired),
            "outcome": self.outcome,
            "detail": self.detail,
            "status": self.status,
            "executionResultId": self.execution_result_id,
        }


@dataclass
class Job:
    """A schedule, its parsed cron (None when it cannot run) and its history."""

    schedule: Schedule
    cron: Cron | None
    problem: str | None = None
    #: The line of its cron in the schedule file, where it was read from the file.
    line: int | None = None
    #: The last fires, oldest first (a list, not a deque: ten thousand idle schedules cost no blocks).
    runs: list[Run] = field(default_factory=list)
    fires: int = 0
    #: A fire waits for the task's running execution to end (``overlap: queue``); the next ones are skipped.
    queued: bool = False
    #: Changed on every (re)scheduling, so that stale heap entries are skipped.
    generation: int = 0
    #: When it fires next (epoch seconds), as planned; None while it does not run.
    next_due: float | None = None

    @property
    def running(self) -> bool:
        return self.schedule.lastKnownState == "started" and self.cron is not None


class SchedulerService:
    """The schedules, their timers and their fires."""

    def __init__(
        self,
        file: ScheduleFile,
        starter: TaskStarter | None,
        *,
        compat: bool = False,
        history: int = 50,
        claims: FireClaims | None = None,
        follow_seconds: float = 2.0,
        watch_seconds: float = 2.0,
        on_failure: Callable[[str, str, str], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: Told of a fire that did not start its task (task id, why, the fire's id): the alerts.
        self.on_failure = on_failure
        #: How often the file is looked at for edits made while Butler runs.
        self.watch_seconds = watch_seconds
        self._watcher: asyncio.Task[None] | None = None
        self._ready: asyncio.Task[None] | None = None
        #: How often a started run is asked about until it ended.
        self.follow_seconds = follow_seconds
        self.file = file
        self.starter = starter
        self.claims: FireClaims = claims or LocalClaims()
        self.compat = compat
        self.history = history
        self._clock = clock
        self.jobs: dict[str, Job] = {}
        #: Fires by outcome since start-up (the run histories keep only the latest).
        self.fire_outcomes: dict[str, int] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._fires: set[asyncio.Task[None]] = set()
        #: What the last reading of the file could not use (the file, or entries of it, with their lines).
        self._file_problems: list[str] = []

    # -- life ---------------------------------------------------------------------------------------------

    async def open(self, load_file: bool) -> None:
        """Start reading the schedule file (when ``load_file``) and then the timers, without waiting: a large
        file takes a second or two, and the rest of Butler need not wait for it. Whatever asks about the
        schedules meanwhile waits until they are read (``ready``)."""
        self._ready = asyncio.get_running_loop().create_task(self._begin(load_file))

    async def ready(self) -> None:
        """Return once the schedule file has been read and the timers run."""
        if self._ready is not None:
            await asyncio.shield(self._ready)

    async def _begin(self, load_file: bool) -> None:
        if load_file:
            try:
                result = await self.file.load()
            except ScheduleFileError as exc:
                self._file_problems = [str(exc)]
                log.error("scheduler: %s; no schedule is run", exc)
            else:
                self._file_problems = [str(problem) for problem in result.problems]
                for problem in result.problems:
                    log.error("scheduler: %s; that schedule is not run", problem)
                for count, schedule in enumerate(result.schedules, 1):
                    self._add(schedule, result.cron_lines.get(schedule.id))
                    if count % ADD_BATCH == 0:
                        await asyncio.sleep(0)  # thousands of schedules: requests are answered meanwhile
                self._run_missed()
                log.info("scheduler: %d schedules read from %s", len(result.schedules), self.file.path)
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._timer())
        if load_file:
            self._watcher = loop.create_task(self._watch())

    async def close(self) -> None:
        tasks = [t for t in (self._ready, self._loop_task, self._watcher, *self._fires) if t is not None]
        await cancel_and_wait(tasks)
        await self.claims.close()

    def stats(self) -> dict[str, Any]:
        """For ``/health``: the schedules, and what of the file cannot run (file, line and why)."""
        problems = [*self._file_problems]
        problems += [
            f"{self.file.path}{f', line {job.line}' if job.line else ''}: schedule {job.schedule.id} "
            f"({job.schedule.name}) is not run: {job.problem}"
            for job in self.jobs.values()
            if job.problem
        ]
        return {
            "file": str(self.file.path),
            "schedules": len(self.jobs),
            "running": sum(1 for job in self.jobs.values() if job.running),
            "fires": sum(job.fires for job in self.jobs.values()),
            "problemCount": len(problems),
            "problems": problems[:STATS_PROBLEMS],
        }

    # -- schedules ----------------------------------------------------------------------------------------

    def _parse(self, schedule: Schedule) -> Cron:
        return cron_of(schedule, self.compat)

    def _add(self, schedule: Schedule, line: int | None = None) -> Job:
        try:
            cron: Cron | None = self._parse(schedule)
            problem = None
        except CronError as exc:
            cron, problem = None, str(exc)
            where = f"{self.file.path}, line {line}: " if line is not None else ""
            log.error("scheduler: %sschedule %s (%s) is not run: %s", where, schedule.id, schedule.name, exc)
        if cron is not None and self.compat and cron.months_differ_under_compat():
            log.warning(
                "schedule %s (%s): its months read as upstream reads them (0 = January)",
                schedule.id,
                schedule.name,
            )
        for name in RULES:
            rule_problem = _rule_problem(schedule, name)
            if rule_problem is not None:  # only a file can hold one: REST refuses it
                log.error(
                    "scheduler: schedule %s (%s): %s; %s is used",
                    schedule.id,
                    schedule.name,
                    rule_problem,
                    RULES[name][0],
                )
        if not schedule.lastKnownState:
            schedule.lastKnownState = "started" if schedule.startupState in STARTED else "stopped"
        job = Job(schedule, cron, problem, line)
        previous = self.jobs.get(schedule.id)
        if previous is not None:  # an update keeps the history
            job.runs.extend(previous.runs)
            job.fires = previous.fires
            job.generation = previous.generation
        self.jobs[schedule.id] = job
        self._plan(job)
        return job

    async def _watch(self) -> None:
        """An edit made to the file while Butler runs is read: schedules added, changed or removed there
        are so here too (the histories of the others stay)."""
        while True:
            await asyncio.sleep(self.watch_seconds)
            if not await asyncio.to_thread(self.file.changed_on_disk):
                continue
            try:
                result = await self.file.load()
            except ScheduleFileError as exc:
                self._file_problems = [str(exc)]
                log.error(
                    "scheduler: the edited file cannot be read: %s; the schedules run as they were", exc
                )
                continue
            self._file_problems = [str(problem) for problem in result.problems]
            for problem in result.problems:
                log.error("scheduler: %s; that schedule is not run", problem)
            read = {schedule.id: schedule for schedule in result.schedules}
            for ident in [i for i in self.jobs if i not in read]:
                del self.jobs[ident]
            for schedule in result.schedules:
                job = self.jobs.get(schedule.id)
                if job is None or job.schedule.as_dict() != schedule.as_dict():
                    self._add(schedule, result.cron_lines.get(schedule.id))
            log.info("scheduler: %s was edited; %d schedules read from it", self.file.path, len(read))

    def _run_missed(self) -> None:
        """``misfire: runOnce``: the last fire due while Butler was down, if within the grace, is made now
        (once: it is claimed like any fire, so a Butler that did fire it before stopping is not repeated
        where the claims are kept in a shared store)."""
        now = self._clock()
        for job in self.jobs.values():
            if not job.running or _rule(job.schedule, "misfire") != "runOnce" or job.cron is None:
                continue
            grace = self._grace(job.schedule)
            moment, missed = datetime.datetime.fromtimestamp(now - grace, datetime.UTC), None
            for _ in range(MAX_MISSED_LOOKUP):
                due = job.cron.next_after(moment)
                if due.timestamp() > now:
                    break
                missed, moment = due.timestamp(), due
            if missed is not None:
                fire = asyncio.get_running_loop().create_task(self._fire(job, missed))
                self._fires.add(fire)
                fire.add_done_callback(self._fires.discard)

    def _plan(self, job: Job) -> None:
        job.generation += 1
        job.next_due = None
        if not job.running:
            return
        assert job.cron is not None
        due = job.cron.next_after(datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)).timestamp()
        job.next_due = due
        heapq.heappush(self._heap, (due, job.generation, job.schedule.id))
        self._wake.set()

    def get(self, ident: str) -> Job:
        job = self.jobs.get(ident)
        if job is None:
            raise NotFound(f"REST SCHEDULER: Schedule ID {ident} not found.")
        return job

    async def create(self, fields: dict[str, Any]) -> Job:
        """A new schedule from a request's fields (``id`` and ``created`` are Butler's); BadRequest naming the
        field when its cron or time zone cannot work."""
        await self.ready()
        schedule = Schedule.from_dict(
            {
                **fields,
                "id": str(uuid.uuid4()),
                "created": _iso(self._clock()),
                "lastKnownState": "started" if fields.get("startupState") in STARTED else "stopped",
            }
        )
        self._check(schedule)
        await self._save_with(schedule)
        return self._add(schedule)

    async def update(self, ident: str, fields: dict[str, Any]) -> Job:
        """Replace a schedule's fields, keeping its id, created time and state."""
        await self.ready()
        old = self.get(ident).schedule
        schedule = Schedule.from_dict(
            {**fields, "id": old.id, "created": old.created, "lastKnownState": old.lastKnownState}
        )
        self._check(schedule)
        await self._save_with(schedule)
        return self._add(schedule)

    def _check(self, schedule: Schedule) -> None:
        try:
            self._parse(schedule)
        except CronError as exc:
            raise BadRequest(str(exc)) from None
        for name in RULES:
            problem = _rule_problem(schedule, name)
            if problem is not None:
                raise BadRequest(problem, at="")

    def _grace(self, schedule: Schedule) -> float:
        value = schedule.extra.get("misfireGraceSeconds", DEFAULT_GRACE_SECONDS)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0

    async def delete(self, ident: str) -> None:
        await self.ready()
        self.get(ident)
        await self.file.save([job.schedule for job in self.jobs.values() if job.schedule.id != ident])
        del self.jobs[ident]

    async def set_state(self, ident: str, state: str) -> Job:
        await self.ready()
        job = self.get(ident)
        await self._save_with(dataclasses.replace(job.schedule, lastKnownState=state))
        job.schedule.lastKnownState = state
        self._plan(job)
        return job

    async def set_all(self, state: str) -> list[Job]:
        await self.ready()
        await self.file.save(
            [dataclasses.replace(j.schedule, lastKnownState=state) for j in self.jobs.values()]
        )
        for job in self.jobs.values():
            job.schedule.lastKnownState = state
            self._plan(job)
        return list(self.jobs.values())

    async def _save_with(self, schedule: Schedule) -> None:
        """Write the file with ``schedule`` added or replacing its namesake; only once it is written does
        the change take effect (a file that cannot be written, or was edited on disk, changes nothing)."""
        schedules = [job.schedule for job in self.jobs.values() if job.schedule.id != schedule.id]
        if schedule.id in self.jobs:
            position = list(self.jobs).index(schedule.id)
            schedules.insert(position, schedule)
        else:
            schedules.append(schedule)
        await self.file.save(schedules)

    def next_fires(self, job: Job, count: int = 5) -> list[str]:
        if not job.running or job.cron is None:
            return []
        moment = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        return [_iso(fire.timestamp()) for fire in job.cron.next_fires(moment, count)]

    # -- firing -------------------------------------------------------------------------------------------

    async def _timer(self) -> None:
        while True:
            self._wake.clear()
            if not self._heap:
                await self._wake.wait()
                continue
            due, generation, ident = self._heap[0]
            wait = due - self._clock()
            if wait > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the
                # wake-up, and close() would wait for the timer for ever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            heapq.heappop(self._heap)
            job = self.jobs.get(ident)
            if job is None or job.generation != generation or not job.running:
                continue
            self._plan(job)  # the next fire is planned before this one runs: a slow start delays none
            fire = asyncio.get_running_loop().create_task(self._fire(job, due))
            self._fires.add(fire)
            fire.add_done_callback(self._fires.discard)

    async def _fire(self, job: Job, due: float) -> None:
        schedule = job.schedule
        fired = self._clock()
        try:
            if not await self.claims.claim(schedule.id, due):
                return  # another Butler sharing the store fires this one
        except ClaimsUnavailable as exc:
            self._record(job, Run(due, fired, "failed", str(exc)))
            log.error("schedule %s (%s) not fired: %s", schedule.id, schedule.name, exc)
            return
        log.info("Cron event for schedule ID %s: %s", schedule.id, schedule.name)
        try:
            outcome, detail = await self._start(job)
        except Exception as exc:  # a fault must not stop the schedule
            log.exception("schedule %s: the start of task %s failed", schedule.id, schedule.qlikSenseTaskId)
            outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
        job.fires += 1
        run = Run(due, fired, outcome, detail)
        self._record(job, run)
        if outcome in FAILED and self.on_failure is not None:
            try:
                await self.on_failure(
                    schedule.qlikSenseTaskId, f"{outcome}: {detail}", f"{schedule.id}:{int(due)}"
                )
            except Exception:  # the alert's fault must not stop the schedule
                log.exception("schedule %s: the alert of its failed start could not be made", schedule.id)
        if outcome == "started":
            await self._follow(run, schedule.qlikSenseTaskId)
        level = logging.INFO if outcome in ("started", "skipped") else logging.WARNING
        log.log(
            level,
            "schedule %s (%s): task %s %s %s",
            schedule.id,
            schedule.name,
            schedule.qlikSenseTaskId,
            outcome,
            detail,
        )

    async def _follow(self, run: Run, task_id: str) -> None:
        """Ask QRS about the task's last run until it ended (for at most FOLLOW_LIMIT), and note how."""

        def ended(found: TaskWithResult | None) -> bool:
            result = found.last_result if found is not None else None
            if result is None or result.status not in FINAL or not _since(result.start_time, run.fired):
                return False
            run.status = (
                STATUS_NAMES[result.status] if result.status < len(STATUS_NAMES) else str(result.status)
            )
            run.execution_result_id = result.id
            return True

        await self._ask_until(task_id, ended)

    async def _ask_until(self, task_id: str, done: Callable[[TaskWithResult | None], bool]) -> bool:
        """Ask QRS about the task every follow_seconds until ``done`` says so (True), for at most
        FOLLOW_LIMIT (False)."""
        starter = self.starter
        assert starter is not None
        deadline = self._clock() + FOLLOW_LIMIT
        while self._clock() < deadline:
            await asyncio.sleep(self.follow_seconds)
            try:
                found = await starter.repository.task_with_last_result(task_id)
            except (QrsError, TimeoutError):
                continue  # asked again at the next round
            if done(found):
                return True
        return False

    def _record(self, job: Job, run: Run) -> None:
        self.fire_outcomes[run.outcome] = self.fire_outcomes.get(run.outcome, 0) + 1
        job.runs.append(run)
        del job.runs[: -self.history]

    async def _start(self, job: Job) -> tuple[str, str]:
        starter = self.starter
        if starter is None:
            return "failed", "Qlik Sense cannot be reached: Butler.cert is not set"
        task_id = job.schedule.qlikSenseTaskId
        found = await starter.repository.task_with_last_result(task_id)
        if found is None:
            return "invalid", f"no task with id {task_id}"
        overlap = _rule(job.schedule, "overlap")
        if job.queued:  # even when the task has just ended: the queued fire starts it
            return "skipped", "an earlier fire is queued until the task's running execution ends"
        queued = ""
        if found.last_result.status in RUNNING_STATES and overlap != "allow":
            if overlap == "skip":
                return "skipped", "the task is still running from an earlier start"
            job.queued = True
            began = self._clock()
            try:
                if not await self._ask_until(task_id, _not_running):
                    return "skipped", f"the task still ran after {FOLLOW_LIMIT:.0f} s in the queue"
            finally:
                job.queued = False
            queued = f"queued {self._clock() - began:.1f} s until the task's running execution ended"
        outcome = await starter.start(task_id, [], all_ids_must_exist=True)
        if outcome.denied:
            return "denied", "startTaskFilter does not allow this task"
        if outcome.start_failed:
            return "failed", str(outcome.start_failed[0].get("message", ""))
        if outcome.invalid:
            return "invalid", f"no task with id {task_id}"
        return "started", queued


def _not_running(found: TaskWithResult | None) -> bool:
    return found is None or found.last_result.status not in RUNNING_STATES


def _rule_problem(schedule: Schedule, name: str) -> str | None:
    allowed = RULES[name]
    value = schedule.extra.get(name, allowed[0])
    return None if value in allowed else f"{name} must be {' or '.join(allowed)}, not {value!r}"


def _rule(schedule: Schedule, name: str) -> str:
    """A rule of the schedule; its default when the file gives a value that is not one (logged when read)."""
    value = schedule.extra.get(name)
    return str(value) if value in RULES[name] else RULES[name][0]


def _since(start_time: str | None, fired: float) -> bool:
    """Whether a run that started at ``start_time`` (QRS's ISO time) is the one a fire at ``fired`` began."""
    if not start_time:
        return False
    try:
        started = datetime.datetime.fromisoformat(start_time.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False
    return started >= fired - CLOCK_SLACK


def _iso(moment: float) -> str:
    return (
        datetime.datetime.fromtimestamp(moment, datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def cron_of(schedule: Schedule, compat: bool) -> Cron:
    """A schedule's cron in its zone (UTC when it names none); CronError naming the field."""
    return Cron.parse(schedule.cronSchedule, zone=schedule.timezone or "UTC", compat=compat)


def check_file(path: Path, *, compat: bool = False, count: int = 3) -> tuple[list[str], bool]:
    """What ``butler schedules check`` prints for a schedule file: each entry with its next ``count`` fires
    in its own zone, or what keeps it from running; and whether every entry can run."""
    try:
        result = load(path)
    except ScheduleFileError as exc:
        return [str(exc)], False
    lines = [str(problem) for problem in result.problems]
    ok = not result.problems
    now = datetime.datetime.now(datetime.UTC)
    for schedule in result.schedules:
        try:
            cron = cron_of(schedule, compat)
        except CronError as exc:
            line = result.cron_lines.get(schedule.id)
            lines.append(f"{schedule.id} ({schedule.name}){f', line {line}' if line else ''}: {exc}")
            ok = False
            continue
        fires = ", ".join(
            fire.astimezone(cron.zone).strftime("%Y-%m-%d %H:%M:%S %Z")
            for fire in cron.next_fires(now, count)
        )
        note = (
            " (months read differently by upstream)"
            if not compat and cron.months_differ_under_compat()
            else ""
        )
        lines.append(
            f"{schedule.id} ({schedule.name}): {schedule.cronSchedule} in {cron.zone}: {fires}{note}"
        )
    return lines, ok


__all__ = ["Job", "Run", "SchedulerService", "check_file"]
