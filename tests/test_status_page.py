"""The status page (issue 18 item 5): what it shows, rendered by headless Chromium from a running relay
(Debian's chromium; .ci/run installs it), and that nothing it shows can run as markup or script.

Set STATUS_PAGE_SCREENSHOT=path to also save the Chromium screenshot (docs/img/status-page.png is one).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import pytest

from relay.app import TARGET_CHECKS_KEY, metrics_url
from relay.status_page import StatusSnapshot, render_alert, render_status, safe_link
from relay.store.base import Attempt, DeadLetter, Event, EventTrail, TicketLink, TrailEntry
from tests.conftest import skip_or_fail
from tests.test_alert_trail import ALERT_ID, post, settled
from tests.test_alert_trail import relay as relay  # a fixture
from tests.test_alert_trail import rt as rt  # a fixture
from tests.test_store_contract import backend as backend  # a fixture: SQLite and Azure Storage on Azurite
from tests.test_store_contract import store as store  # a fixture
from tests.test_worker import alert_body, guid

pytest_plugins = ["tests.azurite"]

EVIL = "<img src=x onerror=alert(1)><script>alert(2)</script>"
CHROMIUM_SECONDS = 90


class Dom(HTMLParser):
    """The elements of a page as (tag, attributes, text) and its visible text by element id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.by_id: dict[str, str] = {}
        self._open: list[tuple[str, str | None, list[str]]] = []
        self._all_text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag not in ("meta", "br", "img", "link", "input"):
            self._open.append((tag, a.get("id"), []))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            t, ident, text = self._open.pop()
            joined = "".join(text)
            if self._open:
                self._open[-1][2].append(f" {joined} ")
            if ident:
                self.by_id[ident] = " ".join(joined.split())
            if t == tag:
                break

    @property
    def text(self) -> str:
        return " ".join("".join(self._all_text).split())

    def handle_data(self, data: str) -> None:
        self._all_text.append(data)
        if self._open:
            self._open[-1][2].append(data)

    def all(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]


def trail(key: str, state: str, tickets: tuple[TicketLink, ...] = (), alert_id: str = ALERT_ID) -> EventTrail:
    return EventTrail(key, alert_id, "Fired", "2025-01-01T00:00:00Z", 1_700_000_000.0, state, (), tickets)


def snap(**kw: Any) -> StatusSnapshot:
    base: dict[str, Any] = {"now": 1_700_000_100.0, "pending": 0, "recent": [], "dead_letters": [],
                            "circuits": {"rt": "closed"}}
    return StatusSnapshot(**{**base, **kw})


# -- the page as data (pure rendering) ------------------------------------------------------------------


def test_every_shown_value_is_escaped_and_only_http_links_become_anchors():
    recent = [trail("k1", "delivered", (TicketLink("rt", EVIL, "javascript:alert(3)"),), alert_id=EVIL),
              trail("k2", "delivered", (TicketLink("rt", "7", "https://rt.example.com/Ticket/Display.html?id=7"),))]
    dead = [DeadLetter("3", Event("k3", EVIL, "Fired", "t", b""), 2, EVIL, 1_700_000_000.0)]
    page = render_status(snap(recent=recent, dead_letters=dead, circuits={EVIL: "open"}, target_check={EVIL: EVIL}))
    dom = Dom(page)
    assert dom.all("script") == [] and dom.all("img") == [], "stored text became markup"
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    hrefs = [a["href"] for a in dom.all("a")]
    assert "https://rt.example.com/Ticket/Display.html?id=7" in hrefs
    assert not any(h.lower().startswith("javascript") for h in hrefs), hrefs


@pytest.mark.parametrize(("url", "kept"), [
    ("https://rt.example.com/Ticket/Display.html?id=1", True), ("http://rt/x", True),
    ("javascript:alert(1)", False), ("JavaScript:alert(1)", False), ("data:text/html,<b>x</b>", False),
    ("//evil.example.com", False), ("", False), ("http://[::1", False)])
def test_safe_link_keeps_only_http_and_https(url, kept):
    assert safe_link(url) == (url if kept else "")


@dataclass
class CheckResult:  # a result shaped as issue 18 item 2's check might be: the page shows any shape
    ok: bool
    problems: list[str]


