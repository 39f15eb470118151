"""What can go wrong, in one tree: every error a service or client raises for its caller belongs to it.

Services raise these and never speak a protocol; each front end turns them into its own answer in one place:
the REST API into a status and Butler's envelope (``butler.http.errors.from_butler_error``), MQTT task starts
into the result message (``butler.mqtt_tasks.result_error``). ``str()`` of an error is the message for whoever
asked, so it says what to fix.

::

    ButlerError
    ├── BadRequest          the caller's mistake: the request cannot be carried out as sent    (400)
    │   └── LimitReached    it would go past a configured limit                                (400)
    ├── AccessDenied        the request names something Butler may not touch                    (403)
    ├── NotFound            it names something that does not exist                              (404)
    ├── Conflict            the state changed under the request                                 (409)
    ├── Unavailable         something Butler needs is off, away or full; try again later        (503)
    └── UpstreamError       an outside system (QRS, Engine, Slack) failed or could not be reached (502)
        └── UpstreamTimeout it did not answer in time                                           (504)

The client and service modules keep their own classes (``QrsError``, ``StoreUnavailable``, ...) as subclasses
of these nodes, so code that catches them by name goes on working; front ends catch the nodes.
"""

from __future__ import annotations


class ButlerError(Exception):
    """Root of the errors Butler reports to its callers; ``str()`` is the message for them."""


class BadRequest(ButlerError):
    """The request cannot be carried out as sent.

    ``at`` locates the problem in the input the service was given (``"0/payload/ttl"``: the ``ttl`` of the
    first item's payload; ``""``: the input as a whole; None: nowhere in particular), so that each front end
    can say where that input is in its own request: the REST API its body, MQTT the message's items.
    """

    def __init__(self, problem: str, *, at: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = at

    def __str__(self) -> str:
        return f"{self.at} {self.problem}" if self.at else self.problem

    def located(self, prefix: str) -> str:
        """The message, with ``prefix`` (where the caller sent the service's input) before ``at``."""
        if self.at is None:
            return self.problem
        return f"{prefix}/{self.at} {self.problem}" if self.at else f"{prefix} {self.problem}"


class LimitReached(BadRequest):
    """The request would take Butler past a configured limit; the message names the setting."""


class AccessDenied(ButlerError):
    """The request names something Butler is not allowed to touch."""


class NotFound(ButlerError):
    """The request names something that does not exist."""


class Conflict(ButlerError):
    """What the request works on changed under it."""


class Unavailable(ButlerError):
    """Something Butler needs is switched off, away or full (a store, the MQTT broker); try again later."""


class UpstreamError(ButlerError):
    """An outside system (QRS, the Engine, Slack) failed, answered nonsense or could not be reached."""


class UpstreamTimeout(UpstreamError):
    """An outside system did not answer within its deadline."""


__all__ = [
    "AccessDenied",
    "BadRequest",
    "ButlerError",
    "Conflict",
    "LimitReached",
    "NotFound",
    "Unavailable",
    "UpstreamError",
    "UpstreamTimeout",
]
