"""What the relay's helper processes share: how parent and child talk over a socket pair (length-prefixed
frames), how a child dies with its parent, and an exit status in words.

Two helpers use it: the delivery process (relay.delivery_process) and the SQLite store's commit process
(relay.store.sqlite_commits)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
FRAME_HEADER_BYTES = 4  # a frame: its payload's length, big-endian, then the payload


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(FRAME_HEADER_BYTES, "big") + payload


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    size = int.from_bytes(await reader.readexactly(FRAME_HEADER_BYTES), "big")
    return await reader.readexactly(size)


def exit_description(code: int) -> str:
    """A child's exit status in words: 'exit code 1' or 'signal SIGKILL'."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def die_with_parent(parent: int) -> None:
    """On Linux, be killed when the parent dies (however it dies); everywhere, exit if it is gone already."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the socket's end of file still tells the child
    if os.getppid() != parent:
        raise SystemExit(0)
