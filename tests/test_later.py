"""The monitors' later.js frequencies: each accepted form against a brute-force reference that walks the
clock second by second (or minute by minute for forms that fire on whole minutes), in three zones and over
both daylight-saving changes; and the texts that are refused, with the forms that work."""

from __future__ import annotations

import bisect
import calendar
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from butler.config import ConfigError, parse_config
from butler.monitors.later import LaterError, Schedule, parse
from tests.conftest import base_config

ZONES = {
    "UTC": UTC,
    # Fall back on 2026-10-25 at 03:00 (02:00-02:59 twice).
    "Europe/Stockholm": ZoneInfo("Europe/Stockholm"),
    # Spring forward on 2026-03-08 at 02:00 (02:00-02:59 skipped).
    "America/New_York": ZoneInfo("America/New_York"),
}
STARTS = {
    "UTC": datetime(2026, 2, 27, 20, 0, tzinfo=UTC),
    "Europe/Stockholm": datetime(2026, 10, 24, 20, 0, tzinfo=UTC),
    "America/New_York": datetime(2026, 3, 7, 20, 0, tzinfo=UTC),
}


def _fires(schedule: Schedule, wall: datetime) -> bool:
    """Whether later.js fires at the local time ``wall``, read off the constraints directly."""
    if schedule.week_days is not None and wall.weekday() not in schedule.week_days:
        return False
    if schedule.month_days is not None:
        last = calendar.monthrange(wall.year, wall.month)[1]
        if wall.day not in schedule.month_days and not (0 in schedule.month_days and wall.day == last):
            return False
    if schedule.times is not None:
        return wall.hour * 3600 + wall.minute * 60 + wall.second in schedule.times
    units = [
        (schedule.hours, wall.hour),
        (schedule.minutes, wall.minute),
        (schedule.seconds, wall.second),
    ]
    constrained = [index for index, (allowed, _) in enumerate(units) if allowed is not None]
    finest = constrained[-1] if constrained else -1
    for index, (allowed, value) in enumerate(units):
        if index > finest and value != 0:
            return False
        if allowed is not None and value not in allowed:
            return False
    return True


# (text, step of the reference walk in seconds, days walked)
FORMS = [
    ("every 30 seconds", 1, 1),
    ("every 7 secs", 1, 1),
    ("every 15 minutes", 60, 2),
    ("every 5 mins", 60, 2),
    ("every 1 minute", 60, 1),
    ("every 6 hours", 60, 2),
    ("every 24 hours", 60, 3),
    ("every 5 h", 60, 2),
    ("at 10:15 am", 60, 3),
    ("at 12:30 pm and 18:00", 60, 3),
    ("at 03:30", 60, 3),
    ("on the first day of the month", 3600, 70),
    ("on the last day of the month", 3600, 70),
    ("on the 15th day of the month", 3600, 70),
    ("at 10:15 am on the first day of the month", 60, 40),
    ("every 6 hours on monday through friday", 60, 9),
    ("on sat and sunday", 3600, 9),
]


@pytest.mark.parametrize("zone_name", ZONES)
@pytest.mark.parametrize(("text", "step", "days"), FORMS)
def test_next_fire_is_the_first_matching_instant(zone_name: str, text: str, step: int, days: int) -> None:
    zone = ZONES[zone_name]
    schedule = parse(text)
    start = int(STARTS[zone_name].timestamp())
    end = start + days * 86400
    fires = [t for t in range(start, end, step) if _fires(schedule, datetime.fromtimestamp(t, zone))]
    assert fires, text
    # Every instant of the walk (and instants between its steps) before the last fire gets the next fire.
    probe_step = max(step // 3, 1) if step < 3600 else 1237
    for instant in range(start, fires[-1], probe_step * 7 + 1):
        for offset in (0.0, 0.4):
            expected = fires[bisect.bisect_right(fires, instant + offset)]
            assert schedule.next_after(instant + offset, zone) == expected, (text, instant + offset)


def test_the_templates_forms_fire_on_the_clock_not_after_start() -> None:
    def wall(text: str, now: datetime) -> datetime:
        return datetime.fromtimestamp(parse(text).next_after(now.timestamp(), UTC), UTC)

    now = datetime(2026, 5, 4, 7, 7, 17, 500000, tzinfo=UTC)
    assert wall("every 30 seconds", now) == now.replace(second=30, microsecond=0)
    assert wall("every 15 minutes", now) == now.replace(minute=15, second=0, microsecond=0)
    assert wall("every 6 hours", now) == now.replace(hour=12, minute=0, second=0, microsecond=0)
    assert wall("every 24 hours", now) == datetime(2026, 5, 5, tzinfo=UTC)
    assert wall("at 10:15 am", now) == now.replace(hour=10, minute=15, second=0, microsecond=0)
    # later.js reads "12:10 am" as 12:10 (it adds 12 to pm hours below 12 only).
    assert wall("at 12:10 am", now) == now.replace(hour=12, minute=10, second=0, microsecond=0)
    assert wall("on the first day of the month", now) == datetime(2026, 6, 1, tzinfo=UTC)
    # A fire exactly at the instant asked about is not "after" it.
    on_time = datetime(2026, 5, 4, 7, 15, tzinfo=UTC)
    assert wall("every 15 minutes", on_time) == on_time.replace(minute=30)


def test_the_host_zone_is_used_when_none_is_given() -> None:
    schedule = parse("every 6 hours")
    fire = schedule.next_after(datetime(2026, 5, 4, 7, 0).timestamp())
    assert datetime.fromtimestamp(fire).hour == 12


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("every 90 seconds", "once a minute"),
        ("every 61 minutes", "once a hour"),
        ("every 25 hours", "once a day"),
        ("every 0 seconds", "never"),
        ("every 2 days", "unknown unit 'days'"),
        ("every day", "cannot read"),
        ("after 10 minutes", "cannot read"),
        ("every 30 seconds except on monday", "cannot read"),
        ("every 30 seconds at 10:15", "cannot read"),
        ("at 25:00", "cannot read"),
        ("every 30 seconds every 5 minutes", "cannot read"),
        ("  ", "empty"),
        ("every 5 fortnights", "unknown unit"),
    ],
)
def test_other_text_is_refused_naming_the_forms_that_work(text: str, says: str) -> None:
    with pytest.raises(LaterError) as caught:
        parse(text)
    assert says in str(caught.value) and "'every N seconds' (N 1-60)" in str(caught.value)


def test_the_config_check_refuses_a_frequency_no_monitor_could_run(tmp_path: Path) -> None:
    document = base_config()
    document["Butler"]["heartbeat"] = {"enable": True, "remoteURL": "http://x/", "frequency": "every day"}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, base_dir=tmp_path)
    [message] = caught.value.messages
    assert message.startswith("Butler.heartbeat.frequency: cannot read 'every day'")
    assert "'at 10:15 am'" in message
    document["Butler"]["heartbeat"]["frequency"] = "Every  5 Minutes"
    assert parse_config(document, base_dir=tmp_path).monitors.heartbeat.frequency == "Every  5 Minutes"
