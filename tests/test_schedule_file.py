"""The schedule file: upstream's files load unchanged; saves are atomic and never overwrite an edit."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from butler.errors import Conflict, Unavailable
from butler.scheduler import store
from butler.scheduler.store import (
    InvalidSchedule,
    Schedule,
    ScheduleFile,
    ScheduleFileChanged,
    ScheduleFileError,
    document_of,
    load,
    render,
    resolve,
)

# shared/upstream/schedule_template.yaml, byte for byte: a file upstream Butler wrote and users already have.
TEMPLATE = """\
butlerSchedule:
  - name: Every 30 sec
    cronSchedule: '*/30 * * * * *'
    timezone: Europe/Stockholm
    qlikSenseTaskId: 0fe447a9-ba1f-44a9-ac23-68c3a1d88d8b
    startupState: started
    tags:
      - Sales
      - abc 123 åäö
      - Transform
    id: task-1
    lastKnownState: started
  - name: Every 2 hours on top of the hour
    cronSchedule: '0 */2 * * *'
    timezone: Europe/London
    qlikSenseTaskId: 0fe447a9-ba1f-44a9-ac23-68c3a1d88d8b
    startupState: started
    tags:
      - Finance
      - Extract
    id: task-2
    lastKnownState: started
  - name: >-
      Every 5th minute from 0 through 30 past every hour from 6 through 18 on
      every day-of-week from Monday through Friday
    cronSchedule: '0-30/5 6-18 * * 1-5'
    timezone: Europe/Paris
    qlikSenseTaskId: 0fe447a9-ba1f-44a9-ac23-68c3a1d88d8b
    startupState: started
    tags:
      - finance ETL
      - weekdays
    id: Manually-added-schedule-1
    lastKnownState: started
