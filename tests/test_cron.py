"""The scheduler's cron engine: grammar, next fire times (DST, leap days, compat months) and its errors."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from butler.errors import BadRequest
from butler.scheduler.cron import Cron, CronError


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def fires(text: str, start: datetime, count: int, *, zone: str = "UTC", compat: bool = False) -> list[str]:
    moments = Cron.parse(text, zone=zone, compat=compat).next_fires(start, count)
    assert all(m.tzinfo is UTC for m in moments)
    return [m.strftime("%Y-%m-%d %H:%M:%S") for m in moments]


# --- The examples of scheduler-semantics.md §2, the schedule template and butler-api.md §1.14 ---------------

# Friday 27 November 2026, UTC.
FRIDAY = utc(2026, 11, 27, 12, 0, 0)


def test_weekdays_at_six_skip_the_weekend() -> None:
    assert fires("0 6 * * 1-5", FRIDAY, 3) == [
        "2026-11-30 06:00:00",
        "2026-12-01 06:00:00",
        "2026-12-02 06:00:00",
    ]
    assert fires("0 6 * * 1-5", utc(2026, 11, 26, 5, 59, 59), 1) == ["2026-11-26 06:00:00"]


def test_first_of_january_is_january_and_february_under_compat() -> None:
    assert fires("0 0 1 1 *", utc(2026, 6, 15), 2) == ["2027-01-01 00:00:00", "2028-01-01 00:00:00"]
    assert fires("0 0 1 1 *", utc(2026, 1, 15), 2, compat=True) == [
        "2026-02-01 00:00:00",
        "2027-02-01 00:00:00",
    ]


def test_month_twelve_is_december_and_invalid_under_compat() -> None:
    assert fires("0 0 1 12 *", FRIDAY, 2) == ["2026-12-01 00:00:00", "2027-12-01 00:00:00"]
    with pytest.raises(CronError) as raised:
        Cron.parse("0 0 1 12 *", compat=True)
    assert str(raised.value) == "cronSchedule: month 12 is out of range 0-11"
    assert fires("0 0 1 11 *", FRIDAY, 1, compat=True) == ["2026-12-01 00:00:00"]


def test_first_of_month_or_monday_and_both_under_compat() -> None:
    assert fires("0 0 1 * 1", FRIDAY, 4) == [
        "2026-11-30 00:00:00",
        "2026-12-01 00:00:00",
        "2026-12-07 00:00:00",
        "2026-12-14 00:00:00",
    ]
    # Months 0-based too: "*" is all of them either way.
    assert fires("0 0 1 * 1", FRIDAY, 3, compat=True) == [
        "2027-02-01 00:00:00",
        "2027-03-01 00:00:00",
        "2027-11-01 00:00:00",
    ]


def test_template_every_thirty_seconds_in_stockholm() -> None:
    start = utc(2026, 11, 27, 12, 0, 10)
    assert fires("*/30 * * * * *", start, 3, zone="Europe/Stockholm") == [
        "2026-11-27 12:00:30",
        "2026-11-27 12:01:00",
        "2026-11-27 12:01:30",
    ]


def test_template_every_two_hours_in_london_winter_and_summer() -> None:
    assert fires("0 */2 * * *", utc(2026, 11, 27, 13), 2, zone="Europe/London") == [
        "2026-11-27 14:00:00",
        "2026-11-27 16:00:00",
    ]
    # 13:30 BST; the even local hours are odd hours in UTC.
    assert fires("0 */2 * * *", utc(2026, 7, 1, 12, 30), 2, zone="Europe/London") == [
        "2026-07-01 13:00:00",
        "2026-07-01 15:00:00",
    ]


def test_template_every_fifth_minute_of_office_hours_in_paris() -> None:
    # 18:20 CET on a Friday: two more, then Monday 06:00 CET.
    assert fires("0-30/5 6-18 * * 1-5", utc(2026, 11, 27, 17, 20), 4, zone="Europe/Paris") == [
        "2026-11-27 17:25:00",
        "2026-11-27 17:30:00",
        "2026-11-30 05:00:00",
        "2026-11-30 05:05:00",
    ]


def test_rest_example_half_past_six_and_six_on_weekdays_in_stockholm() -> None:
    assert fires("0,30 6 * * 1-5", FRIDAY, 3, zone="Europe/Stockholm") == [
        "2026-11-30 05:00:00",
        "2026-11-30 05:30:00",
        "2026-12-01 05:00:00",
    ]


# --- DST ----------------------------------------------------------------------------------------------------


def test_stockholm_spring_forward_fires_a_skipped_time_at_three_once() -> None:
    # 2026-03-29 02:00 CET becomes 03:00 CEST (01:00 UTC).
    assert fires("30 2 * * *", utc(2026, 3, 27, 12), 3, zone="Europe/Stockholm") == [
        "2026-03-28 01:30:00",
        "2026-03-29 01:00:00",
        "2026-03-30 00:30:00",
    ]


def test_stockholm_spring_forward_hourly_keeps_one_fire_per_real_hour() -> None:
    assert fires("0 * * * *", utc(2026, 3, 28, 23, 30), 4, zone="Europe/Stockholm") == [
        "2026-03-29 00:00:00",
        "2026-03-29 01:00:00",
        "2026-03-29 02:00:00",
        "2026-03-29 03:00:00",
    ]
    # 02:00, 02:15, ... 02:45 do not exist: they fire once, at 03:00, which also fires once.
    assert fires("*/15 * * * *", utc(2026, 3, 29, 0, 40), 4, zone="Europe/Stockholm") == [
        "2026-03-29 00:45:00",
        "2026-03-29 01:00:00",
        "2026-03-29 01:15:00",
        "2026-03-29 01:30:00",
    ]


def test_stockholm_fall_back_fires_a_repeated_time_once_at_its_first_occurrence() -> None:
    # 2026-10-25 03:00 CEST becomes 02:00 CET (01:00 UTC): 02:30 happens at 00:30 and 01:30 UTC.
    assert fires("30 2 * * *", utc(2026, 10, 24, 12), 3, zone="Europe/Stockholm") == [
        "2026-10-25 00:30:00",
        "2026-10-26 01:30:00",
        "2026-10-27 01:30:00",
    ]
    assert fires("0 * * * *", utc(2026, 10, 24, 22, 30), 4, zone="Europe/Stockholm") == [
        "2026-10-24 23:00:00",
        "2026-10-25 00:00:00",
        "2026-10-25 02:00:00",
        "2026-10-25 03:00:00",
    ]


def test_during_the_second_pass_of_the_repeated_hour_nothing_fires() -> None:
    cron = Cron.parse("* * * * * *", zone="Europe/Stockholm")
    # 02:00:00 CET (second pass) and 02:59:59 CEST (end of the first pass).
    assert cron.next_after(utc(2026, 10, 25, 1, 0, 0)) == utc(2026, 10, 25, 2, 0, 0)
    assert cron.next_after(utc(2026, 10, 25, 0, 59, 59)) == utc(2026, 10, 25, 2, 0, 0)
    assert cron.next_after(utc(2026, 10, 25, 0, 59, 58)) == utc(2026, 10, 25, 0, 59, 59)
    quarter = Cron.parse("*/15 * * * *", zone="Europe/Stockholm")
    assert quarter.next_after(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 25, 2, 0)


def test_new_york_spring_forward_and_fall_back() -> None:
    # 2026-03-08 02:00 EST becomes 03:00 EDT (07:00 UTC).
    assert fires("30 2 * * *", utc(2026, 3, 6, 12), 3, zone="America/New_York") == [
        "2026-03-07 07:30:00",
        "2026-03-08 07:00:00",
        "2026-03-09 06:30:00",
    ]
    assert fires("*/15 2 * * *", utc(2026, 3, 8, 0), 2, zone="America/New_York") == [
        "2026-03-08 07:00:00",
        "2026-03-09 06:00:00",
    ]
    # 2026-11-01 02:00 EDT becomes 01:00 EST (06:00 UTC): 01:30 happens at 05:30 and 06:30 UTC.
    assert fires("30 1 * * *", utc(2026, 10, 31, 12), 3, zone="America/New_York") == [
        "2026-11-01 05:30:00",
        "2026-11-02 06:30:00",
        "2026-11-03 06:30:00",
    ]
    assert fires("0 * * * *", utc(2026, 11, 1, 4, 30), 3, zone="America/New_York") == [
        "2026-11-01 05:00:00",
        "2026-11-01 07:00:00",
        "2026-11-01 08:00:00",
    ]


def test_a_daily_schedule_fires_every_day_across_both_changes() -> None:
    for zone, spring, autumn in [
        ("Europe/Stockholm", date(2026, 3, 29), date(2026, 10, 25)),
        ("America/New_York", date(2026, 3, 8), date(2026, 11, 1)),
    ]:
        for change in (spring, autumn):
            for text in ("0 2 * * *", "30 1 * * *", "59 2 * * *", "0 3 * * *"):
                start = datetime.combine(change - timedelta(days=3), datetime.min.time(), ZoneInfo(zone))
                days = [
                    f.astimezone(ZoneInfo(zone)).date()
                    for f in Cron.parse(text, zone=zone).next_fires(start, 6)
                ]
                assert days == [change - timedelta(days=3) + timedelta(days=i) for i in range(6)], (
                    zone,
                    text,
                )


def test_fires_in_a_zone_without_dst() -> None:
    assert fires("0 9 * * *", FRIDAY, 1, zone="Asia/Kolkata") == ["2026-11-28 03:30:00"]


# --- Leap days, seconds, names, days ------------------------------------------------------------------------


def test_the_29th_of_february_fires_in_leap_years_only() -> None:
    assert fires("0 0 29 2 *", utc(2026, 3, 1), 2) == ["2028-02-29 00:00:00", "2032-02-29 00:00:00"]
    # 2100 is not a leap year.
    assert fires("0 0 29 2 *", utc(2096, 3, 1), 1) == ["2104-02-29 00:00:00"]
    assert fires("0 0 29 feb *", utc(2028, 2, 28), 1) == ["2028-02-29 00:00:00"]


def test_the_31st_fires_only_in_months_that_have_one() -> None:
    assert fires("0 0 31 * *", utc(2026, 4, 1), 3) == [
        "2026-05-31 00:00:00",
        "2026-07-31 00:00:00",
        "2026-08-31 00:00:00",
    ]


def test_the_seconds_field() -> None:
    assert fires("15,45 * * * * *", utc(2026, 1, 1, 0, 0, 15), 3) == [
        "2026-01-01 00:00:45",
        "2026-01-01 00:01:15",
        "2026-01-01 00:01:45",
    ]
    assert fires("0-30/10 0 12 * * *", utc(2026, 1, 1, 12, 0, 20), 3) == [
        "2026-01-01 12:00:30",
        "2026-01-02 12:00:00",
        "2026-01-02 12:00:10",
    ]


def test_five_fields_fire_at_second_zero_and_a_moment_with_microseconds_counts() -> None:
    cron = Cron.parse("* * * * *")
    assert cron.next_after(utc(2026, 1, 1, 0, 0, 0)) == utc(2026, 1, 1, 0, 1)
    assert cron.next_after(datetime(2026, 1, 1, 0, 0, 59, 999_999, tzinfo=UTC)) == utc(2026, 1, 1, 0, 1)
    assert cron.next_after(datetime(2026, 1, 1, 0, 0, 59, 999_999, tzinfo=UTC)).microsecond == 0


def test_a_moment_in_any_zone_is_the_same_instant() -> None:
    cron = Cron.parse("0 12 * * *", zone="Europe/Stockholm")
    assert cron.next_after(datetime(2026, 6, 1, 5, 0, tzinfo=ZoneInfo("America/New_York"))) == utc(
        2026, 6, 1, 10
    )


def test_names_any_case_and_sunday_as_seven() -> None:
    assert fires("0 9 * * MON-fri", FRIDAY, 2) == ["2026-11-30 09:00:00", "2026-12-01 09:00:00"]
    sundays = ["2026-11-29 00:00:00", "2026-12-06 00:00:00"]
    assert fires("0 0 * * sun", FRIDAY, 2) == sundays
    assert fires("0 0 * * 7", FRIDAY, 2) == sundays
    assert fires("0 0 * * 0", FRIDAY, 2) == sundays
    assert fires("0 0 * * 5-7", FRIDAY, 3) == [
        "2026-11-28 00:00:00",
        "2026-11-29 00:00:00",
        "2026-12-04 00:00:00",
    ]
    assert fires("0 0 1 Jan,DEC *", FRIDAY, 2) == ["2026-12-01 00:00:00", "2027-01-01 00:00:00"]
    # Names mean their month under compat too.
    assert fires("0 0 1 jan-feb *", FRIDAY, 2, compat=True) == ["2027-01-01 00:00:00", "2027-02-01 00:00:00"]


def test_day_of_month_or_day_of_week() -> None:
    # 2026-11-27 is a Friday; 13 December a Sunday.
    assert fires("0 0 13 * 5", FRIDAY, 4) == [
        "2026-12-04 00:00:00",
        "2026-12-11 00:00:00",
        "2026-12-13 00:00:00",
        "2026-12-18 00:00:00",
    ]
    assert fires("0 0 13 * 5", FRIDAY, 2, compat=True) == ["2027-08-13 00:00:00", "2028-10-13 00:00:00"]
    # A field starting with * does not restrict (Vixie cron): both must match.
    assert fires("0 0 */2 * 1", FRIDAY, 3) == [
        "2026-12-07 00:00:00",
        "2026-12-21 00:00:00",
        "2027-01-11 00:00:00",
    ]
    assert fires("0 0 13 * *", FRIDAY, 1) == ["2026-12-13 00:00:00"]
    assert fires("0 0 * * 5", FRIDAY, 1) == ["2026-12-04 00:00:00"]


def test_steps_lists_and_ranges() -> None:
    assert fires("5-20/7,58 0 1 1 *", utc(2026, 1, 1), 5) == [
        "2026-01-01 00:05:00",
        "2026-01-01 00:12:00",
        "2026-01-01 00:19:00",
        "2026-01-01 00:58:00",
        "2027-01-01 00:05:00",
    ]
    assert fires("0 1-10/2 1 1 *", utc(2026, 1, 1), 6)[-1] == "2027-01-01 01:00:00"
    # A step longer than its range gives the range's first value.
    assert fires("*/90 0 1 1 *", utc(2026, 1, 1), 2) == ["2027-01-01 00:00:00", "2028-01-01 00:00:00"]


def test_next_fires_of_none_is_empty_and_a_naive_moment_is_refused() -> None:
    cron = Cron.parse("* * * * *")
    assert cron.next_fires(FRIDAY, 0) == []
    with pytest.raises(ValueError, match="aware"):
        cron.next_after(datetime(2026, 1, 1))


def test_rare_per_second_schedules_skip_by_field() -> None:
    started = time.perf_counter()
    assert fires("59 59 23 31 12 *", utc(2026, 1, 1), 2) == ["2026-12-31 23:59:59", "2027-12-31 23:59:59"]
    assert fires("0 0 0 29 feb mon", utc(2026, 1, 1), 1, compat=True) == ["2044-02-29 00:00:00"]
    assert len(Cron.parse("* * * * * *").next_fires(FRIDAY, 2000)) == 2000
    assert time.perf_counter() - started < 1.0


# --- compat reading of months -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "compat", "differs"),
    [
        ("0 0 1 * *", False, False),
        ("0 0 1 jan *", False, False),
        ("0 0 1 jan-mar *", True, False),
        ("0 0 1 */1 *", False, False),
        ("0 0 1 1 *", False, True),
        ("0 0 1 1-11 *", True, True),
        ("0 0 1 12 *", False, True),
        ("0 0 1 0 *", True, True),
        ("0 0 1 */2 *", False, False),
        ("0 0 1 2-6/2 *", False, True),
    ],
)
def test_months_that_read_differently_under_compat(text: str, compat: bool, differs: bool) -> None:
    assert Cron.parse(text, compat=compat).months_differ_under_compat() is differs


# --- Errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "compat", "message"),
    [
        ("0 0 1 13 *", False, "month 13 is out of range 1-12"),
        ("0 0 1 0 *", False, "month 0 is out of range 1-12"),
        ("0 0 * * 7", True, "day-of-week 7 is out of range 0-6"),
        ("0 0 * * 8", False, "day-of-week 8 is out of range 0-7"),
        ("60 * * * *", False, "minute 60 is out of range 0-59"),
        ("0 24 * * *", False, "hour 24 is out of range 0-23"),
        ("0 0 0 * *", False, "day-of-month 0 is out of range 1-31"),
        ("60 * * * * *", False, "second 60 is out of range 0-59"),
        ("*/0 * * * *", False, "minute step 0 in '*/0' must be at least 1"),
        ("0-30/x * * * *", False, "minute step 'x' in '0-30/x' is not a number"),
        ("5/10 * * * *", False, "minute step in '5/10' needs a range or * before the /"),
        ("0 20-5 * * *", False, "hour range '20-5' runs backwards"),
        ("0 0 * * fri-mon", False, "day-of-week range 'fri-mon' runs backwards"),
        ("0 0 1 foo *", False, "month 'foo' is not a number or a month name"),
        ("0 0 * * monday", False, "day-of-week 'monday' is not a number or a day-of-week name"),
        ("0 jan * * *", False, "hour 'jan' is not a number"),
        ("0 0 L * *", False, "day-of-month 'L' is not a number"),
        ("0 0 ? * *", False, "day-of-month '?' is not a number"),
        ("0 0 * * 1#2", False, "day-of-week '1#2' is not a number or a day-of-week name"),
        ("1,,2 * * * *", False, "minute '1,,2' has an empty list item"),
        ("-1 * * * *", False, "minute '' is not a number"),
        ("0 0 1-/2 * *", False, "day-of-month '' is not a number"),
        ("٣ * * * *", False, "minute '٣' is not a number"),
        ("@daily", False, "expected 5 or 6 fields (6 with seconds first), got 1 in '@daily'"),
        ("", False, "expected 5 or 6 fields (6 with seconds first), got 0 in ''"),
        ("* * * *", False, "expected 5 or 6 fields (6 with seconds first), got 4 in '* * * *'"),
        (
            "0 0 0 1 1 * 2026",
            False,
            "expected 5 or 6 fields (6 with seconds first), got 7 in '0 0 0 1 1 * 2026'",
        ),
    ],
)
def test_invalid_expressions_name_the_field_and_value(text: str, compat: bool, message: str) -> None:
    with pytest.raises(CronError) as raised:
        Cron.parse(text, compat=compat)
    assert str(raised.value) == f"cronSchedule: {message}"
    assert isinstance(raised.value, BadRequest)


@pytest.mark.parametrize(
    ("text", "compat"),
    [
        ("0 0 31 2 *", False),
        ("0 0 30 2 *", False),
        ("0 0 31 4,6,9,11 *", False),
        ("0 0 30,31 feb *", True),
        ("0 0 0 31 1 *", True),
    ],
)
def test_a_schedule_that_never_fires_is_refused(text: str, compat: bool) -> None:
    with pytest.raises(CronError) as raised:
        Cron.parse(text, compat=compat)
    assert str(raised.value) == (
        f"cronSchedule: {text!r} never fires: no date matches its day-of-month, month and day-of-week"
    )


def test_the_31st_of_february_or_a_monday_fires_on_mondays() -> None:
    assert fires("0 0 31 2 1", FRIDAY, 1) == ["2027-02-01 00:00:00"]
    # Under compat 2 is March, and both have to match.
    assert fires("0 0 31 2 1", FRIDAY, 1, compat=True) == ["2031-03-31 00:00:00"]
    with pytest.raises(CronError):
        Cron.parse("0 0 31 1 1", compat=True)


@pytest.mark.parametrize("zone", ["Mars/Base", "", "../etc/passwd", "/etc/localtime", "Europe"])
def test_an_unknown_time_zone_is_refused(zone: str) -> None:
    with pytest.raises(CronError) as raised:
        Cron.parse("* * * * *", zone=zone)
    assert str(raised.value) == f"timezone: unknown time zone {zone!r}"


# --- Against a brute-force reference ------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0


MINUTE, HOUR, DOM = Spec(0, 59), Spec(0, 23), Spec(1, 31)
MONTH = Spec(1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)
DOW = Spec(0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"), 0)


@st.composite
def field(draw: st.DrawFn, spec: Spec) -> tuple[str, set[int]]:
    """A field's text and, worked out apart from the parser, the values it allows."""

    def number(value: int) -> str:
        index = value - spec.name_base
        if spec.names and 0 <= index < len(spec.names) and draw(st.booleans()):
            name = spec.names[index]
            return draw(st.sampled_from([name, name.upper(), name.title()]))
        return str(value)

    if draw(st.integers(0, 4)) == 0:
        step = draw(st.integers(1, spec.high - spec.low + 1))
        return ("*" if step == 1 else f"*/{step}"), set(range(spec.low, spec.high + 1, step))
    parts: list[str] = []
    values: set[int] = set()
    for _ in range(draw(st.integers(1, 3))):
        first = draw(st.integers(spec.low, spec.high))
        kind = draw(st.sampled_from(["value", "range", "step"]))
        if kind == "value":
            parts.append(number(first))
            values.add(first)
            continue
        last = draw(st.integers(first, spec.high))
        step = draw(st.integers(1, 5)) if kind == "step" else 1
        parts.append(f"{number(first)}-{number(last)}" + (f"/{step}" if kind == "step" else ""))
        values.update(range(first, last + 1, step))
    return ",".join(parts), values


