"""Running a simulated site: QRS, Engine and control listeners, the scheduler and the UDP senders."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field

from aiohttp import web

from qliksim.access import RequestLog
from qliksim.certs import SiteCertificates
from qliksim.control import control_application
from qliksim.engine import Engine
from qliksim.faults import Faults
from qliksim.nodes import SERVICE_TYPES
from qliksim.qrs import Qrs
from qliksim.scheduler import Scheduler
from qliksim.site import Site
from qliksim.times import now_iso
from qliksim.udp import SessionEvent, UdpSender

log = logging.getLogger("qliksim")
# The listeners a Sense service on the central node answers.
_SERVED_BY = {"qrs": "repository", "engine": "engine"}


@dataclass
class Options:
    host: str = "127.0.0.1"
    qrs_port: int = 4242
    engine_port: int = 4747
    control_port: int | None = None
    udp_targets: list[tuple[str, int]] = field(default_factory=list)
    session_udp_targets: list[tuple[str, int]] = field(default_factory=list)
    time_scale: float = 1.0
    success_type_typo: bool = False
    seed: int | None = None  # of the fault injection's random draws
    systeminfo_port: int | None = None  # None: no systeminfo listener


def server_tls(certificates: SiteCertificates) -> ssl.SSLContext:
    """TLS for QRS and the Engine: the site's server certificate, and a client certificate signed by the
    site CA required in the handshake, as Sense requires it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certificates.root))
    context.load_cert_chain(str(certificates.server), str(certificates.server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def systeminfo_application(site: Site) -> web.Application:
    """The node's about service on port 9032: the client certificate is its only check (no xrfkey, no
    X-Qlik-User)."""

    async def systeminfo(request: web.Request) -> web.Response:
        return web.json_response(site.system_info)

    app = web.Application()
    app.router.add_get("/v1/systeminfo", systeminfo)
    return app


class _Listener:
    def __init__(self, app: web.Application, host: str, port: int, context: ssl.SSLContext | None) -> None:
        # A handler still running at shutdown (an injected latency, say) gets a second, not aiohttp's minute:
        # a simulator asked to stop stops.
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        self.host = host
        self.port = port
        self.context = context
        self.site: web.TCPSite | None = None

    async def setup(self) -> None:
        await self.runner.setup()

    async def open(self) -> None:
        if self.site is None:
            self.site = web.TCPSite(
                self.runner, self.host, self.port, ssl_context=self.context, reuse_address=True
            )
            await self.site.start()
            self.port = self.runner.addresses[-1][1]

    async def close(self) -> None:
        if self.site is not None:
            await self.site.stop()
            self.site = None


class Simulator:
    def __init__(self, site: Site, certificates: SiteCertificates, options: Options) -> None:
        self.site = site
        self.options = options
        self.certificates = certificates
        self.faults = Faults(options.seed)
        self.udp = UdpSender(options.udp_targets)
        self.session_udp = UdpSender(options.session_udp_targets)
        self.scheduler = Scheduler(site, self.udp, options.time_scale, options.success_type_typo)
        self.requests = RequestLog()
        self.engine = Engine(site, self.scheduler, self.faults, self.requests)
        self.qrs = Qrs(site, self.scheduler, self.faults, self.requests, self.engine.close_app)
        self.sessions: dict[str, SessionEvent] = {}
        context = server_tls(certificates)
        self.listeners = {
            "qrs": _Listener(self.qrs.application(), options.host, options.qrs_port, context),
            "engine": _Listener(self.engine.application(), options.host, options.engine_port, context),
        }
        if options.systeminfo_port is not None:
            self.listeners["systeminfo"] = _Listener(
                systeminfo_application(site), options.host, options.systeminfo_port, context
            )
        self.control: _Listener | None = None
        if options.control_port is not None:
            self.control = _Listener(control_application(self), "127.0.0.1", options.control_port, None)

    async def start(self) -> None:
        await self.udp.start()
        await self.session_udp.start()
        for listener in self._all():
            await listener.setup()
            await listener.open()
        log.info(
            "QRS on https://%s:%s, Engine on wss://%s:%s%s%s",
            self.options.host,
            self.qrs_port,
            self.options.host,
            self.engine_port,
            f", systeminfo on https://{self.options.host}:{self.systeminfo_port}"
            if self.systeminfo_port
            else "",
            f", control API on http://127.0.0.1:{self.control.port}" if self.control else "",
        )

    async def stop(self) -> None:
        await self.scheduler.close()
        for listener in self._all():
            await listener.runner.cleanup()
        self.udp.close()
        self.session_udp.close()

    async def refresh(self, service: str) -> None:
        """Open or close a listener: QRS and the Engine answer unless a fault takes them down or their
        service is stopped on the central node (the one they stand for)."""
        central = next(node for node in self.site.nodes if node.central)
        stopped = _SERVED_BY[service] in central.stopped
        listener = self.listeners[service]
        if self.faults.settings[service].down or stopped:
            await listener.close()
        else:
            await listener.open()

    async def set_running(self, node_name: str, service: str, running: bool) -> None:
        """Start or stop a Sense service on a node. KeyError for an unknown node, ValueError for a
        service that is disabled there or unknown."""
        if service not in SERVICE_TYPES:
            raise ValueError(f"services are {', '.join(SERVICE_TYPES)}")
        self.site.node(node_name).set_running(service, running, now_iso())
        for listener in _SERVED_BY:
            await self.refresh(listener)

    def _all(self) -> list[_Listener]:
        return [*self.listeners.values(), *([self.control] if self.control else [])]

    @property
    def qrs_port(self) -> int:
        return self.listeners["qrs"].port

    @property
    def engine_port(self) -> int:
        return self.listeners["engine"].port

    @property
    def systeminfo_port(self) -> int | None:
        listener = self.listeners.get("systeminfo")
        return listener.port if listener else None

    @property
    def control_port(self) -> int | None:
        return self.control.port if self.control else None
