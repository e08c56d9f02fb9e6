"""The `relay` command: `relay serve` runs the relay; other subcommands operate it."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from relay.logs import configure as configure_logging
from relay.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description="Azure Monitor Secure Webhook to ITSM relay")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the relay (configured by RELAY_* environment variables)")
    check = sub.add_parser("check-config", help="validate a RELAY_CONFIG file: what is wrong, with line and key")
    check.add_argument("file", help="the routing/targets YAML file")
    dead = sub.add_parser("dead-letters", help="list or replay events that could not be delivered")
    dead.add_argument("--store", default=None,
                      help="store URL (default: RELAY_STORE, else sqlite:///./relay.db)")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    listing = dead_sub.add_parser("list", help="show dead letters with their last error")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    replay = dead_sub.add_parser("replay", help="put dead letters back in the delivery queue")
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids (from `dead-letters list`)")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    _add_alerts_parser(sub)
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("RELAY_LOG_LEVEL", "INFO"))
    # The Azure SDK logs every request's URL and headers at INFO: thousands of lines an hour at the
    # relay's default level (with the Azure Storage store). Its warnings and errors still come through.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    if args.command == "serve":
        return _serve()
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "dead-letters":
        return _dead_letters(args, parser)
    if args.command == "alerts":
        return _alerts(args)
    return 2


def _serve() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    from relay.app import run
    from relay.delivery.config import ConfigError
    from relay.store import StoreInUse
    from relay.targets.target_config import TargetConfigError

    try:
        run(settings)
    except (ConfigError, TargetConfigError) as exc:  # RELAY_CONFIG, or a secret it names, is wrong
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreInUse as exc:  # another relay serves this SQLite file: one line, no traceback
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    return 0


def _check_config(path: str) -> int:
    from relay.delivery.config import ConfigError, load_config

    try:
        config = load_config(path)
    except OSError as exc:
        print(f"relay: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.format(path), file=sys.stderr)
        count = len(exc.problems)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    targets = ", ".join(f"{name} ({cfg.kind})" for name, cfg in config.targets.items())
    print(f"{path}: OK: {len(config.targets)} target(s): {targets}; {len(config.routes)} route(s)")
    return 0


def _dead_letters(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import asyncio

    from relay.delivery.dead_letters import list_command, replay_command
    from relay.store import StoreUnavailable, open_store

    if args.action == "replay" and bool(args.ids) == bool(args.all):
        parser.error("dead-letters replay: give dead letter ids or --all (not both)")
    url = args.store or os.environ.get("RELAY_STORE", "").strip() or "sqlite:///./relay.db"
    try:
        store = open_store(url, owner=False)  # beside a running relay: never take its lock
    except ValueError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        await store.open()
        try:
            if args.action == "list":
                return await list_command(store, sys.stdout, json_lines=args.json)
            return await replay_command(store, None if args.all else list(args.ids), sys.stdout, sys.stderr)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        print(f"relay: store unavailable: {exc}", file=sys.stderr)
        return 2


def _add_alerts_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    alerts = sub.add_parser("alerts", help="the alert trail: what became of each event (read-only)")
    alerts.add_argument("--store", default=None, help="store URL (default: RELAY_STORE, else sqlite:///./relay.db)")
    alerts_sub = alerts.add_subparsers(dest="action", required=True)
    show = alerts_sub.add_parser("show", help="every event of one alert with its attempts, decisions and calls")
    show.add_argument("alert", metavar="ALERT", help="the alert id (any case) or an event key from `alerts list`")
    show.add_argument("--json", action="store_true", help="one JSON object per event")
    listing = alerts_sub.add_parser("list", help="recent events, newest first, with their state and tickets")
    listing.add_argument("--since", default=None, metavar="WHEN",
                         help="only events received since: a duration (30m, 1h, 2d) or an ISO 8601 time")
    listing.add_argument("--state", choices=("pending", "dead", "delivered"), default=None)
    listing.add_argument("--limit", type=int, default=100, help="at most this many events (default 100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")


def _alerts(args: argparse.Namespace) -> int:
    """`relay alerts show|list`: reads only, beside a running relay; never creates a store."""
    import asyncio
    import time
    from pathlib import Path

    from relay.delivery.alert_trail import list_command, parse_since, show_command
    from relay.schema import SQLITE_URL_PREFIX
    from relay.store import StoreUnavailable, open_store

    url = args.store or os.environ.get("RELAY_STORE", "").strip() or "sqlite:///./relay.db"
    since = None
    try:
        if args.action == "list":
            if args.limit < 1:
                raise ValueError(f"--limit must be 1 or more (got {args.limit})")
            since = parse_since(args.since, time.time()) if args.since else None
        store = open_store(url, owner=False)  # beside a running relay: never take its lock
    except ValueError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    path = getattr(store, "path", None)
    if url.startswith(SQLITE_URL_PREFIX) and path and not Path(path).exists():
        print(f"relay: no store at {path} (set RELAY_STORE or --store to the relay's store)", file=sys.stderr)
        return 2

    async def run() -> int:
        await store.open()
        try:
            if args.action == "show":
                return await show_command(store, args.alert, sys.stdout, sys.stderr, json_lines=args.json)
            return await list_command(store, sys.stdout, since=since, state=args.state, limit=args.limit,
                                      json_lines=args.json)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        print(f"relay: store unavailable: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