def reference(
    fields: list[tuple[str, set[int]]], moment: datetime, horizon: timedelta
) -> tuple[datetime | None, bool]:
    """The first matching minute after ``moment``, minute by minute (days that cannot match skipped)."""
    (_, minutes), (_, hours), (dom_text, doms), (_, months), (dow_text, dows) = fields
    sundays = {d % 7 for d in dows}
    either = not dom_text.startswith("*") and not dow_text.startswith("*")

    def day_ok(day: date) -> bool:
        a, b = day.day in doms, day.isoweekday() % 7 in sundays
        return day.month in months and (a or b if either else a and b)

    candidate = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    end = moment + horizon
    while candidate <= end:
        if not day_ok(candidate.date()):
            candidate = datetime.combine(candidate.date() + timedelta(days=1), datetime.min.time(), UTC)
            continue
        if candidate.hour in hours and candidate.minute in minutes:
            return candidate, True
        candidate += timedelta(minutes=1)
    return None, False


@settings(max_examples=150, deadline=None)
@given(
    minute=field(MINUTE),
    hour=field(HOUR),
    dom=field(DOM),
    month=field(MONTH),
    dow=field(DOW),
    moment=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2031, 12, 31), timezones=st.just(UTC)
    ),
)
def test_next_after_agrees_with_a_minute_by_minute_search(
    minute: tuple[str, set[int]],
    hour: tuple[str, set[int]],
    dom: tuple[str, set[int]],
    month: tuple[str, set[int]],
    dow: tuple[str, set[int]],
    moment: datetime,
) -> None:
    fields = [minute, hour, dom, month, dow]
    text = " ".join(text for text, _ in fields)
    try:
        cron = Cron.parse(text)
    except CronError as error:
        assert "never fires" in str(error)
        assert reference(fields, datetime(2000, 1, 1, tzinfo=UTC), timedelta(days=366 * 4))[0] is None
        return
    horizon = timedelta(days=120)
    expected, found = reference(fields, moment, horizon)
    got = cron.next_after(moment)
    if found:
        assert got == expected, text
    else:
        assert got > moment + horizon, text


