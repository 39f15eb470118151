"""Cron expressions of schedule files: when a schedule fires next, in the schedule's own time zone.

Grammar (``Cron.parse``): five fields ``minute hour day-of-month month day-of-week``, or six with a leading
``second`` field (upstream's form, e.g. ``'*/30 * * * * *'``); with five fields the second is 0. Each field
is ``*`` or a comma list of ``n``, ``a-b``, ``*/s`` and ``a-b/s`` (``s`` >= 1). Months are 1-12 or
``jan``-``dec``, days of the week 0-7 (0 and 7 are Sunday) or ``sun``-``sat``; names are case-insensitive and
may end ranges (``mon-fri``). ``a/s`` without a range, ``L``, ``W``, ``#``, ``?`` and ``@daily``-style macros
are rejected.

Days: when day-of-month and day-of-week are both restricted, a day matches if either does (Vixie cron). As in
Vixie cron, a field is unrestricted when it starts with ``*``, so ``*/2`` in one of them makes the two AND:
``0 0 */2 * 1`` is odd-numbered days that are Mondays.

``compat=True`` reads the expression as upstream Butler's cron library (npm ``cron`` 1.x) does:

- month numbers are 0-11, 0 being January (``0 0 1 1 *`` fires on 1 February; ``12`` is out of range);
  month names still mean their month (``jan`` is January);
- day-of-week numbers are 0-6 (``7`` is out of range);
- day-of-month and day-of-week always both have to match (AND), whether restricted or not.

Everything else (grammar, time zone, DST rules) is the same in both modes.

Time zones and DST: the fields are matched against the wall clock of the schedule's zone. A wall time the
clock skips (spring forward) fires once, at the first instant after the gap (``30 2 * * *`` fires at 03:00 on
the day Stockholm moves from 02:00 to 03:00); several skipped wall times that match fire once between them. A
wall time the clock shows twice (fall back) fires once, at its first occurrence: nothing fires during the
repeated hour's second pass.

Fires are returned as aware UTC datetimes: instants compare and subtract correctly across DST, which aware
datetimes sharing a ``ZoneInfo`` do not (Python compares those by wall time, ignoring ``fold``). Use
``.astimezone(cron.zone)`` to show them in the schedule's zone.
"""

from __future__ import annotations

import calendar
import functools
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from butler.errors import BadRequest


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str, zone: str, compat: bool) -> Cron:
    # Schedules of one file share a few crons (weekday mornings in one zone): one parse and one object each.
    return Cron._parse(text, zone, compat)


__all__ = ["Cron", "CronError"]

_MONTH_NAMES = {
    name: i
    for i, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}
_DAY_NAMES = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}

# Gregorian dates (weekdays included) repeat every 400 years, so a day rule that matches no date in one such
# cycle never matches.
_CYCLE_START = 2000
_CYCLE_YEARS = 400
_ONE_SECOND = timedelta(seconds=1)


class CronError(BadRequest):
    """A cron expression or time zone that cannot be scheduled; the message names the field and the value."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None
    # Added to a written number to get the value meant: 1 for compat's 0-based months.
    shift: int = 0


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DOM = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTH_NAMES)
_MONTH_COMPAT = _Field("month", 0, 11, _MONTH_NAMES, shift=1)
_DOW = _Field("day-of-week", 0, 7, _DAY_NAMES)
_DOW_COMPAT = _Field("day-of-week", 0, 6, _DAY_NAMES)


def _fail(problem: str) -> CronError:
    return CronError(f"cronSchedule: {problem}")


def _value(spec: _Field, token: str) -> int:
    """One number or name of a field, as written (names give the number they mean in that mode)."""
    if token.isdigit() and token.isascii():
        number = int(token)
        if not spec.low <= number <= spec.high:
            raise _fail(f"{spec.name} {number} is out of range {spec.low}-{spec.high}")
        return number
    if spec.names is not None and token.lower() in spec.names:
        # Names mean their month in both modes, so on a shifted scale they are written one lower.
        return spec.names[token.lower()] - spec.shift
    kind = "a number" if spec.names is None else f"a number or a {spec.name} name"
    raise _fail(f"{spec.name} {token!r} is not {kind}")


def _parse_field(spec: _Field, text: str) -> frozenset[int]:
    """The values (on the meant scale: months 1-12, Sunday 0) that a field's text allows."""
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise _fail(f"{spec.name} {text!r} has an empty list item")
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isdigit() and step_text.isascii()):
                raise _fail(f"{spec.name} step {step_text!r} in {item!r} is not a number")
            step = int(step_text)
            if step == 0:
                raise _fail(f"{spec.name} step 0 in {item!r} must be at least 1")
        if body == "*":
            first, last = spec.low, spec.high
        else:
            start, dash, end = body.partition("-")
            first = _value(spec, start)
            last = _value(spec, end) if dash else first
            if slash and not dash:
                raise _fail(f"{spec.name} step in {item!r} needs a range or * before the /")
            if last < first:
                raise _fail(f"{spec.name} range {body!r} runs backwards")
        values.update(v + spec.shift for v in range(first, last + 1, step))
    if spec is _DOW:
        values = {v % 7 for v in values}
    return frozenset(values)


