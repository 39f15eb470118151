"""The nodes of the site and the state of each Sense service on them, as ``/qrs/servicestatus`` reports it.

The central node's Repository Service answers QRS and its Engine answers on the Engine port, so stopping
either of them there closes that listener (see server.py): a stopped service cannot report itself.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

SERVICE_TYPES = ("repository", "proxy", "scheduler", "engine", "appmigration", "printing")
RUNNING, NO_COMMUNICATION, DISABLED = 2, 3, 4


@dataclass
class Node:
    id: str
    name: str
    host_name: str
    central: bool
    disabled: frozenset[str]
    stopped: set[str] = field(default_factory=set)
    # When the repository last saw each service change state.
    changed: dict[str, str] = field(default_factory=dict)

    def state(self, service: str) -> int:
        if service in self.disabled:
            return DISABLED
        # The repository polls each service; one that stopped no longer answers the poll.
        return NO_COMMUNICATION if service in self.stopped else RUNNING

    def condensed(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "hostName": self.host_name, "privileges": None}

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "hostName": self.host_name,
            "central": self.central,
            "services": {
                service: {RUNNING: "running", NO_COMMUNICATION: "stopped", DISABLED: "disabled"}[
                    self.state(service)
                ]
                for service in SERVICE_TYPES
            },
        }

    def set_running(self, service: str, running: bool, when: str) -> None:
        """Start or stop a service; ValueError for one that is disabled on this node."""
        if service in self.disabled:
            raise ValueError(f"{service} is disabled on {self.name}")
        if running == (service in self.stopped):
            self.changed[service] = when
        (self.stopped.discard if running else self.stopped.add)(service)


def service_statuses(nodes: list[Node]) -> dict[str, dict[str, Any]]:
    """ServiceStatus entities by id, one per service per node."""
    statuses = {}
    for node in nodes:
        for number, service in enumerate(SERVICE_TYPES):
            entity_id = str(uuid.uuid5(uuid.UUID(node.id), service))
            statuses[entity_id] = {
                "id": entity_id,
                "serverNodeConfiguration": node.condensed(),
                "serviceType": number,
                "serviceState": node.state(service),
                "timestamp": node.changed[service],
                "privileges": None,
                "schemaPath": "ServiceStatus",
            }
    return statuses
