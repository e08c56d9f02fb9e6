"""How a relay process runs Python: its event loop, and a heap the garbage collector leaves alone.

`relay serve` and its delivery process (relay.delivery_process) both start this way."""

from __future__ import annotations

import asyncio
import gc


def event_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """uvloop where it is installed (a runtime dependency, but not on Windows), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), "uvloop"


# Python's default is 700: the youngest generation is collected once 700 more containers were made
# than freed. A request's own objects (its JSON document, its alert, its response) are freed by reference
# counting when it ends, yet 32 requests in flight crossed 700 every ~80 requests, and each collection
# walked all of them (~0.5 ms): ~8 us of every request's CPU (gc callbacks under bench/intake.py's load).
# At 10,000 a whole 10 s run of that load made no young collection at all; cyclic garbage, the only
# kind collections free, waits at most 10,000 containers (a few MiB) longer.
YOUNG_GC_THRESHOLD = 10_000


def freeze_startup_objects() -> None:
    """Put what start-up made (modules, the app, config, targets) beyond the garbage collector's reach,
    and collect the youngest generation less often (YOUNG_GC_THRESHOLD).

    Python's full collections walk every tracked object; with the relay's start-up heap that was a pause
    of 30-50 ms on the event loop every few seconds of a storm (measured with gc callbacks on the 2-core
    benchmark machine), and those pauses were the storm's slowest 202s. Frozen objects are never walked
    (they live as long as the process anyway), so a full collection sees only what was made since."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)