"""
TASK = "0fe447a9-ba1f-44a9-ac23-68c3a1d88d8b"
GUID = "71b7a3c2-5d8e-4f6a-9b1c-2d3e4f5a6b7c"


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def schedule(number: int, **fields: Any) -> Schedule:
    values: dict[str, Any] = {
        "name": f"Schedule {number}",
        "cronSchedule": "0 6 * * 1-5",
        "qlikSenseTaskId": TASK,
        "startupState": "started",
        "id": f"task-{number}",
        "timezone": "Europe/Stockholm",
    }
    values.update(fields)
    return Schedule(**values)


def test_the_upstream_template_loads_with_its_exact_values(tmp_path: Path) -> None:
    result = load(write(tmp_path / "schedule.yaml", TEMPLATE))

    assert result.problems == []
    assert result.left_out == []
    assert result.schedules == [
        Schedule(
            name="Every 30 sec",
            cronSchedule="*/30 * * * * *",
            timezone="Europe/Stockholm",
            qlikSenseTaskId=TASK,
            startupState="started",
            tags=("Sales", "abc 123 åäö", "Transform"),
            id="task-1",
            lastKnownState="started",
        ),
        Schedule(
            name="Every 2 hours on top of the hour",
            cronSchedule="0 */2 * * *",
            timezone="Europe/London",
            qlikSenseTaskId=TASK,
            startupState="started",
            tags=("Finance", "Extract"),
            id="task-2",
            lastKnownState="started",
        ),
        Schedule(
            name="Every 5th minute from 0 through 30 past every hour from 6 through 18 on every "
            "day-of-week from Monday through Friday",
            cronSchedule="0-30/5 6-18 * * 1-5",
            timezone="Europe/Paris",
            qlikSenseTaskId=TASK,
            startupState="started",
            tags=("finance ETL", "weekdays"),
            id="Manually-added-schedule-1",
            lastKnownState="started",
        ),
    ]
    assert list(result.schedules[0].as_dict()) == [
        "name",
        "cronSchedule",
        "timezone",
        "qlikSenseTaskId",
        "startupState",
        "tags",
        "id",
        "lastKnownState",
    ]


async def test_saving_the_template_writes_it_back_byte_for_byte(tmp_path: Path) -> None:
    path = write(tmp_path / "schedule.yaml", TEMPLATE)
    file = ScheduleFile(path)
    result = await file.load()

    await file.save(result.schedules)

    assert path.read_text(encoding="utf-8") == TEMPLATE


async def test_a_new_schedule_is_written_in_upstreams_order_and_style(tmp_path: Path) -> None:
    file = ScheduleFile(tmp_path / "schedule.yaml")
    assert (await file.load()).schedules == []
    created = Schedule(
        name="Reload sales",
        cronSchedule="0,30 6 * * 1-5",
        timezone="Europe/Stockholm",
        qlikSenseTaskId=GUID,
        startupState="started",
        tags=("t1", "åäö"),
        id=GUID,
        created="2026-11-24T01:57:27.346Z",
        lastKnownState="started",
    )

    await file.save([created])

    assert (tmp_path / "schedule.yaml").read_text(encoding="utf-8") == (
        "butlerSchedule:\n"
        "  - name: Reload sales\n"
        "    cronSchedule: '0,30 6 * * 1-5'\n"
        "    timezone: Europe/Stockholm\n"
        f"    qlikSenseTaskId: {GUID}\n"
        "    startupState: started\n"
        "    tags:\n"
        "      - t1\n"
        "      - åäö\n"
        f"    id: {GUID}\n"
        "    created: '2026-11-24T01:57:27.346Z'\n"
        "    lastKnownState: started\n"
    )
    assert json.dumps(created.as_dict(), ensure_ascii=False) == (
        '{"name": "Reload sales", "cronSchedule": "0,30 6 * * 1-5", "timezone": "Europe/Stockholm", '
        f'"qlikSenseTaskId": "{GUID}", "startupState": "started", "tags": ["t1", "åäö"], "id": "{GUID}", '
        '"created": "2026-11-24T01:57:27.346Z", "lastKnownState": "started"}'
    )


async def test_a_round_trip_keeps_unknown_keys_but_not_comments(tmp_path: Path) -> None:
    path = write(
        tmp_path / "schedule.yaml",
        "# Schedules of the Sales stream\n"
        "owner: bi-team\n"
        "butlerSchedule:\n"
        "  - name: Nightly  # the big one\n"
        "    cronSchedule: '0 2 * * *'\n"
        "    timeZone: Europe/Berlin\n"
        "    qlikSenseTaskId: task-a\n"
        "    startupState: stop\n"
        "    id: n1\n"
        "    custom:\n"
        "      retries: 3\n"
        "      notes: [a, b]\n"
        "    lastKnownState: stopped\n"
        "version: 2\n",
    )
    file = ScheduleFile(path)
    first = await file.load()
    assert first.schedules[0].extra == {
        "timeZone": "Europe/Berlin",
        "custom": {"retries": 3, "notes": ["a", "b"]},
    }
    assert first.schedules[0].timezone is None

    await file.save(first.schedules)
    again = load(path)

    assert again.schedules == first.schedules
    assert again.document == first.document
    assert list(again.document) == ["owner", "butlerSchedule", "version"]
    text = path.read_text(encoding="utf-8")
    # PyYAML does not keep comments; upstream loses them on its first write too.
    assert "#" not in text
    assert text == (
        "owner: bi-team\n"
        "butlerSchedule:\n"
        "  - name: Nightly\n"
        "    cronSchedule: '0 2 * * *'\n"
        "    qlikSenseTaskId: task-a\n"
        "    startupState: stop\n"
        "    id: n1\n"
        "    lastKnownState: stopped\n"
        "    timeZone: Europe/Berlin\n"
        "    custom:\n"
        "      retries: 3\n"
        "      notes:\n"
        "        - a\n"
        "        - b\n"
        "version: 2\n"
    )


def test_scalars_are_read_as_js_yaml_reads_them(tmp_path: Path) -> None:
    path = write(
        tmp_path / "schedule.yaml",
        "butlerSchedule:\n"
        "  - name: yes\n"
        "    cronSchedule: '0 6 * * *'\n"
        "    qlikSenseTaskId: on\n"
        "    startupState: started\n"
        "    tags: [no, off, 12:30, 2026-11-24, Ünïcødé, 日本]\n"
        "    id: task-7\n"
        "    created: 2026-11-24T01:57:27.346Z\n"
        "    flag: true\n"
        "    count: 0x10\n"
        "    ratio: 1e3\n",
    )

    [loaded] = load(path).schedules

    assert loaded.name == "yes"
    assert loaded.qlikSenseTaskId == "on"
    assert loaded.tags == ("no", "off", "12:30", "2026-11-24", "Ünïcødé", "日本")
    assert loaded.created == "2026-11-24T01:57:27.346Z"
    assert loaded.extra == {"flag": True, "count": 16, "ratio": 1000.0}


@settings(max_examples=150, deadline=None)
@given(
    name=st.one_of(
        st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=200),
        # Long words and spaces: folded into lines, and unfolded on reading.
        st.lists(
            st.sampled_from(["a", "bcdefghij" * 3, "x" * 90, " ", "  ", "\n", "é", "# ", ": ", "\t"]),
            min_size=20,
            max_size=80,
        ).map("".join),
    ),
    tags=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=30), min_size=1, max_size=4),
)
def test_any_text_survives_a_write_and_a_read(name: str, tags: list[str]) -> None:
    document = {"butlerSchedule": [schedule(1, name=name, tags=tuple(tags), id=name).as_dict()]}

    text = render(document)

    back = yaml.load(text, Loader=store._Loader)
    assert back == document
    # Quoted wherever YAML 1.1 readers, PyYAML's default among them, would read something else.
    assert yaml.safe_load(text) == document


def read_with_nodes(data: bytes) -> tuple[Any, dict[str, int]]:
    """The document and the cron lines as the node tree gives them, the reader of files with problems."""
    loader = store._Loader(data)
    try:
        root = loader.get_single_node()
        document = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    lines = {}
    items = store._value_node(root, "butlerSchedule")
    for position, node in enumerate(items.value if isinstance(items, yaml.SequenceNode) else []):
        line = store._field_line(node, "cronSchedule")
        if line is not None:
            lines[position] = line
    return document, lines


def assert_readers_agree(data: bytes, *, tagged: bool = False) -> None:
    plain = store._read_plain(data)
    if plain is None and tagged:
        return  # explicit tags are the node tree's
    assert plain is not None, "left to the node tree"
    document, lines = read_with_nodes(data)
    # Typed, since 1 == 1.0 == True: the readers must agree on what each value is, not only on its worth.
    assert typed(plain[0]) == typed(document)
    assert plain[1] == lines


def typed(value: Any) -> Any:
    if isinstance(value, dict):
        return [(typed(key), typed(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


# Files as admins write them: every way of writing a value the plain reader handles itself.
@pytest.mark.parametrize(
    "text",
    [
        TEMPLATE,
        TEMPLATE.replace("\n", "\r\n"),
        "\ufeff" + TEMPLATE,
        "---\n" + TEMPLATE + "...\n",
        "# schedules\nversion: 2\nbutlerSchedule:  # the list\n"
        "  - {name: A, cronSchedule: '1 * * * *', qlikSenseTaskId: t, startupState: started, id: a}\n"
        '  - name: "B\\tquoted"\n    cronSchedule: "2 * * * *"\n    id: \'b\'\n'
        "    tags: [x, 'y', \"z\", 1, 0o17, 0x1f, -2.5e3, .inf, -.INF, true, False, ~, null, yes, 12:30,"
        " '']\n"
        "    empty:\n    nested: {a: [1, {b: c}], 3: d, null: e, true: f}\n"
        "    literal: |\n      line one\n      line two\n    folded: >-\n      word\n      word\n",
        "butlerSchedule:\n- name: flush list\n  cronSchedule:\n    '0 6 * * *'\n  id: x\n"
        "- cronSchedule: '0 7 * * *'\n  cronSchedule: '0 8 * * *'\n",
        "butlerSchedule:\n  - [cronSchedule, '0 6 * * *']\n  - cronSchedule\n  - 3\n",
        "other:\n  butlerSchedule:\n    - cronSchedule: '0 6 * * *'\nbutlerSchedule: []\n",
        "butlerSchedule:\n",
        "",
        "# nothing\n",
        "- 1\n- 2\n",
        "just text\n",
    ],
)
def test_the_plain_reader_reads_every_file_as_the_node_tree_does(text: str) -> None:
    assert_readers_agree(text.encode("utf-8"))


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
    | st.sampled_from(
        ["yes", "~", "0o17", "1e3", "12:30", ".inf", "0x1F", "True", "null", "-", "'", "#", "- a"]
    ),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers() | st.booleans(), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    entries=st.lists(
        st.dictionaries(st.sampled_from(["cronSchedule", "name", "id", "x"]), _values), max_size=4
    ),
    flow=st.sampled_from([None, False, True]),
    width=st.sampled_from([20, 80]),
    style=st.sampled_from([None, "'", '"']),
)
def test_the_plain_reader_agrees_with_the_node_tree_on_any_document(
    entries: list[dict[str, Any]], flow: bool | None, width: int, style: str | None
) -> None:
    document = {"butlerSchedule": entries}
    for dumper in (yaml.SafeDumper, store._Dumper):
        text = yaml.dump(
            document,
            Dumper=dumper,
            default_flow_style=flow,
            width=width,
            default_style=style,
            allow_unicode=True,
        )
        # Quoting every value makes the dumpers tag the numbers, booleans and nulls.
        assert_readers_agree(text.encode("utf-8"), tagged=style is not None)


@pytest.mark.parametrize(
    ("text", "name", "line"),
    [
        (
            "defaults: &d {qlikSenseTaskId: t, startupState: started}\nbutlerSchedule:\n"
            "  - {<<: *d, name: A, cronSchedule: '0 6 * * *', id: a}\n",
            "A",
            3,
        ),
        (
            "butlerSchedule:\n  - name: !!str 5\n    cronSchedule: '0 6 * * *'\n    qlikSenseTaskId: t\n"
            "    startupState: started\n    id: a\n",
            "5",
            3,
        ),
        (
            "butlerSchedule:\n  - id: &same a\n    name: *same\n    qlikSenseTaskId: t\n"
            "    startupState: started\n    cronSchedule: '0 6 * * *'\n",
            "a",
            6,
        ),
    ],
)
def test_what_the_plain_reader_leaves_to_the_node_tree_loads_all_the_same(
    tmp_path: Path, text: str, name: str, line: int
) -> None:
    assert store._read_plain(text.encode("utf-8")) is None

    result = load(write(tmp_path / "schedule.yaml", text))

    [loaded] = result.schedules
    assert (loaded.id, loaded.name, loaded.qlikSenseTaskId, result.cron_lines) == (
        "a",
        name,
        "t",
        {"a": line},
    )


def test_a_complex_key_is_left_to_the_node_tree_which_refuses_it(tmp_path: Path) -> None:
    path = write(tmp_path / "schedule.yaml", "butlerSchedule:\n  - {? [a]: b, id: a}\n")

    assert store._read_plain(path.read_bytes()) is None
    with pytest.raises(ScheduleFileError, match="line 2: not valid YAML: found unhashable key"):
        load(path)


def test_several_documents_are_refused_as_the_node_tree_refuses_them(tmp_path: Path) -> None:
    path = write(tmp_path / "schedule.yaml", "butlerSchedule: []\n---\nbutlerSchedule: []\n")

    assert store._read_plain(path.read_bytes()) is None
    with pytest.raises(ScheduleFileError, match="line 2: not valid YAML: but found another document"):
        load(path)


def test_a_large_file_is_read_without_the_node_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [schedule(n, id=f"s{n}").as_dict() for n in range(200)]
    path = write(tmp_path / "schedule.yaml", render({"butlerSchedule": entries}).decode("utf-8"))
    monkeypatch.setattr(store._Loader, "get_single_node", lambda self: pytest.fail("node tree built"))

    result = load(path)

    assert [s.id for s in result.schedules] == [f"s{n}" for n in range(200)]
    assert result.cron_lines == {f"s{n}": 3 + 6 * n for n in range(200)}


def test_bad_entries_are_reported_with_their_line_and_left_out(tmp_path: Path) -> None:
    path = write(
        tmp_path / "schedule.yaml",
        "butlerSchedule:\n"  # 1
        "  - name: Good one\n"  # 2
        "    cronSchedule: '0 6 * * *'\n"
        "    qlikSenseTaskId: t\n"
        "    startupState: started\n"
        "    id: a\n"  # 6
        "  - name: Tagged\n"  # 7
        "    cronSchedule: '0 7 * * *'\n"
        "    qlikSenseTaskId: t\n"
        "    startupState: started\n"
        "    tags:\n"  # 11
        "      - fine\n"
        "      - 2024\n"  # 13
        "    id: b\n"
        "  - name: No cron\n"  # 15
        "    qlikSenseTaskId: t\n"
        "    startupState: started\n"
        "    id: c\n"
        "  - just text\n"  # 19
        "  - name: Bad state\n"  # 20
        "    cronSchedule: '0 8 * * *'\n"
        "    qlikSenseTaskId: t\n"
        "    startupState: running\n"  # 23
        "    id: d\n"
        "  - name: Twin\n"  # 25
        "    cronSchedule: '0 9 * * *'\n"
        "    qlikSenseTaskId: t\n"
        "    startupState: stopped\n"
        "    id: a\n"  # 29
        "  - name: Also good\n"  # 30
        "    cronSchedule: '0 10 * * *'\n"
        "    qlikSenseTaskId: t\n"
        "    startupState: stopped\n"
        "    id: 7\n"  # 34
        "  - name: Last good\n"  # 35
        "    cronSchedule: '0 11 * * *'\n"
        "    qlikSenseTaskId: t\n"
        "    startupState: stop\n"
        "    id: e\n",
    )

    result = load(path)

    assert [s.id for s in result.schedules] == ["a", "e"]
    messages = [str(problem) for problem in result.problems]
    assert all(message.startswith(f"{path}, line ") for message in messages)
    assert [message.removeprefix(f"{path}, ") for message in messages] == [
        "line 13, butlerSchedule[1] (id b, 'Tagged'): tags/1 must be a string, not a number (quote it)",
        "line 15, butlerSchedule[2] (id c, 'No cron'): must have required property 'cronSchedule'",
        "line 19, butlerSchedule[3]: must be a mapping of schedule fields, not str",
        "line 23, butlerSchedule[4] (id d, 'Bad state'): startupState must be one of start, started, stop, "
        "stopped",
        "line 29, butlerSchedule[5] (id a, 'Twin'): id is already the id of butlerSchedule[0] (line 2)",
        "line 34, butlerSchedule[6] (id 7, 'Also good'): id must be a string, not a number (quote it)",
    ]
    assert [(p.index, p.line) for p in result.problems] == [
        (1, 13),
        (2, 15),
        (3, 19),
        (4, 23),
        (5, 29),
        (6, 34),
    ]
    assert [index for index, _ in result.left_out] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(problem, ScheduleFileError) for problem in result.problems)


async def test_entries_left_out_are_written_back_where_they_were(tmp_path: Path) -> None:
    path = write(
        tmp_path / "schedule.yaml",
        "butlerSchedule:\n"
        "  - {name: A, cronSchedule: '1 * * * *', qlikSenseTaskId: t, startupState: started, id: a}\n"
        "  - {name: Typo, cronSchedule: '2 * * * *', qlikSenseTaskId: t, startupState: startd, id: b}\n"
        "  - {name: C, cronSchedule: '3 * * * *', qlikSenseTaskId: t, startupState: started, id: c}\n",
    )
    file = ScheduleFile(path)
    loaded = await file.load()

    await file.save([*loaded.schedules, schedule(4, id="d")])

    entries = yaml.safe_load(path.read_text(encoding="utf-8"))["butlerSchedule"]
    assert [(entry["id"], entry["startupState"]) for entry in entries] == [
        ("a", "started"),
        ("b", "startd"),
        ("c", "started"),
        ("d", "started"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("butlerSchedule: nightly\n", "line 1: butlerSchedule must be a list, not str"),
        ("other: 1\nbutlerSchedule:\n  a: 1\n", "line 3: butlerSchedule must be a list, not a mapping"),
        ("- 1\n- 2\n", "line 1: must be a mapping with the key butlerSchedule, not a list"),
        ("Butler:\n  scheduler: {}\n", "line 1: has no butlerSchedule key; is it the schedule file?"),
        # libyaml and PyYAML's own parser word these differently; the line is what matters.
        ("butlerSchedule:\n  - name: 'open\n", "line 3: not valid YAML: "),
        ("butlerSchedule:\n  - a: 1\n   b: 2\n", "line 3: not valid YAML: "),
    ],
)
def test_a_file_that_cannot_be_used_is_an_error_naming_it(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "schedule.yaml", text)

    with pytest.raises(ScheduleFileError) as raised:
        load(path)

    assert str(raised.value).startswith(f"{path}, {message}")
    assert raised.value.path == path


@pytest.mark.parametrize("text", ["", "\n", "# nothing yet\n", "butlerSchedule:\n", "butlerSchedule: []\n"])
def test_an_empty_file_holds_no_schedules(tmp_path: Path, text: str) -> None:
    result = load(write(tmp_path / "schedule.yaml", text))

    assert (result.schedules, result.problems) == ([], [])
    assert result.fingerprint is not None


def test_a_missing_file_holds_no_schedules_and_is_not_created(tmp_path: Path) -> None:
    result = load(tmp_path / "schedule.yaml")

    assert (result.schedules, result.problems, result.fingerprint) == ([], [], None)
    assert list(tmp_path.iterdir()) == []


async def test_loading_never_writes_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "schedule.yaml", "# keep me\n" + TEMPLATE)
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = path.stat()

    result = await ScheduleFile(path).load()
    load(path)

    after = path.stat()
    assert len(result.schedules) == 3
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (
        before.st_mtime_ns,
        before.st_size,
        before.st_ino,
    )
    assert path.read_text(encoding="utf-8") == "# keep me\n" + TEMPLATE
    assert os.listdir(tmp_path) == ["schedule.yaml"]


async def test_saving_refuses_when_someone_edited_the_file_since_butler_read_it(tmp_path: Path) -> None:
    path = write(tmp_path / "schedule.yaml", TEMPLATE)
    file = ScheduleFile(path)
    loaded = await file.load()
    assert not file.changed_on_disk()
    edited = TEMPLATE.replace("Every 30 sec", "Every 31 sec")
    write(path, edited)
    assert file.changed_on_disk()

    with pytest.raises(ScheduleFileChanged) as raised:
        await file.save(loaded.schedules[:1])

    assert str(raised.value) == f"{path}: changed on disk since Butler read it; reload it first"
    assert isinstance(raised.value, ScheduleFileError)
    assert isinstance(raised.value, Conflict)
    assert path.read_text(encoding="utf-8") == edited
    assert os.listdir(tmp_path) == ["schedule.yaml"]

    reloaded = await file.load()
    assert reloaded.schedules[0].name == "Every 31 sec"
    await file.save(reloaded.schedules[:1])
    assert [s.name for s in load(path).schedules] == ["Every 31 sec"]
    assert not file.changed_on_disk()


async def test_a_touch_or_the_same_bytes_rewritten_is_not_a_change(tmp_path: Path) -> None:
    path = write(tmp_path / "schedule.yaml", TEMPLATE)
    file = ScheduleFile(path)
    loaded = await file.load()
    write(path, TEMPLATE)
    os.utime(path, ns=(5_000_000_000, 5_000_000_000))

    assert not file.changed_on_disk()
    await file.save(loaded.schedules[1:])

    assert [s.id for s in load(path).schedules] == ["task-2", "Manually-added-schedule-1"]


async def test_a_file_deleted_or_created_behind_butlers_back_is_a_change(tmp_path: Path) -> None:
    path = tmp_path / "schedule.yaml"
    file = ScheduleFile(path)
    await file.load()
    write(path, TEMPLATE)

    with pytest.raises(ScheduleFileChanged):
        await file.save([schedule(1)])
    assert path.read_text(encoding="utf-8") == TEMPLATE

    await file.load()
    path.unlink()
    with pytest.raises(ScheduleFileChanged):
        await file.save([schedule(1)])
    assert not path.exists()


async def test_a_file_butler_never_read_is_not_overwritten(tmp_path: Path) -> None:
    path = write(tmp_path / "schedule.yaml", TEMPLATE)

    with pytest.raises(ScheduleFileChanged) as raised:
        await ScheduleFile(path).save([schedule(1)])

    assert str(raised.value) == f"{path}: exists but Butler has not read it; load it first"
    assert path.read_text(encoding="utf-8") == TEMPLATE


async def test_concurrent_saves_never_interleave(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "schedule.yaml"
    file = ScheduleFile(path)
    await file.load()
    lists = [[schedule(n * 100 + i, name=f"list {n} entry {i}") for i in range(50)] for n in range(8)]
    expected = [render(document_of(entries)) for entries in lists]
    active = 0
    overlaps = 0
    seen: list[bytes] = []
    guard = threading.Lock()
    real = store.replace_atomically

    def replace(*args: Any, **kwargs: Any) -> None:
        nonlocal active, overlaps
        with guard:
            active += 1
            overlaps += active > 1
        time.sleep(0.01)
        try:
            real(*args, **kwargs)
        finally:
            with guard:
                active -= 1

    monkeypatch.setattr(store, "replace_atomically", replace)
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            if path.exists():
                seen.append(path.read_bytes())
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(file.save(entries) for entries in lists))
    stop.set()
    await watcher

    assert overlaps == 0
    assert seen
    assert all(data in expected for data in seen)
    assert path.read_bytes() == expected[-1]
    assert not file.changed_on_disk()


@pytest.mark.skipif(sys.platform == "win32", reason="file modes and symbolic links are POSIX")
async def test_saving_keeps_the_files_mode_and_writes_through_a_link(tmp_path: Path) -> None:
    target = write(tmp_path / "real.yaml", TEMPLATE)
    target.chmod(0o640)
    link = tmp_path / "schedule.yaml"
    link.symlink_to(target)
    file = ScheduleFile(link)
    loaded = await file.load()

    await file.save(loaded.schedules[:1])

    assert link.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [s.id for s in load(target).schedules] == ["task-1"]


def test_relative_paths_are_taken_from_the_config_files_folder(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"

    assert resolve("config/schedule.yaml", config_dir) == config_dir / "config" / "schedule.yaml"
    assert resolve("schedule.yaml", config_dir) == config_dir / "schedule.yaml"
    assert resolve(str(tmp_path / "abs.yaml"), config_dir) == tmp_path / "abs.yaml"


def test_errors_sit_in_butlers_error_tree() -> None:
    assert issubclass(ScheduleFileError, Unavailable)
    assert issubclass(ScheduleFileChanged, Conflict)
    with pytest.raises(InvalidSchedule) as raised:
        Schedule.from_dict({"name": "x", "cronSchedule": "* * * * *", "qlikSenseTaskId": "t", "id": "i"})
    assert raised.value.located("body") == "body must have required property 'startupState'"
    with pytest.raises(InvalidSchedule) as raised:
        Schedule.from_dict({**schedule(1).as_dict(), "tags": "Sales"})
    assert raised.value.located("body") == "body/tags must be a list of strings"


# Forks a writer that keeps replacing the file with one of two 10,000-entry documents, kills it with SIGKILL
# at a seeded random moment, and records what the file holds afterwards; 20 times.
KILLER = r"""
import json, os, random, signal, sys, time
from pathlib import Path
from butler.scheduler.store import Schedule, document_of, render, replace_atomically

