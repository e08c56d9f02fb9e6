"""The `relay` command: `relay serve` runs the relay; other subcommands operate it."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from relay.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description="Azure Monitor Secure Webhook to ITSM relay")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the relay (configured by RELAY_* environment variables)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("RELAY_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.command == "serve":
        return _serve()
    return 2


def _serve() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    from relay.app import run

    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
