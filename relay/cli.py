"""The `relay` command: `relay serve` runs the relay; other subcommands operate it."""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import TYPE_CHECKING
from urllib.parse import quote

from relay.logs import configure as configure_logging
from relay.schema import SQLITE_URL_PREFIX
from relay.settings import DEFAULT_STORE_URL, ENVIRONMENT, LogSettings, Settings, SettingsError

if TYPE_CHECKING:
    from relay.delivery.routing import RelayConfig
    from relay.store import Store

STORE_HELP = f"store URL (default: RELAY_STORE, else {DEFAULT_STORE_URL})"


def version() -> str:
    try:
        return metadata.version("secure-export")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def environment_help() -> str:
    """The environment `relay serve` reads, from relay.settings.ENVIRONMENT (the one list of it)."""
    width = max(len(v.name) for v in ENVIRONMENT)
    lines = ["environment variables (a missing or malformed one stops `relay serve` with one line naming it):"]
    for v in ENVIRONMENT:
        lines.append(f"  {v.name.ljust(width)}  {v.meaning}")
        lines.append(f"  {' ' * width}  default: {v.default}")
    return "\n".join(lines)


def store_option() -> argparse.ArgumentParser:
    """`--store URL` as a parent parser: give it to a command group and to each of its subcommands, so the
    option works before or after the subcommand (`relay dead-letters list --store URL`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--store", default=argparse.SUPPRESS, help=STORE_HELP)
    return parent


def build_parser() -> argparse.ArgumentParser:
    """Every `relay` command, in one place."""
    parser = argparse.ArgumentParser(prog="relay", description="Azure Monitor Secure Webhook to ITSM relay")
    parser.add_argument("--version", action="version", version=f"relay (secure-export) {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the relay (configured by RELAY_* environment variables)",
                   description="Run the relay: POST /alerts, the delivery worker, /metrics on its own port.",
                   epilog=environment_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    check = sub.add_parser("check-config", help="validate a RELAY_CONFIG file: what is wrong, with line and key")
    check.add_argument("file", help="the routing/targets YAML file")
    targets = sub.add_parser(
        "check-targets",
        help="probe each target of a RELAY_CONFIG file without side effects: credentials, queue/table, fields",
    )
    targets.add_argument("file", nargs="?", default=None, help="the routing/targets YAML file (default: RELAY_CONFIG)")
    store = store_option()
    dead = sub.add_parser("dead-letters", parents=[store],
                          help="list, show or replay events that could not be delivered")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    listing = dead_sub.add_parser("list", parents=[store],
                                  help="show dead letters with their target and last error")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = dead_sub.add_parser("show", parents=[store],
                               help="everything about one dead letter, and how to replay it")
    show.add_argument("id", metavar="ID", help="a dead letter id (from `dead-letters list`)")
    show.add_argument("--json", action="store_true", help="one JSON object")
    replay = dead_sub.add_parser("replay", parents=[store], help="put dead letters back in the delivery queue")
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids (from `dead-letters list`)")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    _add_alerts_parser(sub, store)
    maint = sub.add_parser("maintenance", help="maintenance windows of RELAY_CONFIG")
    maint_sub = maint.add_subparsers(dest="action", required=True)
    maint_list = maint_sub.add_parser("list", help="each window: on now or not, and its next run")
    maint_list.add_argument("--at", default=None, metavar="TIME",
                            help="ISO 8601 time to look at (default: now; without an offset: UTC)")
    maint_list.add_argument("--config", default=None, metavar="FILE",
                            help="the RELAY_CONFIG file (default: $RELAY_CONFIG)")
    route = sub.add_parser("route", help="show what the relay would do with one alert under a RELAY_CONFIG "
                           "file: routes, rendered tickets, lifecycle; sends nothing")
    route.add_argument("file", help="the routing/targets YAML file")
    route.add_argument("alert", metavar="ALERT.json", help="a common-schema alert body, as Azure posts it")
    route.add_argument("--at", metavar="TIME", help="the time to explain at, ISO 8601 (default: now)")
    route.add_argument("--state", metavar="STATE.json",
                       help="the ticket state to assume (docs/configuration.md#relay-route); default: no tickets")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        log_settings = LogSettings.from_env(os.environ, terminal=sys.stderr.isatty())
    except SettingsError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(log_settings.level, log_settings.format)
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
    if args.command == "alerts":
        return _alerts(args)
    if args.command == "route":
        return _route(args.file, args.alert, args.at, args.state)
    if args.command == "maintenance":
        return _maintenance_list(args)
    return 2


def _maintenance_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

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
    config = read_config(path, refused=1)
    if isinstance(config, int):
        return config
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
    from relay.delivery_process import DeliveryProcessFailed
    from relay.store import StoreInUse
    from relay.targets.target_config import TargetConfigError
    from relay.telemetry import TelemetryError

    try:
        run(settings)
    # RELAY_CONFIG (or a secret it names), OTEL_*, an inbound ITSM events secret
    except (ConfigError, TargetConfigError, TelemetryError, SettingsError) as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    except (StoreInUse, DeliveryProcessFailed) as exc:  # another relay serves this SQLite file, or the
        print(f"relay: {exc}", file=sys.stderr)  # delivery process did not start: one line, no traceback
        return 1
    except OSError as exc:
        if settings.config_path is None or exc.filename != settings.config_path:
            raise
        print(f"relay: configuration error: cannot read RELAY_CONFIG {settings.config_path}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def read_config(path: str, *, refused: int, then: Callable[[int], str] | None = None) -> RelayConfig | int:
    """The RELAY_CONFIG file at `path`, or the exit code once stderr says why not: 2 for a file that cannot
    be read (one line), `refused` for one the relay refuses (each problem with its line and key, then
    `then(number of problems)` when given)."""
    from relay.delivery.config import ConfigError, load_config

    try:
        return load_config(path)
    except OSError as exc:
        print(f"relay: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.format(path), file=sys.stderr)
        if then is not None:
            print(then(len(exc.problems)), file=sys.stderr)
        return refused


def _check_config(path: str) -> int:
    config = read_config(path, refused=1, then=lambda n: f"{path}: {n} problem{'s' if n != 1 else ''}")
    if isinstance(config, int):
        return config
    targets = ", ".join(f"{name} ({cfg.kind})" for name, cfg in config.targets.items())
    windows = f"; {len(config.maintenance)} maintenance window(s)" if config.maintenance else ""
    print(f"{path}: OK: {len(config.targets)} target(s): {targets}; {len(config.routes)} route(s){windows}")
    return 0


def _check_targets(path: str | None) -> int:
    """0: every probe passed or could not look; 1: one failed; 2: the file or a secret it names is wrong."""
    import asyncio

    from relay.delivery.config import build_targets
    from relay.delivery.target_check import check_targets, report_lines, verdict
    from relay.targets.target_config import TargetConfigError

    path = path or os.environ.get("RELAY_CONFIG", "").strip() or None
    if path is None:
        print("relay: check-targets needs a file, or RELAY_CONFIG naming one", file=sys.stderr)
        return 2
    config = read_config(path, refused=2, then=lambda _: f"{path}: fix it first (relay check-config {path})")
    if isinstance(config, int):
        return config
    try:
        targets = build_targets(config)
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


def store_url(args: argparse.Namespace) -> str:
    """--store, else RELAY_STORE, else the relay's default."""
    return getattr(args, "store", None) or os.environ.get("RELAY_STORE", "").strip() or DEFAULT_STORE_URL