def _load_zone(zone: str) -> ZoneInfo:
    try:
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: keys that are not relative paths ("/etc/x", "../x"); OSError: a directory ("Europe").
        raise CronError(f"timezone: unknown time zone {zone!r}") from None


def _offset(instant: int, zone: ZoneInfo) -> timedelta:
    offset = datetime.fromtimestamp(instant, zone).utcoffset()
    assert offset is not None
    return offset


def _epoch(naive: datetime, offset: timedelta) -> int:
    """The instant (epoch seconds) at which a wall time reads ``naive`` under ``offset``."""
    return int(calendar.timegm((naive - offset).timetuple()))


def _transition(after: int, until: int, zone: ZoneInfo) -> int:
    """The first instant in ``(after, until]`` with ``until``'s UTC offset; there is one change in between."""
    target = _offset(until, zone)
    low, high = after, until
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(middle, zone) == target:
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression in a time zone; build with ``Cron.parse``."""

    text: str
    zone: ZoneInfo
    compat: bool
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: tuple[int, ...]
    weekdays: frozenset[int]
    # Whether day-of-month and day-of-week must both match (else either may).
    both_days: bool
    _month_text: str = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str, *, zone: str = "UTC", compat: bool = False) -> Cron:
        """Parse a 5-field or (seconds first) 6-field expression; CronError names what is wrong."""
        return _parse_cached(text, zone, compat)

    @classmethod
    def _parse(cls, text: str, zone: str, compat: bool) -> Cron:
        fields = text.split()
        if len(fields) not in (5, 6):
            raise _fail(f"expected 5 or 6 fields (6 with seconds first), got {len(fields)} in {text!r}")
        if len(fields) == 5:
            fields.insert(0, "0")
        second, minute, hour, dom, month, dow = fields
        cron = cls(
            text=text,
            zone=_load_zone(zone),
            compat=compat,
            seconds=tuple(sorted(_parse_field(_SECOND, second))),
            minutes=tuple(sorted(_parse_field(_MINUTE, minute))),
            hours=tuple(sorted(_parse_field(_HOUR, hour))),
            days=_parse_field(_DOM, dom),
            months=tuple(sorted(_parse_field(_MONTH_COMPAT if compat else _MONTH, month))),
            weekdays=_parse_field(_DOW_COMPAT if compat else _DOW, dow),
            both_days=compat or dom.startswith("*") or dow.startswith("*"),
            _month_text=month,
        )
        if not cron._matches_some_date():
            raise _fail(f"{text!r} never fires: no date matches its day-of-month, month and day-of-week")
        return cron

    def months_differ_under_compat(self) -> bool:
        """Whether the month field means other months (or is invalid) under the other mode's numbering."""
        try:
            other = _parse_field(_MONTH if self.compat else _MONTH_COMPAT, self._month_text)
        except CronError:
            return True
        return other != frozenset(self.months)

    def next_after(self, moment: datetime) -> datetime:
        """The first fire strictly after ``moment`` (aware), as an aware UTC datetime."""
        if moment.utcoffset() is None:
            raise ValueError("moment must be an aware datetime")
        now = int(calendar.timegm(moment.astimezone(UTC).timetuple()))
        local = moment.astimezone(self.zone)
        wall = local.replace(tzinfo=None, fold=0)
        first_offset = wall.replace(tzinfo=self.zone).utcoffset()
        if first_offset is not None and first_offset != local.utcoffset():
            # In the second pass of a repeated hour every wall time of that hour has fired (first pass):
            # go on from where the repeat ends.
            changed = _transition(_epoch(wall, first_offset), now, self.zone)
            wall = datetime.fromtimestamp(changed, UTC).replace(tzinfo=None) + first_offset - _ONE_SECOND
        while True:
            wall = self._next_wall(wall)
            instant = self._instant(wall)
            if instant > now:
                return datetime.fromtimestamp(instant, UTC)

    def next_fires(self, moment: datetime, count: int) -> list[datetime]:
        """The next ``count`` fires after ``moment``, in order, as aware UTC datetimes."""
        fires: list[datetime] = []
        for _ in range(count):
            moment = self.next_after(moment)
            fires.append(moment)
        return fires

    def _instant(self, wall: datetime) -> int:
        """Epoch seconds of a wall time: its first occurrence, or the end of the gap it falls in."""
        before = wall.replace(tzinfo=self.zone, fold=0).utcoffset()
        after = wall.replace(tzinfo=self.zone, fold=1).utcoffset()
        assert before is not None and after is not None
        if after > before:
            return _transition(_epoch(wall, after), _epoch(wall, before), self.zone)
        return _epoch(wall, before)

    def _day_matches(self, year: int, month: int, day: int) -> bool:
        in_month = day in self.days
        in_week = (date(year, month, day).weekday() + 1) % 7 in self.weekdays
        return in_month and in_week if self.both_days else in_month or in_week

    def _matches_some_date(self) -> bool:
        years = range(_CYCLE_START, _CYCLE_START + _CYCLE_YEARS)
        for month in self.months:
            # The cycle starts with a leap year, so this counts 29 February in.
            for day in range(1, calendar.monthrange(_CYCLE_START, month)[1] + 1):
                if self.both_days and day not in self.days:
                    continue
                if any(
                    self._day_matches(year, month, day)
                    for year in years
                    if day <= calendar.monthrange(year, month)[1]
                ):
                    return True
        return False

    def _next_wall(self, after: datetime) -> datetime:
        """The first matching wall time strictly after ``after`` (naive), skipping by field."""
        start = after.replace(microsecond=0) + _ONE_SECOND
        year, month, day = start.year, start.month, start.day
        hour, minute, second = start.hour, start.minute, start.second
        while True:
            if month > 12:
                year, month = year + 1, 1
            if year > 9999:
                raise CronError(f"cronSchedule: {self.text!r} has no fire before the year 10000")
            if month not in self.months:
                i = bisect_left(self.months, month)
                if i == len(self.months):
                    year, month = year + 1, self.months[0]
                else:
                    month = self.months[i]
                day, hour, minute, second = 1, 0, 0, 0
                continue
            if day > calendar.monthrange(year, month)[1]:
                month, day, hour, minute, second = month + 1, 1, 0, 0, 0
                continue
            if not self._day_matches(year, month, day):
                day, hour, minute, second = day + 1, 0, 0, 0
                continue
            if hour not in self.hours:
                i = bisect_left(self.hours, hour)
                if i == len(self.hours):
                    day, hour, minute, second = day + 1, 0, 0, 0
                    continue
                hour, minute, second = self.hours[i], 0, 0
            if minute not in self.minutes:
                i = bisect_left(self.minutes, minute)
                if i == len(self.minutes):
                    hour, minute, second = hour + 1, 0, 0
                    if hour == 24:
                        day, hour = day + 1, 0
                    continue
                minute, second = self.minutes[i], 0
            if second not in self.seconds:
                i = bisect_left(self.seconds, second)
                if i == len(self.seconds):
                    minute, second = minute + 1, 0
                    if minute == 60:
                        hour, minute = hour + 1, 0
                        if hour == 24:
                            day, hour = day + 1, 0
                    continue
                second = self.seconds[i]
            return datetime(year, month, day, hour, minute, second)
