"""The ``butler`` command.

``butler serve -c FILE.yaml`` runs the service (``butler -c FILE.yaml`` too, as upstream is started);
``butler config check FILE.yaml`` validates a config file, ``butler config check --explain KEY`` says what a
key means; ``butler alert test -c FILE.yaml --channel CHANNEL`` sends a sample alert through one channel;
``butler schedules check FILE.yaml`` validates a schedule file and shows each entry's next fires;
``butler token create|list|revoke -c FILE.yaml`` makes, lists and revokes API tokens;
``butler appenders --butler-host HOST`` writes the log-appender files of the Sense nodes;
``butler load-script`` writes the load-script subs that call Butler (``butler_subs.qvs``);
``butler task start|status`` and ``butler app reload`` work through a running Butler's REST API;
``butler --version``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from butler import __version__
from butler.alerts.model import CHANNELS
from butler.app import DEFAULT_RATE_LIMIT, Butler, StartupError, run
from butler.appenders import SESSION_PORT, TASK_PORT, write_files
from butler.auth.cli import add_commands as add_token_commands
from butler.auth.cli import token_command
from butler.client import DEFAULT_URL, ButlerClient
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
    demo.add_argument(
        "--with-mqtt",
        action="store_true",
        help="start a Mosquitto (when installed) on a free port and connect Butler to it",
    )
    demo.add_argument(
        "--task-filter",
        action="store_true",
        help="turn on the task allow-list (Butler.startTaskFilter) of Butler's task-start documentation",
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
    _add_remote_commands(commands)
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


def _pair(form: str, separator: str) -> Callable[[str], tuple[str, str]]:
    def parse(text: str) -> tuple[str, str]:
        first, found, second = text.partition(separator)
        if not (first and found and second):
            raise argparse.ArgumentTypeError(f"expected {form}, got {text!r}")
        return first, second

    return parse


def _key_value(text: str) -> tuple[str, str, str]:
    namespace, pair = _pair("NAMESPACE:KEY=VALUE", ":")(text)
    key, value = _pair("NAMESPACE:KEY=VALUE", "=")(pair)
    return namespace, key, value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _add_remote_options(command: argparse.ArgumentParser, waits_for: str | None) -> None:
    command.add_argument(
        "--butler",
        metavar="URL",
        help=f"the Butler to ask (default: $BUTLER_URL, else {DEFAULT_URL})",
    )
    command.add_argument(
        "--token", help="API token, sent as 'Authorization: Bearer TOKEN' (default: $BUTLER_TOKEN)"
    )
    command.add_argument("--json", action="store_true", help="print one JSON document and nothing else")
    if waits_for:
        command.add_argument("--wait", action="store_true", help=f"wait until {waits_for}, showing progress")
        command.add_argument(
            "--timeout",
            type=_seconds,
            metavar="S",
            help="with --wait: stop waiting after S seconds (exit code 4); default: no limit",
        )


def _add_remote_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from butler.task_commands import EXIT_CODES

    task = commands.add_parser("task", help="start Sense tasks and see their runs through a running Butler")
    task_commands = task.add_subparsers(dest="task_command", metavar="SUBCOMMAND", required=True)
    start = task_commands.add_parser(
        "start",
        help="start tasks by id, tag or custom property (PUT /v4/reloadtask/-/start)",
        description="Starts Sense tasks through Butler; with --wait, follows each run until it ends and "
        "prints the script-log tail of a run that failed. " + EXIT_CODES,
    )
    start.add_argument("task_ids", nargs="*", metavar="ID", help="task ids")
    start.add_argument("--tag", action="append", default=[], help="the tasks with this tag (repeatable)")
    start.add_argument(
        "--cp",
        action="append",
        default=[],
        type=_pair("NAME=VALUE", "="),
        metavar="NAME=VALUE",
        help="the tasks with this custom property value (repeatable)",
    )
    start.add_argument(
        "--kv",
        action="append",
        default=[],
        type=_key_value,
        metavar="NS:KEY=VALUE",
        help="store this key-value pair before the tasks start, for their apps to read (repeatable)",
    )
    _add_remote_options(start, "the runs have ended")
    status = task_commands.add_parser(
        "status",
        help="a task's last run (GET /v4/reloadtask/{id}/status)",
        description="Prints a task's last run, with the script-log tail of a run that failed; the exit code "
        "is that run's (0 while it runs or if it never ran). " + EXIT_CODES,
    )
    status.add_argument("task_id", metavar="ID")
    _add_remote_options(status, None)

    app = commands.add_parser("app", help="reload apps through a running Butler")
    app_commands = app.add_subparsers(dest="app_command", metavar="SUBCOMMAND", required=True)
    reload = app_commands.add_parser(
        "reload",
        help="reload an app through the Engine (PUT /v4/app/{id}/reload)",
        description="Reloads an app through Butler and the Engine; with --wait, until the reload is over. "
        + EXIT_CODES,
    )
    reload.add_argument("app_id", metavar="ID")
    reload.add_argument("--partial", action="store_true", help="a partial reload: add to the app's data")
    _add_remote_options(reload, "the reload is over")


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
        _event_loop_runner()(
            run_demo(state, args.host, args.port, args.api_rate_limit, args.with_mqtt, args.task_filter)
        )
        return 0
    except StartupError as exc:
        log.error("the demo cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 0


def remote(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``butler task ...`` and ``butler app ...``: through the REST API of a running Butler."""
    from butler import task_commands

    if getattr(args, "timeout", None) is not None and not args.wait:
        parser.error("--timeout goes with --wait")
    client = ButlerClient(
        args.butler or os.environ.get("BUTLER_URL") or DEFAULT_URL,
        args.token or os.environ.get("BUTLER_TOKEN"),
    )
    for stream in (sys.stdout, sys.stderr):
        # A scheduler's log on Windows takes the code page: a task name it cannot write is not a crash.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    progress = None if args.json else task_commands.Progress(sys.stdout)
    command: Callable[[ButlerClient], Awaitable[task_commands.Report]]
    if args.command == "app":
        command = partial(
            task_commands.reload_app,
            app_id=args.app_id,
            partial=args.partial,
            wait=args.wait,
            limit=args.timeout,
            progress=progress,
        )
    elif args.task_command == "status":
        command = partial(task_commands.status, task_id=args.task_id)
    else:
        request = task_commands.Request(args.task_ids, args.tag, args.cp, args.kv)
        if not (request.task_ids or request.tags or request.custom_properties):
            parser.error("task start needs a task ID, --tag or --cp")
        command = partial(
            task_commands.start, request=request, wait=args.wait, limit=args.timeout, progress=progress
        )
    return task_commands.execute(client, command, args.json, sys.stdout, sys.stderr)


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
    if args.command in ("task", "app"):
        return remote(args, parser)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