def missing_store(url: str) -> str | None:
    """Why an operating command must not open `url`, or None. Opening a SQLite store creates it (and its
    tables): a command pointed at a wrong path would make an empty store and report on that. So the file
    must exist and hold the relay's tables; it is looked at read-only. (An Azure Storage store opened by a
    non-owner creates nothing: its `open` raises StoreNotFound instead.)"""
    if not url.startswith(SQLITE_URL_PREFIX):
        return None
    from relay.store.sqlite import SqliteStore

    path = SqliteStore.from_url(url).path
    if not os.path.isfile(path):
        return f"no store at {path} (from --store or RELAY_STORE): nothing was created; name the relay's store"
    try:
        conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"{path} is not a relay store: {exc}"
    if "events" not in tables:
        return f"{path} is not a relay store (it has no events table); name the relay's store"
    return None


def _route(path: str, alert_path: str, at_text: str | None, state_path: str | None) -> int:
    """`relay route`: 0 when explained, 1 when the alert is not one the relay accepts, 2 for unusable input."""
    import json
    from datetime import UTC, datetime

    from relay.alerts import SchemaError, parse_alert, parse_time
    from relay.delivery.route_state import StateError, parse_state
    from relay.delivery.route_tester import explain
    from relay.intake.handler import decode_json

    try:
        at = parse_time(at_text) if at_text else datetime.now(UTC)
    except ValueError as exc:
        print(f"relay: --at {at_text!r}: {exc}", file=sys.stderr)
        return 2
    config = read_config(path, refused=2)
    if isinstance(config, int):
        return config
    state = None
    if state_path:
        try:
            with open(state_path, encoding="utf-8") as f:
                state = parse_state(json.load(f))
        except OSError as exc:
            print(f"relay: cannot read {state_path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        except ValueError as exc:  # not JSON, or StateError
            where = "" if isinstance(exc, StateError) else "not JSON: "
            print(f"relay: {state_path}: {where}{exc}", file=sys.stderr)
            return 2
    try:
        with open(alert_path, "rb") as f:
            body = f.read()
    except OSError as exc:
        print(f"relay: cannot read {alert_path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        alert = parse_alert(decode_json(body))
    except SchemaError as exc:
        print(f"relay: {alert_path}: the relay refuses it with 422: {exc}", file=sys.stderr)
        return 1
    except (ValueError, RecursionError) as exc:
        print(f"relay: {alert_path}: the relay refuses it with 400 (malformed JSON): {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(explain(config, alert, at=at, state=state))
    return 0


def on_existing_store(url: str, command: Callable[[Store], Awaitable[int]]) -> int:
    """Run an operating command on the relay's store at `url`, beside a running relay: never taking its lock,
    never creating a store. 2, with one line on stderr, when `url` names no relay store or the store
    cannot be reached; else what `command` returns."""
    import asyncio

    from relay.store import StoreNotFound, StoreUnavailable, open_store

    try:
        problem = missing_store(url)
        store = open_store(url, owner=False)  # beside a running relay: never take its lock
    except ValueError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    if problem is not None:
        print(f"relay: {problem}", file=sys.stderr)
        return 2

    async def run() -> int:
        try:
            await store.open()
            return await command(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreNotFound as exc:  # Azure Storage: the queues or table are not there (SQLite: missing_store)
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"relay: store unavailable: {exc}", file=sys.stderr)
        return 2


def _dead_letters(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from relay.delivery.dead_letters import list_command, replay_command, show_command

    if args.action == "replay" and bool(args.ids) == bool(args.all):
        parser.error("dead-letters replay: give dead letter ids or --all (not both)")

    async def run(store: Store) -> int:
        if args.action == "list":
            return await list_command(store, sys.stdout, json_lines=args.json)
        if args.action == "show":
            return await show_command(store, args.id, sys.stdout, sys.stderr, as_json=args.json)
        return await replay_command(store, None if args.all else list(args.ids), sys.stdout, sys.stderr)

    return on_existing_store(store_url(args), run)


def _add_alerts_parser(sub: argparse._SubParsersAction, store: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    alerts = sub.add_parser("alerts", parents=[store], help="the alert trail: what became of each event (read-only)")
    alerts_sub = alerts.add_subparsers(dest="action", required=True)
    show = alerts_sub.add_parser("show", parents=[store],
                                 help="every event of one alert with its attempts, decisions and calls")
    show.add_argument("alert", metavar="ALERT", help="the alert id (any case) or an event key from `alerts list`")
    show.add_argument("--json", action="store_true", help="one JSON object per event")
    listing = alerts_sub.add_parser("list", parents=[store],
                                    help="recent events, newest first, with their state and tickets")
    listing.add_argument("--since", default=None, metavar="WHEN",
                         help="only events received since: a duration (30m, 1h, 2d) or an ISO 8601 time")
    listing.add_argument("--state", choices=("pending", "dead", "delivered"), default=None)
    listing.add_argument("--limit", type=int, default=100, help="at most this many events (default 100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")


def _alerts(args: argparse.Namespace) -> int:
    """`relay alerts show|list`: reads only, beside a running relay; never creates a store."""
    import time

    from relay.delivery.alert_trail import list_command, parse_since, show_command

    since = None
    try:
        if args.action == "list":
            if args.limit < 1:
                raise ValueError(f"--limit must be 1 or more (got {args.limit})")
            since = parse_since(args.since, time.time()) if args.since else None
    except ValueError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2

    async def run(store: Store) -> int:
        if args.action == "show":
            return await show_command(store, args.alert, sys.stdout, sys.stderr, json_lines=args.json)
        return await list_command(store, sys.stdout, since=since, state=args.state, limit=args.limit,
                                  json_lines=args.json)

    return on_existing_store(store_url(args), run)


if __name__ == "__main__":
    sys.exit(main())
