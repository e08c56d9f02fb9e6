"""`relay serve` runs on uvloop where it is installed, and on asyncio's own loop where it is not."""

from __future__ import annotations

import asyncio
import sys

from relay.event_loop import event_loop


def test_serve_uses_uvloop_when_it_is_installed():
    loop, name = event_loop()
    try:
        assert name == "uvloop"
        assert type(loop).__module__.startswith("uvloop"), type(loop)
    finally:
        loop.close()


def test_serve_falls_back_to_asyncio_without_uvloop(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    loop, name = event_loop()
    try:
        assert name == "asyncio"
        assert isinstance(loop, asyncio.AbstractEventLoop) and not type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
