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
    maint = sub.add_parser("maintenance", help="maintenance windows of RELAY_CONFIG")
    maint_sub = maint.add_subparsers(dest="action", required=True)
    maint_list = maint_sub.add_parser("list", help="each window: on now or not, and its next run")
    maint_list.add_argument("--at", default=None, metavar="TIME",
                            help="ISO 8601 time to look at (default: now; without an offset: UTC)")
    maint_list.add_argument("--config", default=None, metavar="FILE",
                            help="the RELAY_CONFIG file (default: $RELAY_CONFIG)")
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
    if args.command == "maintenance":
        return _maintenance_list(args)
    return 2


def _maintenance_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from relay.delivery.config import ConfigError, load_config
    from relay.delivery.maintenance import describe, listing

    path = args.config or os.environ.get("RELAY_CONFIG", "").strip()
    if not path:
        print("relay: maintenance list: give --config FILE or set RELAY_CONFIG", file=sys.stderr)
        return 2
    try:
        at = datetime.fromisoformat(args.at) if args.at else datetime.now(UTC)
    except ValueError:
        print(f"relay: maintenance list: --at {args.at!r} is not an ISO 8601 time, e.g. 2026-12-24T22:00",
              file=sys.stderr)
        return 2
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    try:
        config = load_config(path)
    except OSError as exc:
        print(f"relay: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.format(path), file=sys.stderr)
        return 1
    for line in describe(listing(config.maintenance, at)):
        print(line)
    return 0


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
    windows = f"; {len(config.maintenance)} maintenance window(s)" if config.maintenance else ""
    print(f"{path}: OK: {len(config.targets)} target(s): {targets}; {len(config.routes)} route(s){windows}")
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


if __name__ == "__main__":
    sys.exit(main())
