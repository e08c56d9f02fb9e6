"""The ceiling: a bare aiohttp handler that reads the body and answers 202, nothing else."""

import sys

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202)


def main() -> None:
    app = web.Application()
    app.router.add_post("/alerts", accept)
    app.router.add_get("/healthz", lambda r: web.Response(text="ok"))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