path, seed, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def document(tag):
    return document_of([
        Schedule(name=f"{tag} schedule {i} åäö", cronSchedule="*/30 * * * * *", qlikSenseTaskId=f"{tag}-{i}",
                 startupState="started", id=f"{tag}-{i}", timezone="Europe/Stockholm", tags=("Sales", tag),
                 lastKnownState="started")
        for i in range(10_000)])
# The two renderings take a while; one in a forked process, so that they run side by side.
reader, writer = os.pipe()
renderer = os.fork()
if renderer == 0:
    with os.fdopen(writer, "wb") as pipe:
        pipe.write(render(document("new")))
    os._exit(0)
os.close(writer)
old = render(document("old"))
with os.fdopen(reader, "rb") as pipe:
    blobs = [old, pipe.read()]
os.waitpid(renderer, 0)
replace_atomically(path, blobs[0])
rng = random.Random(seed)
outcomes = []
for _ in range(rounds):
    pid = os.fork()
    if pid == 0:
        turn = 1
        while True:
            replace_atomically(path, blobs[turn])
            turn = 1 - turn
    time.sleep(rng.uniform(0.002, 0.08))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    data = path.read_bytes()
    outcomes.append(blobs.index(data) if data in blobs else len(data))
leftovers = sum(1 for p in path.parent.iterdir() if p.name.endswith(".tmp"))
print(json.dumps({"outcomes": outcomes, "leftovers": leftovers, "sizes": [len(b) for b in blobs]}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and fork are POSIX")
def test_a_writer_killed_at_any_moment_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "schedule.yaml"

    done = subprocess.run(
        [sys.executable, "-c", KILLER, str(path), "20261129", "20"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # 0: the old complete list, 1: the new one; anything else is the size of a broken file.
    assert set(report["outcomes"]) <= {0, 1}, report
    assert len(report["outcomes"]) == 20
    # Most kills land while a new file is being written (its temporary file stays behind): the test hit the
    # window it is about.
    assert report["leftovers"] >= 5, report
    result = load(path)
    assert result.problems == []
    assert len(result.schedules) == 10_000
    tag = "old" if report["outcomes"][-1] == 0 else "new"
    assert result.schedules[9_999].name == f"{tag} schedule 9999 åäö"
    assert result.schedules[0].tags == ("Sales", tag)