ZONES = ["Europe/Stockholm", "America/New_York", "Australia/Lord_Howe", "Asia/Tehran", "UTC"]


@settings(max_examples=60, deadline=None)
@given(
    minute=field(MINUTE),
    hour=field(HOUR),
    zone=st.sampled_from(ZONES),
    moment=st.datetimes(
        min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
)
def test_fires_in_a_zone_are_increasing_and_match_or_end_a_gap(
    minute: tuple[str, set[int]], hour: tuple[str, set[int]], zone: str, moment: datetime
) -> None:
    cron = Cron.parse(f"{minute[0]} {hour[0]} * * *", zone=zone)
    previous = moment
    tz = ZoneInfo(zone)
    for fire in cron.next_fires(moment, 30):
        assert fire > previous
        local = fire.astimezone(tz)
        just_before = (fire - timedelta(seconds=1)).astimezone(tz)
        skipped_here = local.utcoffset() != just_before.utcoffset() and local.replace(tzinfo=None) > (
            just_before.replace(tzinfo=None) + timedelta(seconds=1)
        )
        assert (local.hour in hour[1] and local.minute in minute[1]) or skipped_here
        # A wall time never fires twice: not in its second occurrence.
        assert local.fold == 0 or local.replace(fold=0).utcoffset() == local.utcoffset()
        previous = fire


def test_the_second_pass_of_a_repeated_hour_is_skipped_in_one_step(monkeypatch: pytest.MonkeyPatch) -> None:
    searched: list[datetime] = []
    search = Cron._next_wall

    def counted(self: Cron, after: datetime) -> datetime:
        searched.append(after)
        return search(self, after)

    monkeypatch.setattr(Cron, "_next_wall", counted)
    cron = Cron.parse("* * * * * *", zone="Europe/Stockholm")
    assert cron.next_after(utc(2026, 10, 25, 1, 0, 1)) == utc(2026, 10, 25, 2, 0, 0)
    assert searched == [datetime(2026, 10, 25, 2, 59, 59)]
