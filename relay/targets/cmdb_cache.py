"""The CMDB lookup cache of the targets that bind configuration items (ServiceNow, BMC Helix, RT).

In a storm thousands of incidents name the same CI; without a cache each create costs a CMDB search
first. One cache per target: bounded (least recently used goes first), each answer kept for a TTL,
"not found" for a shorter one (so a CI that discovery adds soon gets bound soon), and an entry
dropped when a bind that used it fails. Concurrent lookups of one CI share one call. The clock is
passed in (`now`); `CICache.lookup` is the only part that awaits.

Options (every kind that binds CIs takes them, beside its own): `cmdb_cache_size`,
`cmdb_cache_ttl_seconds`, `cmdb_cache_miss_ttl_seconds` (docs/targets.md); a size of 0 turns it off.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from relay.schema import Bound
from relay.targets import TargetError
from relay.targets.target_config import Options
from relay.targets.vendor_api import CIRef

V = TypeVar("V")

# Option key -> bound and default. A CI moves or is merged rarely; 5 minutes bounds how long an
# incident can still be bound to a CI that was replaced; "not found" is kept 30 s.
CACHE_OPTIONS: dict[str, Bound] = {
    "cmdb_cache_size": Bound(0, 1_000_000, 10_000, whole=True),
    "cmdb_cache_ttl_seconds": Bound(1, 86_400, 300.0),
    "cmdb_cache_miss_ttl_seconds": Bound(0, 86_400, 30.0),
}
CACHE_KEYS = frozenset(CACHE_OPTIONS)


@dataclass(frozen=True, slots=True)
class CacheSettings:
    size: int = int(CACHE_OPTIONS["cmdb_cache_size"].default)
    ttl_seconds: float = CACHE_OPTIONS["cmdb_cache_ttl_seconds"].default
    miss_ttl_seconds: float = CACHE_OPTIONS["cmdb_cache_miss_ttl_seconds"].default


def read_settings(opts: Options) -> CacheSettings:
    """The cache options of a target block (its problems recorded on `opts`, like every option)."""
    return CacheSettings(
        size=int(opts.bounded("cmdb_cache_size", CACHE_OPTIONS["cmdb_cache_size"])),
        ttl_seconds=opts.bounded("cmdb_cache_ttl_seconds", CACHE_OPTIONS["cmdb_cache_ttl_seconds"]),
        miss_ttl_seconds=opts.bounded("cmdb_cache_miss_ttl_seconds", CACHE_OPTIONS["cmdb_cache_miss_ttl_seconds"]),
    )


def ci_key(ref: CIRef) -> tuple[str, str]:
    """A CI's cache key: its ARM id and name, in lower case (Azure lower-cases alertTargetIDs)."""
    return ((ref.arm_id or "").lower(), ref.name.lower())


@dataclass(frozen=True, slots=True)
class Hit(Generic[V]):
    """A cached answer: the CI's reference in the vendor's terms, or None for "not in the CMDB"."""

    value: V | None


class CICache(Generic[V]):
    """CI identity (lower-cased ARM id or name) -> the vendor's reference for it, or None (not found)."""

    def __init__(self, settings: CacheSettings = CacheSettings(), *, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[V | None, float]] = OrderedDict()  # value, good until
        self._inflight: dict[Hashable, asyncio.Future[V | None]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- pure: the clock is an argument ----------------------------------------------------------

    def get(self, key: Hashable, now: float) -> Hit[V] | None:
        """The cached answer for `key` if it is still fresh, else None (and the stale entry is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, good_until = entry
        if now >= good_until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return Hit(value)

    def put(self, key: Hashable, value: V | None, now: float) -> None:
        """Remember an answer: a found CI for the TTL, "not found" (None) for the miss TTL."""
        ttl = self.settings.ttl_seconds if value is not None else self.settings.miss_ttl_seconds
        if self.settings.size <= 0 or ttl <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (value, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.settings.size:
            self._entries.popitem(last=False)

    def invalidate(self, key: Hashable) -> bool:
        """Forget `key` (a bind that used it failed); True if it was cached."""
        return self._entries.pop(key, None) is not None

    # -- the shell -------------------------------------------------------------------------------

    async def lookup(self, key: Hashable, fetch: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached answer, else `fetch()`'s (cached); concurrent lookups of one key share one fetch.

        An exception from `fetch` is not cached: each waiter gets it, and the next lookup fetches again.
        """
        hit = self.get(key, self._clock())
        if hit is not None:
            self.hits += 1
            return hit.value
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await fetch()
        except BaseException as exc:
            # A cancelled lookup must not cancel the others that wait on it: they get a retryable error.
            shared = exc if isinstance(exc, Exception) else TargetError("CMDB lookup cancelled", retryable=True)
            future.set_exception(shared)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            self._inflight.pop(key, None)
        self.put(key, value, self._clock())
        future.set_result(value)
        return value
