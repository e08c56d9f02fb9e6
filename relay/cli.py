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
    targets = sub.add_parser(
        "check-targets",
        help="probe each target of a RELAY_CONFIG file without side effects: credentials, queue/table, fields",
    )
    targets.add_argument("file", nargs="?", default=None, help="the routing/targets YAML file (default: RELAY_CONFIG)")
    dead = sub.add_parser("dead-letters", help="list or replay events that could not be delivered")
    dead.add_argument("--store", default=None,
                      help="store URL (default: RELAY_STORE, else sqlite:///./relay.db)")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    listing = dead_sub.add_parser("list", help="show dead letters with their last error")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    replay = dead_sub.add_parser("replay", help="put dead letters back in the delivery queue")
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids (from `dead-letters list`)")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("RELAY_LOG_LEVEL", "INFO"))
    # The Azure SDK logs every request's URL and headers at INFO: thousands of lines an hour at the
    # relay's default level (with the Azure Storage store). Its warnings and errors still come through.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    if args.command == "serve":
        return _serve()
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "check-targets":
        return _check_targets(args.file)
    if args.command == "dead-letters":
        return _dead_letters(args, parser)
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


def _check_targets(path: str | None) -> int:
    """0: every probe passed or could not look; 1: one failed; 2: the file or a secret it names is wrong."""
    import asyncio

    from relay.app import build_targets
    from relay.delivery.config import ConfigError, load_config
    from relay.delivery.target_check import check_targets, report_lines, verdict
    from relay.targets.target_config import TargetConfigError

    path = path or os.environ.get("RELAY_CONFIG", "").strip() or None
    if path is None:
        print("relay: check-targets needs a file, or RELAY_CONFIG naming one", file=sys.stderr)
        return 2
    try:
        config = load_config(path)
        targets = build_targets(config)
    except OSError as exc:
        print(f"relay: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.format(path), file=sys.stderr)
        print(f"{path}: fix it first (relay check-config {path})", file=sys.stderr)
        return 2
    except TargetConfigError as exc:  # a secret it names is not set in this environment
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2

    async def run() -> dict:
        try:
            return await check_targets(targets)
        finally:
            for target in targets.values():
                await target.close()

    checks = asyncio.run(run())
    for line in report_lines(checks):
        print(line)
    failed = [name for name, check in checks.items() if check.status == "failed"]
    unchecked = sum(f.status == "unchecked" for c in checks.values() for f in c.findings)
    overall = verdict(f for c in checks.values() for f in c.findings)
    print(f"{path}: {len(checks)} target(s): {overall.upper()}"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; {unchecked} check(s) could not be made" if unchecked else ""))
    return 1 if failed else 0


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
