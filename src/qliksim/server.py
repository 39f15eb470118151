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
from qliksim.qrs import Qrs
from qliksim.scheduler import Scheduler
from qliksim.site import Site
from qliksim.udp import SessionEvent, UdpSender

log = logging.getLogger("qliksim")


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


def server_tls(certificates: SiteCertificates) -> ssl.SSLContext:
    """TLS for QRS and the Engine: the site's server certificate, and a client certificate signed by the
    site CA required in the handshake, as Sense requires it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certificates.root))
    context.load_cert_chain(str(certificates.server), str(certificates.server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


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
            "QRS on https://%s:%s, Engine on wss://%s:%s%s",
            self.options.host,
            self.qrs_port,
            self.options.host,
            self.engine_port,
            f", control API on http://127.0.0.1:{self.control.port}" if self.control else "",
        )

    async def stop(self) -> None:
        await self.scheduler.close()
        for listener in self._all():
            await listener.runner.cleanup()
        self.udp.close()
        self.session_udp.close()

    async def set_down(self, service: str, down: bool) -> None:
        listener = self.listeners[service]
        if down:
            await listener.close()
        else:
            await listener.open()

    def _all(self) -> list[_Listener]:
        return [*self.listeners.values(), *([self.control] if self.control else [])]

    @property
    def qrs_port(self) -> int:
        return self.listeners["qrs"].port

    @property
    def engine_port(self) -> int:
        return self.listeners["engine"].port

    @property
    def control_port(self) -> int | None:
        return self.control.port if self.control else None