@pytest.mark.parametrize(("result", "shown"), [
    (None, "not run"),
    ({"rt": "ok", "snow": "401: credentials refused"}, "rt ok snow 401: credentials refused"),
    (CheckResult(False, ["rt: custom field AzureAlertId is not applied to queue Ops"]),
     "ok no problems rt: custom field AzureAlertId is not applied to queue Ops"),
    ("all targets answered", "all targets answered"),
])
def test_target_check_shows_its_result_whatever_its_shape_and_not_run_without_one(result, shown):
    dom = Dom(render_status(snap(target_check=result)))
    assert dom.by_id["target-check-result"] == shown


def test_a_store_that_cannot_be_read_shows_unavailable_not_an_error_page():
    dom = Dom(render_status(snap(pending=None, recent=None, dead_letters=None, store_error="sqlite: disk I/O error")))
    assert dom.by_id["pending"] == "unavailable" and dom.by_id["dead-count"] == "unavailable"
    assert dom.by_id["store-error"] == "Store: sqlite: disk I/O error"


def test_the_page_is_served_and_links_only_below_the_one_status_path_the_viewer_proxies():
    from aiohttp import web

    import infra.status_viewer
    from relay import schema
    from relay.status_page import add_routes

    assert infra.status_viewer.STATUS_PATH is schema.STATUS_PATH, "the viewer must proxy the path the relay serves"
    app = web.Application()
    async def no_circuits() -> dict[str, str]:
        return {}

    add_routes(app, store=None, circuits=no_circuits, target_check=lambda: None)  # type: ignore[arg-type]
    served = {r.resource.canonical for r in app.router.routes() if r.method == "GET"}
    assert served == {schema.STATUS_PATH, schema.STATUS_PATH + "/alert"}, served
    pages = (render_status(snap(recent=[trail("k1", "delivered")])), render_alert([], "k1", 0.0))
    own = {a["href"].split("?")[0] for page in pages for a in Dom(page).all("a") if a["href"].startswith("/")}
    outside = {h for h in own if h != schema.STATUS_PATH and not h.startswith(schema.STATUS_PATH + "/")}
    # /metrics is the admin port's own, reached there (not through the viewer): the one link outside.
    assert outside == {"/metrics"}, f"the page links to paths the viewer does not proxy: {outside}"


def test_alert_page_lists_each_attempt_with_its_calls():
    t = EventTrail("k", ALERT_ID, "Fired", "t", 0.0, "delivered",
                   (Attempt(1.0, "retry", "rt: 503", (TrailEntry(1.0, "call", "rt", "create", "", "503", 8.0),)),
                    Attempt(2.0, "delivered", "", (TrailEntry(2.0, "call", "rt", "create", "", "ok", 9.0, "5"),))),
                   (TicketLink("rt", "5", "http://rt/Ticket/Display.html?id=5"),))
    dom = Dom(render_alert([t], ALERT_ID, 3.0))
    assert dom.by_id["alert"] == ALERT_ID
    assert [a["href"] for a in dom.all("a") if "Ticket" in a["href"]] == ["http://rt/Ticket/Display.html?id=5"]
    assert "Attempt 1" in render_alert([t], ALERT_ID, 3.0) and "create: 503 in 8 ms" in render_alert([t], ALERT_ID, 3.0)
    assert Dom(render_alert([], "<b>nope</b>", 3.0)).all("b") == []


# -- the page in headless Chromium, from a running relay ---------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        skip_or_fail("chromium is not installed (apt-get install chromium chromium-driver)")
    return found  # type: ignore[return-value]


