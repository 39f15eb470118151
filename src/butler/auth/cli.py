"""``butler token create|list|revoke -c FILE.yaml``: API tokens in the store the config file names."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import ipaddress
import sys
import time
from datetime import UTC, datetime
from typing import Any

from butler.audit import record_now
from butler.auth import SCOPES
from butler.auth.tokens import (
    NAME_FORM,
    TokenExists,
    TokenRecord,
    TokenStore,
    digest,
    new_token,
    open_token_store,
    parse_duration,
)
from butler.config import Settings
from butler.errors import Unavailable


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="make, list and revoke API tokens (restServerConfig.auth)")
    token_commands = token.add_subparsers(dest="token_command", metavar="SUBCOMMAND", required=True)
    create = token_commands.add_parser("create", help="make a token and print it, once")
    create.add_argument("--name", required=True, help="the token's name, as logs and audits show it")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        metavar="SCOPE",
        help=f"a scope it holds (repeat for more): {', '.join(SCOPES)}",
    )
    create.add_argument("--expires", metavar="DURATION", help="lifetime: 90d, 12h, 30m (default: none)")
    create.add_argument(
        "--allow-ip",
        action="append",
        default=[],
        metavar="CIDR",
        help="only from this address or network (repeat for more; default: any)",
    )
    create.add_argument("--rate-limit", type=int, metavar="N", help="requests per minute for this token")
    token_commands.add_parser("list", help="the tokens: names, scopes, dates; never the tokens")
    revoke = token_commands.add_parser("revoke", help="refuse a token from now on")
    revoke.add_argument("name", metavar="NAME")
    for command in (create, token_commands.choices["list"], revoke):
        command.add_argument(
            "-c", "--configfile", required=True, metavar="FILE.yaml", help="Butler config file"
        )


def _store(settings: Settings) -> TokenStore:
    kv = settings.key_value
    return open_token_store(kv.backend, kv.sqlite_path, kv.redis_url, kv.redis_prefix)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TokenRecord:
    if NAME_FORM.fullmatch(args.name) is None:
        parser.error("--name: letters, digits, '.', '_' and '-', at most 64, starting with a letter or digit")
    unknown = [scope for scope in args.scope if scope not in SCOPES]
    if unknown:
        parser.error(f"--scope {unknown[0]}: no such scope; the scopes are {', '.join(SCOPES)}")
    created = time.time()
    expires = None
    if args.expires is not None:
        try:
            expires = created + parse_duration(args.expires)
        except ValueError as exc:
            parser.error(f"--expires: {exc}")
    networks = []
    for text in args.allow_ip:
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            parser.error(f"--allow-ip: not an address or network: {text!r}")
    if args.rate_limit is not None and args.rate_limit < 1:
        parser.error("--rate-limit: at least 1 request per minute")
    return TokenRecord(
        args.name,
        "",
        tuple(dict.fromkeys(args.scope)),
        created,
        expires,
        tuple(networks),
        args.rate_limit,
    )


async def _run(args: argparse.Namespace, settings: Settings, record: TokenRecord | None) -> int:
    store = _store(settings)
    try:
        if args.token_command == "create":
            assert record is not None
            token = new_token()
            try:
                await store.create(dataclasses.replace(record, digest=digest(token)))
            except TokenExists:
                print(f"butler: a token named {record.name} exists already", file=sys.stderr)
                return 1
            print(token)
            print(
                f"token {record.name} made with scopes {', '.join(record.scopes)}; it is shown this once",
                file=sys.stderr,
            )
            target = {"name": record.name, "scopes": list(record.scopes), "expires": _when(record.expires)}
            _audit(settings, "createToken", target)
            return 0
        if args.token_command == "list":
            print("name\tscopes\tcreated\texpires\tlast used\tallowed IPs\trate limit")
            for item in await store.all():
                print(
                    "\t".join(
                        (
                            item.name,
                            ",".join(item.scopes),
                            _when(item.created),
                            _when(item.expires),
                            _when(item.last_used),
                            ",".join(item.allow_ips) or "any",
                            f"{item.rate_limit}/min" if item.rate_limit else "-",
                        )
                    )
                )
            return 0
        if await store.revoke(args.name):
            print(f"token {args.name} revoked")
            _audit(settings, "revokeToken", {"name": args.name})
            return 0
        print(f"butler: no token named {args.name}", file=sys.stderr)
        return 1
    except Unavailable as exc:
        print(f"butler: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()


def _audit(settings: Settings, operation: str, target: dict[str, Any]) -> None:
    """Token changes are recorded in the audit log (when it is on) as the REST calls are, by the account
    that ran the command."""
    record_now(settings.audit, operation, caller=f"cli {getpass.getuser()}", target=target, outcome="done")


def token_command(args: argparse.Namespace, parser: argparse.ArgumentParser, settings: Settings) -> int:
    record = _record(args, parser) if args.token_command == "create" else None
    try:
        return asyncio.run(_run(args, settings, record))
    except Unavailable as exc:
        print(f"butler: {exc}", file=sys.stderr)
        return 1
