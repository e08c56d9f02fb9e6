"""The relay's intake alone (no delivery worker), configured from RELAY_* and on the event loop of `relay serve`."""

import logging
import os

from aiohttp import web

from relay.app import SHUTDOWN_TIMEOUT_SECONDS, create_app
from relay.event_loop import event_loop, freeze_startup_objects
from relay.settings import Settings


def main() -> None:
    logging.basicConfig(level=os.environ.get("RELAY_LOG_LEVEL", "WARNING"))
    settings = Settings.from_env(os.environ)
    loop, _ = event_loop()  # uvloop, as `relay serve` runs
    app = create_app(settings)

    async def freeze(app: web.Application) -> None:  # as `relay serve` does once started
        freeze_startup_objects()

    app.on_startup.append(freeze)
    web.run_app(app, host=settings.host, port=settings.port,
                shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
