"""Butler's error tree and where it is mapped: to statuses for REST, to result messages for MQTT."""

from __future__ import annotations

import pytest

from butler.errors import BadRequest, ButlerError, NotFound, UpstreamError
from butler.files import FileAccessDenied, FileConflict, FileRequestError
from butler.http.errors import from_butler_error, status_of
from butler.kvstore import InvalidPair, NamespaceFull, NamespaceNotFound, StoreUnavailable
from butler.mqtt import InvalidMessage, MqttUnavailable
from butler.mqtt_tasks import result_error
from butler.qlik.engine import AppClosed, AppNotFound, EngineError, EngineTimeout, EngineUnavailable
from butler.qlik.qrs import QrsError, QrsTimeout
from butler.slack import SlackError
from butler.task_start import TaskRequestError

#: Every error a service or client reports to callers, and the status REST callers have always had for it.
STATUSES = [
    (QrsTimeout("QRS did not answer"), 504),
    (QrsError("QRS answered 500", 500), 502),
    (EngineTimeout("no answer"), 504),
    (EngineUnavailable("refused"), 502),
    (EngineError(5, "boom"), 502),
    (AppNotFound(1003, "App not found", "a1"), 404),
    (AppClosed(1003, "closed", "a1"), 404),
    (SlackError("Slack answered 404", 404), 502),
    (MqttUnavailable("the broker is away"), 503),
    (InvalidMessage("the MQTT topic must not be empty"), 400),
    (StoreUnavailable("database is locked"), 503),
    (NamespaceFull("n", 3), 400),
    (NamespaceNotFound("n"), 400),
    (InvalidPair("ttl", "must be 0"), 400),
    (TaskRequestError("must be object", at="0/payload"), 400),
    (FileRequestError("a NUL byte"), 400),
    (FileAccessDenied("not approved"), 403),
    (FileConflict("vanished"), 409),
]


@pytest.mark.parametrize(("error", "status"), STATUSES, ids=lambda v: type(v).__name__ if v else "")
def test_each_service_error_is_in_the_tree_and_answers_its_status(error: ButlerError, status: int) -> None:
    assert isinstance(error, ButlerError)
    answer = from_butler_error(error)
    assert answer is not None
    assert (answer.status, answer.envelope()["error"]) == (status, answer.error)
    assert answer.message == (error.located("body") if isinstance(error, BadRequest) else str(error))


def test_a_class_that_is_both_a_thing_not_found_and_an_outside_failure_answers_404() -> None:
    class Gone(UpstreamError, NotFound):
        pass

    assert status_of(Gone) == 404


def test_an_error_outside_every_node_is_a_fault_of_butlers() -> None:
    class Odd(ButlerError):
        pass

    assert from_butler_error(Odd("inside")) is None
    assert result_error(Odd("inside")) == "inside"
    assert result_error(TypeError("unexpected")) is None


@pytest.mark.parametrize(
    ("error", "rest", "mqtt"),
    [
        (TaskRequestError("must be object", at="0/payload"), "body/0/payload must be object", "items/0/"),
        (TaskRequestError("must be array", at=""), "body must be array", "items must be array"),
        (BadRequest("not a task id nor JSON"), "not a task id nor JSON", "not a task id nor JSON"),
        (InvalidPair("key", "must be short"), "body/key must be short", "items/key must be short"),
    ],
)
def test_each_front_end_says_where_a_bad_input_is_in_its_own_request(
    error: BadRequest, rest: str, mqtt: str
) -> None:
    answer = from_butler_error(error)
    assert answer is not None and answer.message == rest
    assert (result_error(error) or "").startswith(mqtt)
    # The service's own text names no front end.
    assert "body" not in str(error) and "items" not in str(error)