async def headless(url: str, *extra: str) -> str:
    """Run headless Chromium on `url` with `extra` switches; its stdout (the DOM for --dump-dom)."""
    proc = await asyncio.create_subprocess_exec(
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-extensions", "--hide-scrollbars", "--window-size=1280,1100", *extra, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHROMIUM_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"chromium did not finish within {CHROMIUM_SECONDS}s")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode()[-2000:]}"
    return out.decode()


async def test_status_page_in_chromium_shows_tickets_pending_dead_letters_and_circuits(relay, issuer, rt, tmp_path):
    await post(relay, issuer, alert_body())  # delivered: a ticket in RT
    await settled(relay.db, 1)
    # RT refuses the second alert's first call (a 400 whose message carries markup): a dead letter.
    rt.inject("status", status=400, path="/REST/2.0/ticket", method="POST",
              body={"message": f"Could not create ticket: {EVIL}"})
    await post(relay, issuer, alert_body(guid(2)))
    events = await settled(relay.db, 2)
    assert sorted(e.state for e in events) == ["dead", "delivered"]
    checks = relay.app[TARGET_CHECKS_KEY]
    for _ in range(200):  # the start-up target check runs in the background: let it finish (a hang guard)
        if "rt" in checks:
            break
        await asyncio.sleep(0.05)
    url = metrics_url(relay.app).removesuffix("/metrics") + "/status"
    html = await headless(url, "--dump-dom")
    dom = Dom(html)
    assert dom.by_id["pending"] == "0"
    assert dom.by_id["dead-count"] == "1"
    assert dom.all("img") == [] and dom.all("script") == [], "text from RT was run as markup"
    assert EVIL in dom.by_id["dead-letters"], "the error shows as text, as RT sent it"
    assert "relay dead-letters replay 2" in dom.by_id["dead-letters"]
    assert f"{rt.url}/Ticket/Display.html?id=1" in [a["href"] for a in dom.all("a")], "the ticket links to RT"
    assert "rt 1" in dom.by_id["recent"] and "delivered" in dom.by_id["recent"] and "dead" in dom.by_id["recent"]
    assert dom.by_id["circuits"] == "Circuits Target Circuit rt closed"
    shown = dom.by_id["target-check-result"]
    assert shown.startswith("rt status ok") and "ok: credentials" in shown, shown
    shot = os.environ.get("STATUS_PAGE_SCREENSHOT")
    if shot:
        target = await asyncio.to_thread(os.path.abspath, shot)
        await headless(url, f"--screenshot={target}")
        assert await asyncio.to_thread(os.path.getsize, target) > 10_000


async def test_alert_page_in_chromium_shows_the_trail_of_one_alert(relay, issuer, rt):
    await post(relay, issuer, alert_body())
    [event] = await settled(relay.db, 1)
    url = metrics_url(relay.app).removesuffix("/metrics") + f"/status/alert?key={event.key}"
    dom = Dom(await headless(url, "--dump-dom"))
    assert dom.by_id["alert"] == ALERT_ID
    assert "Attempt 1" in dom.text and "delivered" in dom.text
    assert "call rt create: ok" in dom.text and f"{rt.url}/Ticket/Display.html?id=1" in dom.text


def test_worker_reports_each_targets_circuit_as_the_page_shows_it():
    from relay.delivery.worker import Worker
    from tests.test_worker import FakeTarget, make_config

    worker = Worker(store=None, config=make_config(targets={"itsm": 1, "other": 1}),  # type: ignore[arg-type]
                    targets={"itsm": FakeTarget(), "other": FakeTarget()})
    assert worker.circuit_states() == {"itsm": "closed", "other": "closed"}
    for _ in range(worker.settings.circuit_failures):
        worker.breakers["itsm"].failed()
    assert worker.circuit_states() == {"itsm": "open", "other": "closed"}
    dom = Dom(render_status(snap(circuits=worker.circuit_states())))
    assert dom.by_id["circuits"] == "Circuits Target Circuit itsm open other closed"


# -- the page's reads on both store backends ---------------------------------------------------------------


async def test_status_snapshot_reads_pending_recent_events_and_dead_letters_on_each_backend(store):
    import dataclasses
    import time

    from relay.status_page import snapshot
    from tests.test_store_contract import ALERT, event

    for n in range(3):
        await store.accept(event(f"page{n}"))
    claims = {c.event.alert_id: c for c in await store.claim(10, 120)}
    done = TrailEntry(1.0, "call", "rt", "create", status="ok", ticket="11", link="https://rt.example.com/t/11")
    await store.complete(dataclasses.replace(claims[ALERT.format("page0")], trail=(done,)))
    await store.dead_letter(claims[ALERT.format("page1")], f"rt: 400 {EVIL}")
    snap_ = await snapshot(store, {"rt": "half-open"}, None, time.time())
    assert snap_.store_error == "" and snap_.pending == 1
    assert [t.state for t in snap_.recent or []] == ["pending", "dead", "delivered"]
    dom = Dom(render_status(snap_))
    assert "https://rt.example.com/t/11" in [a["href"] for a in dom.all("a")]
    assert dom.by_id["dead-count"] == "1" and dom.all("img") == []
    assert "half-open" in dom.by_id["circuits"]
