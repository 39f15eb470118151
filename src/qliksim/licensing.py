"""The server licence and the professional and analyzer access allocations, with Sense's quarantine.

Deleting an allocation that was used in the last seven days puts it in quarantine for seven days (it is
still listed, ``quarantined: true``, and still counts against the licence); one unused for longer is
removed at once. A site may say ``accessQuarantine: always`` to quarantine every deleted allocation.
The access-type overview is counted from the allocations, so the two always agree.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from qliksim.times import NEVER, instant, iso

QUARANTINE = datetime.timedelta(days=7)
QUARANTINE_RULES = ("recent", "always")

#: QRS collection -> (site file name, schemaPath, overview key)
ACCESS_TYPES = {
    "professionalaccesstype": ("professional", "License.ProfessionalAccessType", "professionalAccess"),
    "analyzeraccesstype": ("analyzer", "License.AnalyzerAccessType", "analyzerAccess"),
}
ACCESS_BY_NAME = {name: collection for collection, (name, _, _) in ACCESS_TYPES.items()}


@dataclass
class ServerLicence:
    base: dict[str, Any]  # id and the other standard fields
    serial: str
    organization: str
    valid_from: datetime.date
    valid_to: datetime.date
    expired: bool = False  # revoked or otherwise expired before its date
    subscription: bool = True

    def entity(self, today: datetime.date) -> dict[str, Any]:
        expired = self.expired or self.valid_to < today
        key_details = (
            f"Serial: {self.serial}\nProduct: Qlik Sense Enterprise\n"
            f"Valid From: {self.valid_from.isoformat()}\nValid To: {self.valid_to.isoformat()}\n"
        )
        return self.base | {
            "lef": f"{self.serial}\n{self.organization}\nPRODUCTLEVEL;50;;{self.valid_to.isoformat()}",
            "serial": self.serial,
            "check": self.serial[-4:],
            "key": "",
            "name": "Qlik",
            "organization": self.organization,
            "product": 1,
            "numberOfCores": -1,
            "keyDetails": key_details,
            "isExpired": expired,
            "expiredReason": "The license has expired" if expired else "",
            "isBlacklisted": False,
            "isInvalid": False,
            "isSubscription": self.subscription,
            "isCloudServices": False,
            "isElastic": False,
            "updated": self.base["modifiedDate"],
        }


@dataclass
class Licensing:
    licence: ServerLicence | None = None
    # Licensed seats per access type; a type not in the site is not enabled.
    totals: dict[str, int] = field(default_factory=dict)
    allocations: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {collection: {} for collection in ACCESS_TYPES}
    )
    quarantine_rule: str = "recent"

    def table(self, collection: str, now: datetime.datetime) -> dict[str, dict[str, Any]]:
        """The allocations of a type, without those whose quarantine has ended."""
        table = self.allocations[collection]
        for ended in [i for i, a in table.items() if a["quarantined"] and instant(a["quarantineEnd"]) <= now]:
            del table[ended]
        return table

    def allocate(
        self, collection: str, base: dict[str, Any], user: dict[str, Any], last_used: str
    ) -> dict[str, Any]:
        """Add an allocation (``base``: its id and standard fields), replacing the user's allocation of
        that type (Sense has one per user)."""
        table = self.allocations[collection]
        for other in [i for i, a in table.items() if a["user"]["id"] == user["id"]]:
            del table[other]
        allocation = base | {
            "user": user,
            "lastUsed": last_used,
            "excess": False,
            "quarantined": False,
            "quarantineEnd": NEVER,
            "deletedUserId": "",
            "deletedUserDirectory": "",
        }
        table[allocation["id"]] = allocation
        return allocation

    def release(self, collection: str, allocation_id: str, now: datetime.datetime) -> bool:
        """Delete an allocation as QRS does; False if there is none with that id."""
        table = self.table(collection, now)
        allocation = table.get(allocation_id)
        if allocation is None:
            return False
        if allocation["quarantined"]:
            return True  # already released; it stays in quarantine until its end
        if self.quarantine_rule == "always" or now - instant(allocation["lastUsed"]) < QUARANTINE:
            allocation |= {
                "quarantined": True,
                "quarantineEnd": iso(now + QUARANTINE),
                "modifiedDate": iso(now),
            }
        else:
            del table[allocation_id]
        return True

    def overview(self, now: datetime.datetime) -> dict[str, Any]:
        overview: dict[str, Any] = {
            "schemaPath": "AccessTypeOverview",
            "totalTokens": 0,
            "availableTokens": 0,
            "tokensEnabled": False,
            "userAccess": {
                "enabled": False,
                "tokenCost": 0,
                "allocatedTokens": 0,
                "usedTokens": 0,
                "quarantinedTokens": 0,
                "schemaPath": "AccessTypeOverviewUserAccess",
            },
            "loginAccess": {
                "enabled": False,
                "tokenCost": 0,
                "allocatedTokens": 0,
                "usedTokens": 0,
                "unavailableTokens": 0,
                "schemaPath": "AccessTypeOverviewLoginAccess",
            },
        }
        for collection, (name, _, key) in ACCESS_TYPES.items():
            entries = list(self.table(collection, now).values())
            quarantined = sum(1 for a in entries if a["quarantined"])
            allocated = len(entries) - quarantined
            total = self.totals.get(name, 0)
            overview[key] = {
                "enabled": name in self.totals,
                "total": total,
                "allocated": allocated,
                "used": sum(1 for a in entries if not a["quarantined"] and a["lastUsed"] != NEVER),
                "quarantined": quarantined,
                "excess": max(0, allocated + quarantined - total),
                "available": max(0, total - allocated - quarantined),
                "schemaPath": f"AccessTypeOverview{key[0].upper()}{key[1:]}",
            }
        overview["analyzerTimeAccess"] = {
            "enabled": False,
            "allocatedMinutes": 0,
            "usedMinutes": 0,
            "unavailableMinutes": 0,
            "schemaPath": "AccessTypeOverviewAnalyzerTimeAccess",
        }
        return overview
