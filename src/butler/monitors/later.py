"""The monitors' frequencies: upstream's later.js text (``every 30 seconds``, ``at 10:15 am``), read the way
later.js reads it, for the forms that mean what they say.

later.js turns ``every N <unit>`` into the values of that unit divisible by N from the unit's first value:
``every 30 seconds`` is seconds 0 and 30 of each minute by the local clock, not 30 s after start-up;
``every 15 minutes`` is minutes 0/15/30/45 at second 0; ``every 6 hours`` hours 0/6/12/18 at 00:00;
``every 24 hours`` midnight. Units finer than the one named are at their start (0), coarser ones are
free. A schedule fires at the start of each instance of its finest constrained unit that meets every
constraint, in the host's local zone.

Accepted here (the forms of upstream's template and its documentation):

- ``every N seconds|minutes|hours`` (``s``, ``sec``, ``m``, ``min``, ``mins``, ``h``...), N up to the
  unit's count (60, 60, 24): a larger N would silently mean "once a minute/hour/day" in later.js;
- ``at 10:15``, ``at 10:15 am``, ``at 10:15 pm and 18:00`` (times of day);
- ``on the first day of the month``, ``on the last day of the month``, ``on the 15th day of the month``;
- ``on monday``, ``on mon and fri``, ``on monday through friday`` (days of the week);

a day clause with either of the first two (``at 10:15 am on the first day of the month``). Anything else
(later.js's ``after``, ``except``, ``also``, week numbers...) is refused, so the config check says so
instead of the monitor never running (later.js gives a schedule that never fires for text it cannot read).

One difference from later.js: a fire due less than a second after the computation is kept (later.js skips
to the one after it).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

FORMS = (
    "'every N seconds' (N 1-60), 'every N minutes' (N 1-60), 'every N hours' (N 1-24), "
    "'at 10:15 am' (times joined by 'and'), 'on the first|last|Nth day of the month', "
    "'on monday' (days joined by 'and' or 'through'), a day clause after 'every ...' or 'at ...'"
)

_UNITS = {
    "s": "second",
    "sec": "second",
    "secs": "second",
    "second": "second",
    "seconds": "second",
    "m": "minute",
    "min": "minute",
    "mins": "minute",
    "minute": "minute",
    "minutes": "minute",
    "h": "hour",
    "hour": "hour",
    "hours": "hour",
}
#: Values per unit (0 up to the count, exclusive).
_COUNTS = {"second": 60, "minute": 60, "hour": 24}
_DAYS = {"sun": 6, "mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5}
_DAY_NAME = r"(?:sun|mon|tue(?:s)?|wed(?:nes)?|thu(?:r(?:s)?)?|fri|sat(?:ur)?)(?:day)?"
_TIME = r"(?:(?:0?[1-9]|1[0-2]):[0-5]\d\s?(?:am|pm)|(?:[01]?\d|2[0-3]):[0-5]\d)"
_RANK = r"(?:[2-3]?1(?:st)?|2?2(?:nd)?|2?3(?:rd)?|(?:[4-9]|1\d|2[04-9]|30)(?:th)?)"

_EVERY = re.compile(r"every\s+(\d+)\s+(\w+)")
_AT = re.compile(rf"at\s+({_TIME}(?:\s+and\s+{_TIME})*)")
_MONTH_DAY = re.compile(rf"on\s+the\s+(first|last|{_RANK})\s+day\s+of\s+the\s+month")
_WEEK_DAYS = re.compile(rf"on\s+({_DAY_NAME}(?:\s+(?:and|through|-)\s+{_DAY_NAME})*)")


class LaterError(ValueError):
    """Text that is not one of the accepted forms; the message says which forms work."""


@dataclass(frozen=True)
class Schedule:
    """When a frequency fires: the allowed values of each constrained unit (None: free)."""

    text: str
    seconds: frozenset[int] | None = None
    minutes: frozenset[int] | None = None
    hours: frozenset[int] | None = None
    #: Seconds since midnight (``at`` times); exclusive with the three above.
    times: frozenset[int] | None = None
    #: Days of the month, 1-31, 0 for the last.
    month_days: frozenset[int] | None = None
    #: Days of the week, Monday 0.
    week_days: frozenset[int] | None = None

    def next_after(self, instant: float, zone: tzinfo | None = None) -> float:
        """The first fire strictly after ``instant`` (a POSIX time), by the clock of ``zone`` (None: the
        host's local zone)."""
        # The day's times before the wall time of ``instant`` are skipped, but in the first pass of an hour a
        # fall-back change repeats, where the second pass (up to an hour earlier by the clock) comes next.
        earliest = datetime.fromtimestamp(instant, zone)
        if earliest.fold == 0 and earliest.replace(fold=1).timestamp() != instant:
            earliest = datetime.fromtimestamp(instant - 3600, zone)
        day = earliest.date()
        for _ in range(800):  # a day clause matches within 31 days; this bound only guards a bug
            if self._day_matches(day):
                # Each fold's fires rise with the wall time; fold 1 differs only in the hour a fall-back
                # change repeats, whose second pass comes after the first pass of the hours that follow.
                firsts: list[float] = []
                for hour, minute, second in self._times_of_day(earliest if day == earliest.date() else None):
                    wall = datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=zone)
                    for fold in (0, 1):
                        fire = wall.replace(fold=fold).timestamp()
                        if fire > instant:
                            firsts.append(fire)
                    if wall.timestamp() > instant and wall.replace(fold=1).timestamp() > instant:
                        break
                if firsts:
                    return min(firsts)
            day += timedelta(days=1)
        raise AssertionError(f"{self.text!r} found no fire")

    def _day_matches(self, day: date) -> bool:
        if self.week_days is not None and day.weekday() not in self.week_days:
            return False
        if self.month_days is not None:
            last = calendar.monthrange(day.year, day.month)[1]
            return day.day in self.month_days or (0 in self.month_days and day.day == last)
        return True

    def _times_of_day(self, earliest: datetime | None) -> Iterator[tuple[int, int, int]]:
        """The day's fire times in order, from ``earliest``'s hour and minute on when given."""
        if self.times is not None:
            for time in sorted(self.times):
                yield time // 3600, time // 60 % 60, time % 60
            return
        finest = "second" if self.seconds else "minute" if self.minutes else "hour" if self.hours else "day"
        hours = self._values(self.hours, "hour", finest)
        minutes = self._values(self.minutes, "minute", finest)
        seconds = self._values(self.seconds, "second", finest)
        for hour in hours:
            if earliest is not None and hour < earliest.hour:
                continue
            for minute in minutes:
                if earliest is not None and hour == earliest.hour and minute < earliest.minute:
                    continue
                for second in seconds:
                    yield hour, minute, second

    @staticmethod
    def _values(allowed: frozenset[int] | None, unit: str, finest: str) -> list[int]:
        if allowed is not None:
            return sorted(allowed)
        order = ("second", "minute", "hour", "day")
        # Finer than the finest constrained unit: its start; coarser: every value.
        return [0] if order.index(unit) < order.index(finest) else list(range(_COUNTS[unit]))


