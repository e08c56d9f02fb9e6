"""The durable store: `open_store(url)` builds the backend a RELAY_STORE URL names.

The contract (`Store`, `Event`, `Claim`, ...) is `relay.store.base`, re-exported here; each backend
is one module that imports only the contract, and is imported here only when its URL is used, so the
SQLite relay never loads the Azure SDK. Adding a backend: one module, one branch in `open_store`, one
prefix in `relay.schema.STORE_URL_PREFIXES`, and the contract suite (tests/test_store_contract.py)
parametrized over it.
"""

from __future__ import annotations

from relay.schema import AZURE_STORAGE_URL_PREFIXES, SQLITE_URL_PREFIX
from relay.store.base import (
    Claim,
    DeadLetter,
    Event,
    Expired,
    LeaseLost,
    Retention,
    Store,
    StoreInUse,
    StoreNotFound,
    StoreUnavailable,
    TicketRecord,
    VersionConflict,
    idempotency_key,
)

__all__ = [
    "Claim",
    "DeadLetter",
    "Event",
    "Expired",
    "LeaseLost",
    "Retention",
    "Store",
    "StoreInUse",
    "StoreNotFound",
    "StoreUnavailable",
    "TicketRecord",
    "VersionConflict",
    "idempotency_key",
    "open_store",
]


def open_store(url: str, *, owner: bool = True, create: bool | None = None) -> Store:
    """Build the backend named by RELAY_STORE (not yet opened).

    owner: this process serves the store (`relay serve`). SQLite has one owner, which holds a lock file
    beside the database (a second one gets StoreInUse at `open`) and releases its dead predecessor's
    leases; admin commands (`relay dead-letters`, `relay alerts`) pass False and work beside a running
    relay. Azure Storage has no owner (any number of replicas share it), but only an owner creates the
    queues, table and container it lacks: a non-owner's `open` finds them or raises StoreNotFound.
    create: for Azure Storage, whether `open` creates what is missing (default: `owner`); `relay serve`'s
    delivery process opens the store as no owner that still creates, as a replica would.
    """
    if url.startswith(SQLITE_URL_PREFIX):
        from relay.store.sqlite import SqliteStore

        return SqliteStore.from_url(url, owner=owner)
    if url.startswith(AZURE_STORAGE_URL_PREFIXES):
        from relay.store.azure import AzureStorageStore

        return AzureStorageStore.from_url(url, create=owner if create is None else create)
    # A mistyped connection string may hold an account key: never echo it.
    secret = "key=" in url.lower() or "signature=" in url.lower()
    shown = "a value holding a key (not shown)" if secret else repr(url)
    raise ValueError(
        f"unsupported store {shown}: use sqlite:///path/to/relay.db, azure-storage://<account> "
        "(managed identity) or an Azure Storage connection string (DefaultEndpointsProtocol=... or "
        "UseDevelopmentStorage=true)"
    )
