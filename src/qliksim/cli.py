"""The ``qliksim`` command: ``qliksim certs DIR`` and ``qliksim serve``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from qliksim import __version__
from qliksim.certs import SiteCertificates, make_site_certificates
from qliksim.server import Options, Simulator
from qliksim.site import SiteError, load_site
from qliksim.udp import parse_target

log = logging.getLogger("qliksim")


def _target(text: str) -> tuple[str, int]:
    try:
        return parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qliksim", description="A simulated Qlik Sense Enterprise on Windows site."
    )
    parser.add_argument("--version", action="version", version=f"qliksim {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    certs = commands.add_parser("certs", help="create the site CA and the client and server certificates")
    certs.add_argument("directory", type=Path)
    certs.add_argument("--hostname", help="server certificate name (default: this machine's)")

    serve = commands.add_parser("serve", help="run the simulated site")
    serve.add_argument("--site", type=Path, help="site file (YAML); default: the built-in demo site")
    serve.add_argument("--certs", type=Path, required=True, help="certificate folder (made if empty)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--qrs-port", type=int, default=4242)
    serve.add_argument("--engine-port", type=int, default=4747)
    serve.add_argument(
        "--systeminfo-port", type=int, default=9032, help="the node's about service (/v1/systeminfo)"
    )
    serve.add_argument("--control-port", type=int, help="plain-HTTP control API on 127.0.0.1")
    serve.add_argument(
        "--udp-target",
        type=_target,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="where scheduler task events are sent (Butler's port 9998); repeatable",
    )
    serve.add_argument(
        "--session-udp-target",
        type=_target,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="where proxy session events are sent (Butler's port 9997); repeatable",
    )
    serve.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply every simulated duration by this (0.01 makes runs 100 times faster)",
    )
    serve.add_argument(
        "--success-type-typo",
        action="store_true",
        help="send success events as /scheduler-task-success// like the shipped appender file",
    )
    serve.add_argument(
        "--seed", type=int, help="seed of the injected faults' random draws, for runs that repeat exactly"
    )
    serve.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    return parser


async def _serve(simulator: Simulator) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    await simulator.start()
    try:
        await stopping.wait()
    finally:
        await simulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "certs":
        files = make_site_certificates(args.directory, args.hostname)
        print(f"wrote {files.root}, {files.client}, {files.client_key}, {files.server}, {files.server_key}")
        return 0
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    certificates = SiteCertificates(args.certs)
    if not certificates.exist():
        make_site_certificates(args.certs)
        log.info("made site certificates in %s", args.certs)
    try:
        site = load_site(args.site)
    except (OSError, SiteError) as exc:
        print(f"qliksim: cannot use the site file: {exc}", file=sys.stderr)
        return 1
    options = Options(
        host=args.host,
        qrs_port=args.qrs_port,
        engine_port=args.engine_port,
        control_port=args.control_port,
        udp_targets=args.udp_target,
        session_udp_targets=args.session_udp_target,
        time_scale=args.time_scale,
        success_type_typo=args.success_type_typo,
        seed=args.seed,
        systeminfo_port=args.systeminfo_port,
    )
    try:
        asyncio.run(_serve(Simulator(site, certificates, options)))
    except OSError as exc:
        print(f"qliksim: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
