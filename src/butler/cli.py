"""The ``butler`` command.

``butler serve -c FILE.yaml`` runs the service (``butler -c FILE.yaml`` too, as upstream is started);
``butler config check FILE.yaml`` validates a config file, ``butler config check --explain KEY`` says what a
key means; ``butler alert test -c FILE.yaml --channel CHANNEL`` sends a sample alert through one channel;
``butler schedules check FILE.yaml`` validates a schedule file and shows each entry's next fires;
``butler token create|list|revoke -c FILE.yaml`` makes, lists and revokes API tokens;
``butler appenders --butler-host HOST`` writes the log-appender files of the Sense nodes;
``butler load-script`` writes the load-script subs that call Butler (``butler_subs.qvs``);
``butler --version``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from butler import __version__
from butler.alerts.model import CHANNELS
from butler.app import DEFAULT_RATE_LIMIT, Butler, StartupError, run
from butler.appenders import SESSION_PORT, TASK_PORT, write_files
from butler.auth.cli import add_commands as add_token_commands
from butler.auth.cli import token_command
from butler.config import ConfigError, Settings, UnknownKey, explain_key, load_config
from butler.demo import run_demo
from butler.errors import BadRequest
from butler.load_script import SUBS_FILE, subs_text
from butler.logs import LEVELS, LOG_FORMATS, LogFiles, close_logging, setup_logging

log = logging.getLogger("butler")


def _rate_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of requests per minute, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (off) or more")
    return value


def _add_rate_limit(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--api-rate-limit",
        type=_rate_limit,
        default=DEFAULT_RATE_LIMIT,
        metavar="N",
        help=f"REST requests per minute per client IP, 0 = no limit (default {DEFAULT_RATE_LIMIT})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="butler",
        description="Butler for Python: a companion service for Qlik Sense Enterprise on Windows.",
        epilog="butler -c FILE.yaml [options] runs the service as 'butler serve -c FILE.yaml' does, the way "
        "upstream Butler is started.",
    )
    parser.add_argument("--version", action="version", version=f"butler {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the Butler service")
    serve.add_argument("-c", "--configfile", required=True, metavar="FILE.yaml", help="Butler config file")
    serve.add_argument("-l", "--loglevel", choices=list(LEVELS), help="log level (overrides Butler.logLevel)")
    serve.add_argument("--log-format", choices=LOG_FORMATS, help="text or json (overrides Butler.logFormat)")
    _add_rate_limit(serve)

    demo = commands.add_parser("demo", help="run a simulated Qlik Sense site and Butler connected to it")
    demo.add_argument("--port", type=int, default=8080, help="Butler's REST port (default 8080)")
    demo.add_argument("--host", default="127.0.0.1", help="Butler's REST address (default 127.0.0.1)")
    demo.add_argument(
        "--state",
        type=Path,
        default=Path(".butler-demo"),
        help="folder for the demo's certificates, config file and key-value store",
    )
    _add_rate_limit(demo)

    config = commands.add_parser("config", help="work with config files")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = config_commands.add_parser("check", help="validate a config file; exit 0 if Butler can use it")
    check.add_argument("file", metavar="FILE.yaml", nargs="?")
    check.add_argument(
        "--explain",
        metavar="KEY",
        help="say what a config key (such as Butler.configQRS.timeoutSeconds) means, its type and default",
    )

    schedules = commands.add_parser("schedules", help="work with schedule files")
    schedule_commands = schedules.add_subparsers(
        dest="schedules_command", metavar="SUBCOMMAND", required=True
    )
    schedule_check = schedule_commands.add_parser(
        "check", help="validate a schedule file and print each entry's next fires in its time zone"
    )
    schedule_check.add_argument("file", metavar="FILE.yaml")
    schedule_check.add_argument(
        "--compat", action="store_true", help="read months 0-11 as upstream does (Butler.scheduler.compat)"
    )
    schedule_check.add_argument("--count", type=int, default=3, help="fires shown per entry (default 3)")

    alert = commands.add_parser("alert", help="work with alerts")
    alert_commands = alert.add_subparsers(dest="alert_command", metavar="SUBCOMMAND", required=True)
    test = alert_commands.add_parser(
        "test",
        help="send a sample alert (a failed reload, or a service) through one channel now; exit 0 if taken",
        description="Builds the alert of a canned failed reload (or of a Windows service that stopped or "
        "started) with the channel's settings of that event (switched on for the test) and sends it at "
        "once, printing each recipient's answer.",
    )
    test.add_argument("-c", "--configfile", required=True, metavar="FILE.yaml", help="Butler config file")
    test.add_argument("--channel", required=True, choices=CHANNELS, help="the channel to try")
    test.add_argument("--to", metavar="ADDRESS", help="e-mail only: send to this address alone")
    test.add_argument(
        "--event",
        choices=("reloadTaskFailure", "serviceStopped", "serviceStarted"),
        default="reloadTaskFailure",
        help="the alert tried (default reloadTaskFailure)",
    )
    add_token_commands(commands)

    appenders = commands.add_parser(
        "appenders",
        help="write the log-appender files of the Sense scheduler and proxy nodes (LocalLogConfig.xml)",
        description="Writes DIR/Scheduler/LocalLogConfig.xml (task events) and DIR/Proxy/LocalLogConfig.xml "
        "(user sessions), sending to Butler at HOST. Copy them to C:\\ProgramData\\Qlik\\Sense\\Scheduler "
        "and ...\\Proxy of each node and restart the Qlik Sense Scheduler and Proxy services.",
    )
    appenders.add_argument(
        "--butler-host",
        required=True,
        metavar="HOST",
        help="IP address or host name the nodes reach Butler at",
    )
    appenders.add_argument(
        "--task-port",
        type=int,
        default=TASK_PORT,
        help=f"Butler.udpServerConfig.portTaskFailure ({TASK_PORT})",
    )
    appenders.add_argument(
        "--session-port",
        type=int,
        default=SESSION_PORT,
        help=f"Butler.udpServerConfig.portSessionConnectionEvents ({SESSION_PORT})",
    )
    appenders.add_argument(
        "--out", type=Path, default=Path(), metavar="DIR", help="where to write (default .)"
    )
    appenders.add_argument("--force", action="store_true", help="replace files that exist")

    load_script = commands.add_parser(
        "load-script",
        help="write butler_subs.qvs, the load-script subs that call Butler through Qlik's REST connector",
    )
    load_script.add_argument(
        "--out",
        type=Path,
        default=Path(SUBS_FILE),
        metavar="FILE",
        help=f"where to write (default {SUBS_FILE})",
    )
    load_script.add_argument("--force", action="store_true", help="replace the file if it exists")
    return parser


def appenders(args: argparse.Namespace) -> int:
    try:
        written = write_files(args.out, args.butler_host, args.task_port, args.session_port, args.force)
    except BadRequest as exc:
        print(f"butler: nothing written: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:
        print(f"butler: nothing written, these exist (--force replaces them): {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def load_script(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.force:
        print(f"butler: {args.out} exists (--force replaces it)", file=sys.stderr)
        return 1
    args.out.write_text(subs_text(), encoding="utf-8", newline="\n")
    print(f"wrote {args.out}")
    return 0


def token(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    settings = _load(args.configfile)
    return 1 if settings is None else token_command(args, parser, settings)


def schedules_check(args: argparse.Namespace) -> int:
    from butler.scheduler.service import check_file

    lines, ok = check_file(Path(args.file), compat=args.compat, count=max(1, args.count))
    for line in lines:
        print(line)
    print(f"{args.file}: {'OK' if ok else 'some entries cannot run'}")
    return 0 if ok else 1


def alert_test(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.to is not None and args.channel != "email":
        parser.error("--to is for --channel email")
    settings = _load(args.configfile)
    if settings is None:
        return 1
    setup_logging("warn")
    from butler.alerts.sample import send_sample  # what alerts need is loaded only for them

    try:
        results = asyncio.run(send_sample(settings.alerts, args.channel, args.to, args.event))
    except BadRequest as exc:
        print(f"butler: nothing sent: {exc}", file=sys.stderr)
        return 1
    for result in results:
        if result.error is None:
            print(f"{args.channel} to {result.message.target}: sent ({result.answer})")
        else:
            print(f"{args.channel} to {result.message.target}: NOT sent: {result.error}")
        for note in result.message.notes:
            print(f"  note: {note}")
    return 0 if all(result.error is None for result in results) else 1


def _load(path: str) -> Settings | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"butler: the config file {path} cannot be used:", file=sys.stderr)
        for message in exc.messages:
            print(f"  {message}", file=sys.stderr)
        return None


def _notes(settings: Settings) -> list[str]:
    notes = list(settings.notes)
    if settings.unsupported_sections:
        notes.insert(
            0, "sections not supported by this version, ignored: " + ", ".join(settings.unsupported_sections)
        )
    return notes


def check_config(path: str) -> int:
    settings = _load(path)
    if settings is None:
        return 1
    print(f"{path}: OK")
    for note in _notes(settings):
        print(f"note: {note}")
    return 0


def explain(key: str) -> int:
    try:
        print(explain_key(key))
    except UnknownKey as exc:
        hint = f" (did you mean '{exc.suggestion}'?)" if exc.suggestion else ""
        print(f"butler: {exc.path} is not a config key{hint}", file=sys.stderr)
        return 1
    return 0


def config_check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.file is None and args.explain is None:
        parser.error("config check needs a config file, --explain KEY, or both")
    status = 0 if args.explain is None else explain(args.explain)
    if args.file is not None:
        status = max(status, check_config(args.file))
    return status


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop where it exists (not on Windows): it serves about a third more requests per second."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def serve(args: argparse.Namespace) -> int:
    settings = _load(args.configfile)
    if settings is None:
        return 1
    files = None
    if settings.log.file_logging:
        try:
            files = LogFiles(settings.log.directory, settings.log.retention_days)
        except OSError as exc:
            print(
                f"butler: Butler.logDirectory {settings.log.directory} cannot be written: {exc}",
                file=sys.stderr,
            )
            return 1
    setup_logging(
        args.loglevel or settings.log_level,
        log_format=args.log_format or settings.log.log_format,
        files=files,
    )
    log.info("Butler %s starting with config file %s", __version__, args.configfile)
    if files is not None:
        log.info("logging to %s", files.directory)
    for note in _notes(settings):
        log.warning(note)
    try:
        _event_loop_runner()(run(Butler(settings, rate_limit=args.api_rate_limit)))
    except StartupError as exc:
        log.error("Butler cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        close_logging()
    return 0


def demo(args: argparse.Namespace) -> int:
    setup_logging("info")
    state = args.state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    try:
        _event_loop_runner()(run_demo(state, args.host, args.port, args.api_rate_limit))
        return 0
    except StartupError as exc:
        log.error("the demo cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Upstream Butler is started as `butler -c FILE`; that still works and means `butler serve -c FILE`.
    if arguments and arguments[0] in ("-c", "--configfile"):
        arguments.insert(0, "serve")
    parser = _parser()
    args = parser.parse_args(arguments)
    if args.command == "serve":
        return serve(args)
    if args.command == "config":
        return config_check(args, parser)
    if args.command == "demo":
        return demo(args)
    if args.command == "alert":
        return alert_test(args, parser)
    if args.command == "schedules":
        return schedules_check(args)
    if args.command == "token":
        return token(args, parser)
    if args.command == "appenders":
        return appenders(args)
    if args.command == "load-script":
        return load_script(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