def parse(text: str) -> Schedule:
    """The schedule later.js makes of ``text``; LaterError for text outside the accepted forms."""
    rest = " ".join(text.lower().split())
    fields: dict[str, frozenset[int]] = {}
    while rest:
        if (match := _EVERY.match(rest)) and "every" not in fields and "times" not in fields:
            _every(match, fields, text)
        elif (match := _AT.match(rest)) and "times" not in fields and "every" not in fields:
            fields["times"] = frozenset(_time(item) for item in re.split(r"\s+and\s+", match[1]))
        elif (match := _MONTH_DAY.match(rest)) and "month_days" not in fields:
            fields["month_days"] = frozenset({_month_day(match[1])})
        elif (match := _WEEK_DAYS.match(rest)) and "week_days" not in fields:
            fields["week_days"] = _week_days(match[1])
        else:
            raise LaterError(f"cannot read {text!r} from {rest!r} on; the forms that work: {FORMS}")
        rest = rest[match.end() :].strip()
        if rest.startswith("and "):
            rest = rest[4:]
    fields.pop("every", None)
    if not fields:
        raise LaterError(f"{text!r} is empty; the forms that work: {FORMS}")
    return Schedule(text, **fields)


def _every(match: re.Match[str], fields: dict[str, frozenset[int]], text: str) -> None:
    unit = _UNITS.get(match[2])
    if unit is None:
        raise LaterError(f"{text!r}: unknown unit {match[2]!r}; the forms that work: {FORMS}")
    count, step = _COUNTS[unit], int(match[1])
    if not 1 <= step <= count:
        raise LaterError(
            f"{text!r}: every {step} {unit}s is not a {unit} interval (later.js counts {unit}s from 0 to "
            f"{count - 1} and would fire {'never' if step == 0 else f'once a {_COARSER[unit]}'}); "
            f"the forms that work: {FORMS}"
        )
    fields["every"] = frozenset()
    fields[f"{unit}s"] = frozenset(range(0, count, step))


_COARSER = {"second": "minute", "minute": "hour", "hour": "day"}


def _time(text: str) -> int:
    match = re.fullmatch(r"(\d+):(\d\d)\s?(am|pm)?", text)
    assert match is not None
    hour, minute = int(match[1]), int(match[2])
    # later.js: 12 am is 12:00 (its parser never maps 12 am to midnight), pm adds 12 below 12.
    if match[3] == "pm" and hour < 12:
        hour += 12
    return hour * 3600 + minute * 60


def _month_day(rank: str) -> int:
    if rank == "first":
        return 1
    if rank == "last":
        return 0
    return int(re.match(r"\d+", rank)[0])  # type: ignore[index]


def _week_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in re.split(r"\s+and\s+", text):
        ends = [_DAYS[name[:3]] for name in re.split(r"\s+(?:through|-)\s+", part)]
        first, last = ends[0], ends[-1]
        # later.js counts Sunday first (1) to Saturday (7): a range runs in that order.
        order = [6, 0, 1, 2, 3, 4, 5]
        days.update(order[order.index(first) : order.index(last) + 1])
    return frozenset(days)


__all__ = ["FORMS", "LaterError", "Schedule", "parse"]
