"""What the monitors tell the alert channels: a Sense service that stopped or started, the server licence.

Plain values, shared by the monitors (which find them) and the alerts (which deliver them), so that neither
imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceDetails:
    """What is known of a service besides its state (from QRS, or from the Windows service manager)."""

    display_name: str
    #: ``Automatic``, ``Automatic (delayed start)``, ``Manual``, ``Disabled``, or ``""`` when unknown.
    start_type: str = ""
    exe_path: str = ""
    dependencies: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceChange:
    """A service's state at one check: upstream's alert parameters (monitors.md §1.3)."""

    host: str
    #: The Windows service name (``QlikSenseEngineService``).
    service_name: str
    #: The name the config gives it (``friendlyName``).
    friendly_name: str
    #: ``RUNNING``, ``STOPPED``, ... (upper case, as ``sc.exe`` says).
    status: str
    previous: str
    details: ServiceDetails

    @property
    def changed(self) -> bool:
        return self.status != self.previous


@dataclass(frozen=True)
class ServerLicense:
    """The server licence at one check (monitors.md §3)."""

    expired: bool
    #: As the licence's ``Valid To:`` line says it (``2025-12-31``).
    expiry_date: str
    #: Negative once past.
    days_until_expiry: int


__all__ = ["ServerLicense", "ServiceChange", "ServiceDetails"]
