"""`relay serve`'s garbage collector settings: what start-up made is frozen, and requests in flight do not
set off young-generation collections (each walked every request in flight, ~8 us of each request's CPU)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from relay.alerts import Alert, parse_alert
from relay.event_loop import freeze_startup_objects
from relay.intake.handler import decode_json
from relay.store.base import Event

SAMPLE = Path(__file__).parent / "samples" / "testaction-log-v2-fired.json"


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _request_objects(body: bytes) -> tuple[Alert, Event]:
    """What intake holds of one request while its commit runs (its document, alert and event)."""
    alert = parse_alert(decode_json(body))
    return alert, Event.from_alert(alert, body)


def young_collections_while_serving(body: bytes) -> int:
    """Young collections while 100 rounds of 32 requests come in together (their documents alive at once,
    as while their group commit runs) and go."""
    collections = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 0:
            collections.append(1)

    gc.callbacks.append(count)
    try:
        for _ in range(100):
            in_flight = [_request_objects(body) for _ in range(32)]
            del in_flight
    finally:
        gc.callbacks.remove(count)
    return len(collections)


def test_requests_in_flight_set_off_no_young_collection_after_start(restored_gc):
    body = SAMPLE.read_bytes()
    gc.set_threshold(700, 10, 10)  # Python's default
    gc.collect()
    assert young_collections_while_serving(body) > 0, "the default threshold should collect: the test is blind"
    freeze_startup_objects()
    assert young_collections_while_serving(body) == 0, (
        f"young collections ran with the threshold at {gc.get_threshold()[0]}: every one walks every request in flight")


def test_start_up_objects_are_frozen(restored_gc):
    gc.unfreeze()
    freeze_startup_objects()
    assert gc.get_freeze_count() > 0, "what start-up made must be out of the collector's reach"
