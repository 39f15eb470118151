"""Task starts and executions as Butler's logic, through an in-process Repository Service (tests/fakes.py):
the edge cases, fast. The same behaviour over QRS on the simulated site is in test_task_start.py; the shape
checks of QRS's answers run against a small QRS over a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from butler.config.settings import CertificateSettings, QrsSettings, StartTaskFilter
from butler.executions import describe
from butler.kvstore.memory import MemoryStore
from butler.qlik.qrs import QrsClient, QrsError, QrsTimeout
from butler.qlik.repository import EMPTY_GUID, ExecutionResult, QrsRepository, Refusal, execution_result
from butler.task_start import TaskRequestError, TaskStarter
from tests.conftest import StartButler, base_config, free_port
from tests.fakes import FakeRepository

A = "e3b27f50-b1c0-4879-88fc-c7cdd9c1cf3e"
B = "7552d9fc-d1bb-4975-9a38-18357de531ea"
C = "fb0f317d-da91-4b86-aafa-0174ae1e8c8f"
UNKNOWN = "8b4fe424-d90c-493f-a61d-0ce91cd485c9"
NOT_A_GUID = "fb0f317d-da91-4b86-aafa-0174ae1e8c8"


def site() -> FakeRepository:
    qrs = FakeRepository()
    qrs.add(A, "Task A", tags=("nightly",), custom_properties=(("group", "one"),))
    qrs.add(B, "Task B", tags=("nightly", "finance"))
    qrs.add(C, "Task C", custom_properties=(("group", "one"), ("group", "two")))
    return qrs


def starter(qrs: FakeRepository, store: MemoryStore | None = None, **allow: Any) -> TaskStarter:
    task_filter = StartTaskFilter(enable=bool(allow), **allow) if allow else StartTaskFilter()
    return TaskStarter(qrs, task_filter, store, poll_seconds=0.001)


def by_id(task_id: str) -> dict[str, Any]:
    return {"type": "starttaskid", "payload": {"taskId": task_id}}


def by_tag(tag: str) -> dict[str, Any]:
    return {"type": "starttasktag", "payload": {"tag": tag}}


def by_property(name: str, value: str) -> dict[str, Any]:
    return {
        "type": "starttaskcustomproperty",
        "payload": {"customPropertyName": name, "customPropertyValue": value},
    }


def started(*task_ids: str) -> list[dict[str, str]]:
    names = {A: "Task A", B: "Task B", C: "Task C"}
    return [{"taskId": t, "taskName": names[t]} for t in task_ids]


# -- ids, the filter, duplicates ---------------------------------------------------------------------------


async def test_ids_in_request_order_sorted_into_started_and_invalid() -> None:
    qrs = site()
    outcome = await starter(qrs).start(B, [by_id(NOT_A_GUID), by_id(UNKNOWN), by_id(A)])
    assert outcome.as_dict() == {
        "tasksId": {
            "started": started(B, A),
            "invalid": [{"taskId": NOT_A_GUID}, {"taskId": UNKNOWN}],
            "denied": [],
        },
        "tasksTag": [],
        "tasksTagDenied": [],
        "tasksCP": [],
        "tasksCPDenied": [],
    }
    # One lookup for every well-formed id, one start for what it confirmed.
    assert qrs.called("tasks_by_ids") == [[B, UNKNOWN, A]]
    assert qrs.called("start_many") == [[B, A]]
    assert qrs.called("start") == []


async def test_dash_in_the_url_names_no_task() -> None:
    qrs = site()
    outcome = await starter(qrs).start("-", [by_id(C)])
    assert outcome.started == started(C)
    assert qrs.called("tasks_by_ids") == [[C]]


async def test_filter_denies_what_is_not_allowed_and_looks_none_of_it_up() -> None:
    qrs = site()
    service = starter(
        qrs,
        task_ids=frozenset({A}),
        tags=frozenset({"finance"}),
        custom_properties=frozenset({("group", "two")}),
    )
    outcome = await service.start(
        "-",
        [
            by_id(A),
            by_id(B),
            by_id(NOT_A_GUID),
            by_tag("nightly"),
            by_tag("finance"),
            by_property("group", "one"),
            by_property("group", "two"),
        ],
    )
    answer = outcome.as_dict()
    assert answer["tasksId"] == {
        "started": started(A),
        "invalid": [{"taskId": NOT_A_GUID}],
        "denied": [{"taskId": B}],
    }
    assert answer["tasksTag"] == started(B)
    assert answer["tasksTagDenied"] == [{"tag": "nightly"}]
    assert answer["tasksCP"] == started(C)
    assert answer["tasksCPDenied"] == [{"name": "group", "value": "one"}]
    assert qrs.called("tasks_by_ids") == [[A]]
    assert qrs.called("tasks_by_tag") == ["finance"]
    assert qrs.called("tasks_by_custom_property") == [("group", "two")]
    assert qrs.called("start_many") == [[A, B, C]]


async def test_different_tags_and_properties_are_each_looked_up() -> None:
    qrs = site()
    outcome = await starter(qrs).start(
        "-", [by_tag("finance"), by_tag("nightly"), by_property("group", "two"), by_property("group", "one")]
    )
    assert outcome.tags == started(B, A, B)
    assert outcome.custom_properties == started(C, A, C)


async def test_filter_off_allows_every_tag_and_property() -> None:
    qrs = site()
    outcome = await starter(qrs).start("-", [by_tag("finance"), by_property("group", "two")])
    assert outcome.tags == started(B)
    assert outcome.custom_properties == started(C)
    assert outcome.tags_denied == outcome.custom_properties_denied == []


async def test_a_task_asked_for_several_times_is_listed_each_time_and_started_once() -> None:
    qrs = site()
    outcome = await starter(qrs).start(
        A, [by_id(A), by_tag("nightly"), by_tag("nightly"), by_property("group", "one")]
    )
    assert outcome.started == started(A, A)
    assert outcome.tags == started(A, B, A, B)
    assert outcome.custom_properties == started(A, C)
    # The same tag twice is one lookup; every task is started once.
    assert qrs.called("tasks_by_ids") == [[A]]
    assert qrs.called("tasks_by_tag") == ["nightly"]
    assert qrs.called("start_many") == [[A, B, C]]


async def test_one_task_is_started_on_its_own() -> None:
    qrs = site()
    outcome = await starter(qrs).start(A, [by_id(A)])
    assert outcome.started == started(A, A)
    assert qrs.called("start") == [A]
    assert qrs.called("start_many") == []


async def test_nothing_confirmed_starts_nothing() -> None:
    qrs = site()
    outcome = await starter(qrs).start(UNKNOWN, [by_tag("none"), by_property("group", "none")])
    assert outcome.invalid == [{"taskId": UNKNOWN}]
    assert outcome.tags == outcome.custom_properties == []
    assert qrs.called("start") == qrs.called("start_many") == []


async def test_all_ids_must_exist_denies_the_found_ones_when_one_is_invalid() -> None:
    qrs = site()
    outcome = await starter(qrs).start(
        A, [by_id(UNKNOWN), by_id(B), by_tag("finance")], all_ids_must_exist=True
    )
    assert outcome.started == []
    assert outcome.invalid == [{"taskId": UNKNOWN}]
    assert outcome.denied == [{"taskId": A}, {"taskId": B}]
    # Tags are not ids: their tasks still start.
    assert outcome.tags == started(B)
    assert qrs.called("start") == [B]


async def test_all_ids_must_exist_starts_when_every_id_exists() -> None:
    qrs = site()
    outcome = await starter(qrs).start(A, [by_id(B)], all_ids_must_exist=True)
    assert outcome.started == started(A, B)
    assert outcome.denied == []
    assert qrs.called("start_many") == [[A, B]]


async def test_ids_are_looked_up_once_however_many() -> None:
    qrs = site()
    many = [f"{n:08x}-0000-4000-8000-000000000000" for n in range(100)]
    outcome = await starter(qrs).start("-", [by_id(t) for t in many])
    assert len(outcome.invalid) == 100
    assert qrs.called("tasks_by_ids") == [many]


# -- starts QRS refuses ---------------------------------------------------------------------------------


async def test_start_many_refused_starts_each_task_on_its_own() -> None:
    qrs = site()
    qrs.start_many_answer = False
    qrs.tasks[B].start = Refusal(409, "Task is locked")
    outcome = await starter(qrs).start(A, [by_id(B), by_tag("finance")])
    assert sorted(qrs.called("start")) == sorted([A, B])
    assert outcome.started == started(A)
    assert outcome.tags == []
    failed = [{"taskId": B, "taskName": "Task B", "status": 409, "message": "Task is locked"}]
    assert outcome.start_failed == failed
    assert outcome.as_dict()["tasksStartFailed"] == failed


async def test_start_many_failing_fails_every_task_and_starts_none_again() -> None:
    qrs = site()
    qrs.start_many_answer = QrsError("QRS answered 500", 500)
    outcome = await starter(qrs).start(A, [by_id(B)])
    assert qrs.called("start") == []
    assert outcome.started == []
    assert outcome.start_failed == [
        {"taskId": A, "taskName": "Task A", "status": 500, "message": "QRS answered 500"},
        {"taskId": B, "taskName": "Task B", "status": 500, "message": "QRS answered 500"},
    ]


async def test_start_many_timing_out_fails_the_request() -> None:
    qrs = site()
    qrs.start_many_answer = QrsTimeout("too slow")
    with pytest.raises(QrsTimeout):
        await starter(qrs).start(A, [by_id(B)])


async def test_a_start_that_cannot_reach_qrs_is_a_failed_start() -> None:
    qrs = site()
    qrs.tasks[A].start = QrsError("cannot connect")
    outcome = await starter(qrs).start(A, [])
    assert outcome.started == []
    assert outcome.start_failed == [
        {"taskId": A, "taskName": "Task A", "status": None, "message": "cannot connect"}
    ]


async def test_a_start_timing_out_fails_the_request_after_every_start_ended() -> None:
    qrs = site()
    qrs.start_many_answer = False
    qrs.tasks[B].start = QrsTimeout("too slow")
    qrs.tasks[C].delay = 0.05
    with pytest.raises(QrsTimeout):
        await starter(qrs).start(A, [by_id(B), by_id(C)])
    assert sorted(qrs.called("start")) == sorted([A, B, C])
    assert qrs.calls[-1] == ("waited", 0.05)  # the slow start of C ended before the error came out


async def test_counts_of_what_became_of_each_task_and_of_failed_requests() -> None:
    qrs = site()
    qrs.start_many_answer = False
    qrs.tasks[C].start = Refusal(409, "Task is locked")
    service = starter(qrs, task_ids=frozenset({A, C, UNKNOWN}), tags=frozenset({"finance"}))
    # A started; C refused by QRS; B denied, one tag denied; two ids invalid; the finance tag's B started.
    await service.start(A, [by_id(C), by_id(B), by_id(NOT_A_GUID), by_id(UNKNOWN)])
    await service.start("-", [by_tag("finance"), by_tag("nightly")])
    assert service.counts == {"started": 2, "failed": 1, "denied": 2, "invalid": 2, "error": 0}
    qrs.start_many_answer = QrsTimeout("too slow")
    with pytest.raises(QrsTimeout):
        await service.start(A, [by_id(C)])
    with pytest.raises(TaskRequestError):
        await service.start("-", [{"type": "starttaskid", "payload": 1}])
    assert service.counts == {"started": 2, "failed": 1, "denied": 2, "invalid": 2, "error": 2}


async def test_a_lookup_failing_fails_the_request_and_starts_nothing() -> None:
    qrs = site()

    async def broken(tag: str) -> Any:
        raise QrsError("QRS answered 500", 500)

    qrs.tasks_by_tag = broken  # type: ignore[method-assign]
    qrs.tasks[A].delay = 5
    with pytest.raises(QrsError):
        await starter(qrs).start(A, [by_tag("nightly")])
    # The lookup by id still on its way was stopped, not left running.
    assert qrs.called("cancelled") == [5]
    assert qrs.called("start") == qrs.called("start_many") == []


# -- synchronous starts and waiting -------------------------------------------------------------------


async def test_waiting_reports_each_run_with_its_result_and_script_log_tail() -> None:
    qrs = site()
    lines = [f"line {n}" for n in range(30)]
    qrs.tasks[A].polls = 3
    qrs.tasks[A].result = ExecutionResult(
        id="r1",
        status=8,
        start_time="t0",
        stop_time="t1",
        duration=5,
        details=("failed",),
        file_reference_id="f1",
    )
    qrs.tasks[B].result = ExecutionResult(id="r2", status=7)
    qrs.script_logs["f1"] = lines
    # Polled every millisecond, the runs end well within the wait.
    outcome = await starter(qrs).start(A, [by_tag("finance")], wait_seconds=1)
    assert qrs.called("start_many") == []
    assert sorted(qrs.called("start_synchronous")) == sorted([A, B])
    assert outcome.executions is not None
    first, second = outcome.executions
    assert first == {
        "taskId": A,
        "taskName": "Task A",
        "status": "FinishedFail",
        "statusCode": 8,
        "executionId": first["executionId"],
        "startTime": "t0",
        "stopTime": "t1",
        "duration": 5,
        "executionResultId": "r1",
        "executingNodeName": None,
        "details": ["failed"],
        "scriptLogTail": lines[-20:],
        "finished": True,
    }
    assert second["taskId"] == B and second["status"] == "FinishedSuccess" and second["finished"]
    assert outcome.as_dict()["executions"] == [first, second]
    assert "scriptLogTail" not in second
    assert qrs.called("script_log") == [(A, "f1")]
    assert len(qrs.called("execution_session")) == 4 + 2


async def test_waiting_ends_at_its_time_with_what_is_known() -> None:
    qrs = site()
    qrs.tasks[A].polls = None
    outcome = await starter(qrs).start(A, [], wait_seconds=0.05)
    assert outcome.executions is not None
    (report,) = outcome.executions
    assert report["status"] == "Started" and report["statusCode"] == 2
    assert report["finished"] is False
    assert qrs.called("execution_results") == []


async def test_waiting_no_time_answers_at_once() -> None:
    qrs = site()
    qrs.tasks[A].polls = None
    outcome = await starter(qrs).start(A, [], wait_seconds=0)
    assert outcome.executions is not None
    assert [e["finished"] for e in outcome.executions] == [False]
    assert len(qrs.called("execution_session")) < 10  # polled every millisecond, it would run on


async def test_a_synchronous_start_qrs_refused_is_a_failed_start_with_no_execution() -> None:
    qrs = site()
    qrs.tasks[B].start = Refusal(201, "QRS did not start the task")
    outcome = await starter(qrs).start(A, [by_id(B)], wait_seconds=1)
    assert outcome.started == started(A)
    assert outcome.start_failed == [
        {"taskId": B, "taskName": "Task B", "status": 201, "message": "QRS did not start the task"}
    ]
    assert outcome.executions is not None
    assert [e["taskId"] for e in outcome.executions] == [A]


async def test_not_waiting_gives_no_executions_key() -> None:
    outcome = await starter(site()).start(A, [])
    assert "executions" not in outcome.as_dict()


# -- key-value items and bad items ---------------------------------------------------------------------


async def test_key_value_items_are_stored_before_the_start() -> None:
    qrs, store = site(), MemoryStore()
    pairs = [
        {"type": "keyvaluestore", "payload": {"namespace": "ns", "key": "k", "value": 12.0, "ttl": "60000"}},
        {"type": "keyvaluestore", "payload": {"namespace": 7, "key": "skip", "value": ""}},
    ]
    await starter(qrs, store).start(A, pairs)
    assert await store.get("ns", "k") == "12"
    assert await store.namespaces() == ["ns"]


class RecordingStore(MemoryStore):
    """The in-memory store, remembering what it was asked to set."""

    def __init__(self) -> None:
        super().__init__()
        self.sets: list[tuple[str, str, str | None, int]] = []

    async def set(self, namespace: str, key: str, value: str | None, ttl_ms: int = 0) -> None:
        self.sets.append((namespace, key, value, ttl_ms))
        await super().set(namespace, key, value, ttl_ms)


def pair(value: Any, ttl: Any = None, namespace: Any = "ns", key: Any = "k") -> dict[str, Any]:
    payload = {"namespace": namespace, "key": key, "value": value}
    if ttl is not None:
        payload["ttl"] = ttl
    return {"type": "keyvaluestore", "payload": payload}


@pytest.mark.parametrize(
    ("item", "stored"),
    [
        (pair("text"), ("ns", "k", "text", 0)),
        (pair(12.0, ttl="60000"), ("ns", "k", "12", 60000)),
        (pair(1, ttl=""), ("ns", "k", "1", 0)),
        (pair(True, ttl=2.0), ("ns", "k", "true", 2)),
        (pair([1, {"a": None}]), ("ns", "k", '[1,{"a":null}]', 0)),
        (pair("v", namespace=7, key=8.0), ("7", "8", "v", 0)),
    ],
)
async def test_a_key_value_item_is_stored_as_text(item: dict[str, Any], stored: tuple[Any, ...]) -> None:
    store = RecordingStore()
    await starter(site(), store).start(A, [item])
    assert store.sets == [stored]


@pytest.mark.parametrize("value", ["", 0, False, 0.0])
async def test_a_key_value_item_with_an_empty_value_is_skipped(value: Any) -> None:
    store = RecordingStore()
    await starter(site(), store).start(A, [pair(value)])
    assert store.sets == []


async def test_key_value_items_without_a_store_are_ignored() -> None:
    outcome = await starter(site()).start(A, [pair("v")])
    assert outcome.started == started(A)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ({"type": "starttaskid"}, " must be array"),
        ([by_id(A)] * 1001, " must NOT have more than 1000 items"),
        ([by_id(A), "item"], "1 must be object"),
        ([by_id(A), {"type": "starttask"}], "1/type must be equal to one of the allowed values"),
        ([by_id(A), {"type": "starttaskid", "payload": []}], "1/payload must be object"),
        (
            [by_id(A), {"type": "starttaskid", "payload": {"taskId": ""}}],
            "1/payload/taskId must be a non-empty string",
        ),
        (
            [by_id(A), {"type": "starttasktag", "payload": {"tag": 1}}],
            "1/payload/tag must be a non-empty string",
        ),
        (
            [by_id(A), {"type": "starttaskcustomproperty", "payload": {"customPropertyValue": "v"}}],
            "1/payload/customPropertyName must be a non-empty string",
        ),
        (
            [by_id(A), {"type": "starttaskcustomproperty", "payload": {"customPropertyName": "n"}}],
            "1/payload/customPropertyValue must be a non-empty string",
        ),
        (
            [by_id(A), {"type": "keyvaluestore", "payload": {"key": "k", "value": 1}}],
            "1/payload must have required property 'namespace'",
        ),
        (
            [by_id(A), {"type": "keyvaluestore", "payload": {"namespace": "n", "value": 1}}],
            "1/payload must have required property 'key'",
        ),
        (
            [by_id(A), {"type": "keyvaluestore", "payload": {"namespace": "n", "key": "k"}}],
            "1/payload must have required property 'value'",
        ),
        ([by_id(A), pair(1, namespace=True)], "1/payload/namespace must be a non-empty string"),
        ([by_id(A), pair(1, namespace="")], "1/payload/namespace must be a non-empty string"),
        ([by_id(A), pair(1, key=[])], "1/payload/key must be a non-empty string"),
        ([by_id(A), pair(1, ttl=True)], "1/payload/ttl must be a number of milliseconds"),
        ([by_id(A), pair(1, ttl="soon")], "1/payload/ttl must be a number of milliseconds"),
        ([by_id(A), pair(1, ttl=[5])], "1/payload/ttl must be a number of milliseconds"),
    ],
)
async def test_a_bad_request_is_refused_before_anything_happens(items: Any, message: str) -> None:
    qrs, store = site(), RecordingStore()
    with pytest.raises(TaskRequestError) as caught:
        await starter(qrs, store).start(A, items)
    # Each front end puts where it got the items before the location.
    assert caught.value.located("body") == "body" + ("" if message[0] == " " else "/") + message
    assert qrs.calls == [] and store.sets == []


async def test_a_key_value_item_the_store_refuses_is_located() -> None:
    with pytest.raises(TaskRequestError) as caught:
        await starter(site(), RecordingStore()).start(A, [by_id(B), pair(1, ttl=-5)])
    assert str(caught.value) == (
        "1/payload/ttl must be 0 (never expires) or from 1 to 315360000000 milliseconds (10 years), got -5.0"
    )


async def test_a_thousand_items_are_allowed() -> None:
    outcome = await starter(site()).start(A, [{}] * 1000)
    assert outcome.started == started(A)


async def test_items_without_a_type_are_ignored() -> None:
    qrs = site()
    outcome = await starter(qrs).start(A, [{"payload": "anything"}, by_id(B)])
    assert outcome.started == started(A, B)


# -- a task's last result ------------------------------------------------------------------------------


async def test_last_result_of_an_unknown_task_is_none() -> None:
    assert await starter(site()).watcher.last_result(UNKNOWN) is None


async def test_last_result_names_the_status_and_gives_the_script_log_tail() -> None:
    qrs = site()
    qrs.tasks[C].last_result = ExecutionResult(id="r", status=99, details=("a", None), file_reference_id="f")
    qrs.script_logs["f"] = ["only line"]
    answer = await starter(qrs).watcher.last_result(C)
    assert answer == {
        "taskId": C,
        "taskName": "Task C",
        "status": "99",
        "statusCode": 99,
        "startTime": None,
        "stopTime": None,
        "duration": None,
        "executionResultId": "r",
        "executingNodeName": None,
        "details": ["a", None],
        "scriptLogTail": ["only line"],
    }


async def test_last_result_without_a_script_log_has_no_tail() -> None:
    qrs = site()
    qrs.tasks[C].last_result = ExecutionResult(status=0, file_reference_id="gone")
    answer = await starter(qrs).watcher.last_result(C)
    assert answer is not None and answer["status"] == "NeverStarted" and "scriptLogTail" not in answer
    assert qrs.called("script_log") == [(C, "gone")]


def test_describe_names_every_known_status() -> None:
    assert describe(ExecutionResult(status=14))["status"] == "DistributionRunning"
    assert describe(ExecutionResult(status=15))["status"] == "15"
    assert describe(ExecutionResult(status=-1))["status"] == "-1"


# -- the shape of QRS's answers ------------------------------------------------------------------------


def test_an_execution_result_is_read_with_its_details_oldest_first() -> None:
    result = execution_result(
        {
            "id": "r",
            "status": "8",
            "details": [
                {"message": "second", "detailCreatedDate": "2026-01-02"},
                {"message": "first", "detailCreatedDate": "2026-01-01"},
            ],
            "fileReferenceID": EMPTY_GUID,
        }
    )
    assert result == ExecutionResult(id="r", status=8, details=("first", "second"), file_reference_id=None)


@pytest.mark.parametrize("entry", [[], {"status": "x"}, {"details": {"message": "m"}}, {"details": ["text"]}])
def test_an_execution_result_of_the_wrong_shape_is_a_qrs_error(entry: Any) -> None:
    with pytest.raises(QrsError, match="instead of"):
        execution_result(entry)


@dataclass
class SmallQrs:
    """A QRS over plain HTTP that answers a call of ``path`` with ``answers[path]``: (status, JSON)."""

    port: int
    repository: QrsRepository
    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)


@pytest.fixture
async def small_qrs() -> AsyncIterator[SmallQrs]:
    answers: dict[str, tuple[int, Any]] = {}

    async def handle(request: web.Request) -> web.Response:
        status, body = answers[request.match_info["path"]]
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/qrs/{path:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = QrsClient(
        QrsSettings(host="127.0.0.1", port=port, use_ssl=False, timeout_seconds=5, retries=0),
        CertificateSettings(),
    )
    yield SmallQrs(port, QrsRepository(client), answers)
    await client.close()
    await runner.cleanup()


@pytest.mark.parametrize("body", [{}, [{"id": "x"}], [{"id": 1, "name": "n"}], ["task"], "text", None])
async def test_a_task_list_of_the_wrong_shape_is_a_qrs_error(small_qrs: SmallQrs, body: Any) -> None:
    answers, repository = small_qrs.answers, small_qrs.repository
    answers["task"] = (200, body)
    with pytest.raises(QrsError, match="instead of") as caught:
        await repository.tasks_by_ids([A])
    assert caught.value.status == 200


async def test_qrs_answers_are_read_into_records(small_qrs: SmallQrs) -> None:
    answers, repository = small_qrs.answers, small_qrs.repository
    answers["task/full"] = (
        200,
        [{"id": A, "name": "Task A", "operational": {"lastExecutionResult": {"status": 7, "id": "r"}}}],
    )
    answers[f"task/{A}/start"] = (204, None)
    answers[f"task/{B}/start"] = (409, "locked")
    answers[f"task/{A}/start/synchronous"] = (201, {"value": "s1"})
    answers[f"task/{B}/start/synchronous"] = (201, {"value": EMPTY_GUID})
    answers[f"task/{C}/start/synchronous"] = (201, ["s1"])
    answers["task/start/many"] = (400, "no")
    answers["executionsession/s1"] = (200, {"executionResult": {"status": 2}})
    answers["executionsession/s2"] = (404, None)
    answers["executionsession/s3"] = (500, None)
    found = await repository.task_with_last_result(A)
    assert found is not None and found.task.name == "Task A" and found.last_result.status == 7
    assert await repository.start(A) is None
    assert await repository.start(B) == Refusal(409, '"locked"')
    assert await repository.start_synchronous(A) == "s1"
    refusal = await repository.start_synchronous(B)
    assert isinstance(refusal, Refusal) and refusal.status == 201
    with pytest.raises(QrsError, match="instead of an object"):
        await repository.start_synchronous(C)
    assert await repository.start_many([A, B]) is False
    state = await repository.execution_session("s1")
    assert not state.ended and state.result is not None and state.result.status == 2
    assert (await repository.execution_session("s2")).ended
    assert (await repository.execution_session("s3")).result is None
    answers["task/full"] = (200, [])
    assert await repository.task_with_last_result(A) is None


@pytest.mark.parametrize("body", [{}, [{"name": "no id"}]])
async def test_butler_answers_502_when_qrs_answers_in_the_wrong_shape(
    start_butler: StartButler, small_qrs: SmallQrs, body: Any
) -> None:
    document = base_config(senseStartTask=True)
    document["Butler"]["configQRS"] = {"host": "127.0.0.1", "port": small_qrs.port, "useSSL": False}
    base = await start_butler(document)
    small_qrs.answers["task/full"] = (200, body)
    async with aiohttp.ClientSession() as http, http.get(f"{base}/v4/reloadtask/{A}/status") as response:
        assert response.status == 502
        assert "Qlik Sense QRS answered GET task/full with" in (await response.json())["message"]
