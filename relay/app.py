"""The relay's composition root: the aiohttp app, its routes, health and metrics, and the order things
start and stop in.

This is the one module that knows both flows: it builds the store, hands intake its keys, loads
RELAY_CONFIG and builds the targets and the delivery worker, and connects the two by appending the
worker's `notify` to intake's on-accept callbacks. Intake and delivery know nothing of each other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from relay import status_page, telemetry
from relay.delivery.config import build_targets, load_config
from relay.delivery.metrics import DeliveryMetrics
from relay.delivery.routing import ReconcileSettings, RelayConfig, RetentionSettings, default_config
from relay.delivery.target_check import TargetCheckMetrics, check_periodically, readiness_details
from relay.delivery.worker import Worker
from relay.delivery_process import DeliveryProcess
from relay.event_loop import event_loop, freeze_startup_objects
from relay.intake import (
    IN_FLIGHT_KEY,
    MAX_BODY_BYTES,
    METRICS_KEY,
    ON_ACCEPT_KEY,
    SOURCE_POLICY_KEY,
    STORE_KEY,
    TRACING_KEY,
    VALIDATOR_KEY,
    InFlight,
    SourcePolicy,
    expect_continue,
    itsm_events,
    post_alert,
)
from relay.intake.metrics import IntakeMetrics
from relay.intake.signing_keys import SigningKeys
from relay.intake.tokens import TokenValidator
from relay.listener import CappedTCPSite, accept_error_handler, connection_cap, raise_open_files_limit
from relay.logs import AccessLogger, install_request_filter
from relay.reconcile import JOB_NAME as RECONCILE_JOB
from relay.reconcile import Reconciler, TicketSync, azure_client_factory
from relay.reconcile.job import AlertsClient
from relay.reconcile.sync import job_name as sync_job_name
from relay.schema import AZURE_STORAGE_ACCOUNT_PREFIX, DELIVERY, SQLITE_URL_PREFIX
from relay.settings import DELIVERY_PROCESS_SEPARATE, Settings
from relay.store import Store, StoreUnavailable, open_store
from relay.store.leases import JobLease, run_leased
from relay.targets import Forwarder, Target

log = logging.getLogger("relay.app")

KEYS_KEY = web.AppKey("signing_keys", SigningKeys)
SETTINGS_KEY = web.AppKey("settings", Settings)
# How long aiohttp lets requests finish at shutdown: the delivery worker's grace (by default 20 s, under
# Container Apps' default 30 s termination grace period), so neither cuts the other short.
SHUTDOWN_TIMEOUT_SECONDS = DELIVERY["shutdown_grace_seconds"].default
DELIVERY_CONFIG_KEY = web.AppKey("delivery_config", RelayConfig)
METRICS_ADDRESS_KEY = web.AppKey("metrics_address", list)  # [(host, port)] once the metrics site listens
WORKERS_KEY = web.AppKey("workers", list)  # the running delivery worker (the status page reads its circuits)
# With RELAY_DELIVERY_PROCESS=separate, the delivery worker's process (the status page and /metrics ask it).
DELIVERY_PROCESS_KEY = web.AppKey("delivery_process", DeliveryProcess)
# The latest target check per target name (relay.delivery.target_check.TargetCheck), once it has run.
TARGET_CHECKS_KEY = web.AppKey("target_checks", dict)
# How long an idle keep-alive connection stays open. aiohttp (3.14) has no separate timeout for request
# headers: this one also closes a connection whose request line and headers have not all arrived by then
# (slowloris). The value is run_app's default, made explicit; lowering it also shortens keep-alive reuse.
KEEPALIVE_TIMEOUT_SECONDS = 75
READY_CHECK_TIMEOUT_SECONDS = 2
# How long shutdown waits for the last OpenTelemetry export (relay/telemetry.py) before going on.
FINAL_EXPORT_SECONDS = 2.0
# Instead of aiohttp's "Python/3.x aiohttp/3.y": versions help an attacker pick an exploit.
SERVER_HEADER = "secure-export-relay"


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


# Reconciliation's first pass comes this long after start: the webhooks Azure retries land first.
RECONCILE_FIRST_PASS_SECONDS = 30.0
RECONCILER_KEY = web.AppKey("reconciler", Reconciler)
SYNC_FIRST_POLL_SECONDS = 10.0  # the first poll only sets each target's cursor to now
TICKET_SYNC_KEY = web.AppKey("ticket_sync", TicketSync)
TARGETS_KEY = web.AppKey("targets", dict)  # the delivery worker's target objects, by name

# Retention's first pass comes a minute after start (not at start: a restart loop must not turn
# into a deletion loop, and start-up stays quick), then every `retention.interval_minutes`.
RETENTION_FIRST_PASS_SECONDS = 60.0
EXPIRED_KINDS = ("events", "dead_letters", "tickets", "blobs")


@web.middleware
async def never_500(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """An unexpected error answers 503 (Azure retries it; nothing acknowledged is lost), never 500."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return web.json_response({"error": "temporarily unavailable"}, status=503, headers={"Retry-After": "5"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks = {"signing_keys": app[KEYS_KEY].loaded}
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
            await app[STORE_KEY].ping()
        checks["store"] = True
    except (StoreUnavailable, TimeoutError):
        checks["store"] = False
    ok = all(checks.values())
    body: dict[str, object] = {"ready": ok, "checks": checks}
    if DELIVERY_CONFIG_KEY in app:  # the target check informs, never decides: an ITSM outage is not ours
        body["targets"] = readiness_details(app.get(TARGET_CHECKS_KEY), app[DELIVERY_CONFIG_KEY].targets)
    details: dict[str, object] = {}
    reconciler = app.get(RECONCILER_KEY)
    if reconciler is not None:  # details only: Azure being unreachable does not make the relay unready
        details["reconcile"] = reconciler.status()
    ticket_sync = app.get(TICKET_SYNC_KEY)
    if ticket_sync is not None:  # details only, as reconciliation's
        details["sync"] = ticket_sync.status()
    child = app.get(DELIVERY_PROCESS_KEY)
    if child is not None:  # details only: intake takes alerts while the delivery process restarts
        details["delivery_process"] = child.status()
    if details:
        body["details"] = details
    return web.json_response(body, status=200 if ok else 503)


async def read_pending(app: web.Application) -> None:
    """Refresh what the registry reads from elsewhere (at each scrape, and before each OTLP export): the
    queue-depth gauge from the store, and the delivery process's metric families from it."""
    child = app.get(DELIVERY_PROCESS_KEY)
    if child is not None:
        await child.refresh_metrics()
    store = app.get(STORE_KEY)
    if store is not None:
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
                app[METRICS_KEY].pending.set(await store.pending())
        except (StoreUnavailable, TimeoutError):
            pass  # keep the last value; readiness reports the outage


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    await read_pending(request.app)
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    keys: SigningKeys | None = None,
    metrics: IntakeMetrics | None = None,
    deliver: bool = False,
    separate_delivery: bool = False,
    telemetry_env: Mapping[str, str] | None = None,
    alerts_clients: Callable[[str], AlertsClient] | None = None,
) -> web.Application:
    """Build the relay. Starting it opens the store and loads signing keys; stopping closes them.

    deliver: also run the delivery worker (RELAY_CONFIG, or a dry run to stdout); `relay serve` does.
    separate_delivery: run it in a child process of its own (relay.delivery_process), as `relay serve`
    does by default (RELAY_DELIVERY_PROCESS); otherwise on this app's event loop.
    telemetry_env: where the OTEL_* variables come from (default: the process environment); with an
    OTLP endpoint set the metrics are also pushed and the traces exported (relay/telemetry.py).
    alerts_clients: the Alerts Management clients reconciliation and two-way sync use, one per subscription
    (default: the SDK's, with DefaultAzureCredential); only with `deliver` and a `reconcile:` section or a
    route with `sync:` on.
    """
    # Header fields up to 16 KiB reach the handler, so an oversized token is a 401 like any bad token
    # (the validator refuses Authorization headers over 8 KiB; Entra app tokens are 1-2 KiB).
    # No decompression: intake answers 415 to any Content-Encoding, so aiohttp must not inflate (or refuse
    # with its own 400, as it does for br) a body that is never read anyway.
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[never_500],
        handler_args={"max_field_size": 16384, "auto_decompress": False},
    )
    store = store or open_store(settings.store_url)
    keys = keys or SigningKeys(settings.metadata_url, settings.tenant_id)
    metrics = metrics or IntakeMetrics()
    app[SETTINGS_KEY] = settings
    app[STORE_KEY] = store
    app[KEYS_KEY] = keys
    app[VALIDATOR_KEY] = TokenValidator(settings, keys)
    app[METRICS_KEY] = metrics
    app[ON_ACCEPT_KEY] = []
    app[IN_FLIGHT_KEY] = InFlight()
    app[SOURCE_POLICY_KEY] = SourcePolicy(settings.allowed_subscriptions, settings.allowed_alert_rules)
    app[WORKERS_KEY] = []
    app.on_response_prepare.append(_server_header)
    install_request_filter()
    if app[SOURCE_POLICY_KEY].open:
        async def warn_open_sources(app: web.Application) -> None:  # after the store opened, like the start line
            log.warning("RELAY_ALLOWED_SUBSCRIPTIONS is not set: alerts from any action group in the tenant are taken")

        app.on_startup.append(warn_open_sources)

    app.router.add_post("/alerts", post_alert, expect_handler=expect_continue)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        yield
        await store.close()

    async def keys_ctx(app: web.Application) -> AsyncIterator[None]:
        await keys.start()
        if not keys.loaded:
            log.warning("no signing keys yet: /readyz fails and tokens are refused until they load")
        yield
        await keys.stop()

    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(keys_ctx)
    # Checked now, so that a bad OTEL_* variable stops the relay at start.
    otel_env = os.environ if telemetry_env is None else telemetry_env
    trace_settings = telemetry.trace_settings(otel_env)
    if trace_settings is not None:  # before delivery's context, so that it stops after the worker's last span
        app[TRACING_KEY] = telemetry.Tracing(trace_settings, instance=socket.gethostname())
        app.cleanup_ctx.append(_tracing_ctx(app[TRACING_KEY]))
    if deliver:  # after the store opens, so the worker stops before the store closes
        _add_delivery(app, store, settings.config_path, metrics.registry, separate=separate_delivery)
        if app[DELIVERY_CONFIG_KEY].reconcile is not None:
            _add_reconcile(app, store, app[DELIVERY_CONFIG_KEY].reconcile, metrics.registry, alerts_clients)
        if app[DELIVERY_CONFIG_KEY].syncing_targets():
            _add_sync(app, store, app[DELIVERY_CONFIG_KEY], app[TARGETS_KEY], metrics.registry, alerts_clients)
    # Two-way sync's inbound ticket changes: 404 until a TICKET_CHANGE_SINK_KEY sink is registered.
    itsm_events.add_routes(app, app[DELIVERY_CONFIG_KEY].targets if deliver else (), os.environ)
    app[METRICS_ADDRESS_KEY] = []
    app.cleanup_ctx.append(_metrics_site(settings, app))
    # Exported once delivery's metrics are registered (cleanup contexts start in order).
    export_settings = telemetry.export_settings(otel_env)
    if export_settings is not None:
        app.cleanup_ctx.append(_metrics_export(app, metrics.registry, export_settings))
    return app


def _metrics_export(app: web.Application, registry: CollectorRegistry, settings: telemetry.ExportSettings):  # type: ignore[no-untyped-def]
    """Push the registry with OTLP; the queue-depth gauge is refreshed as often as it is exported."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        export = telemetry.MetricsExport(registry, settings, instance=socket.gethostname())
        log.info("exporting metrics with OTLP (%s) to %s every %gs", settings.protocol, settings.endpoint,
                 settings.interval_ms / 1000)

        async def refresh() -> None:
            while True:
                await read_pending(app)
                await asyncio.sleep(settings.interval_ms / 1000)

        task = asyncio.create_task(refresh())
        yield
        task.cancel()
        await read_pending(app)
        # A last export, off the event loop and bounded: this teardown runs before the worker's (contexts
        # stop in reverse), so a collector that is down must not eat the delivery worker's shutdown grace.
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.to_thread(export.stop)), FINAL_EXPORT_SECONDS)
        except TimeoutError:
            log.warning("the last metrics export did not finish within %gs; stopping without it",
                        FINAL_EXPORT_SECONDS)

    return ctx


def _tracing_ctx(tracing: telemetry.Tracing):  # type: ignore[no-untyped-def]
    """Export spans while the relay runs; at the end send what is left, off the loop and bounded."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tracing.start()
        log.info("exporting traces with OTLP (%s) to %s", tracing.settings.protocol, tracing.settings.endpoint)
        yield
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.to_thread(tracing.stop)), FINAL_EXPORT_SECONDS)
        except TimeoutError:
            log.warning("the last trace export did not finish within %gs; stopping without it", FINAL_EXPORT_SECONDS)

    return ctx


def _add_delivery(app: web.Application, store: Store, config_path: str | None,
                  registry: CollectorRegistry, *, separate: bool) -> None:
    """Load RELAY_CONFIG (default: dry run to stdout) and build the targets now, so that a bad file or a
    missing secret stops the relay at start; the worker starts with the app and wakes on each accept.
    separate: the worker runs in the delivery process (started once the store is open, before the relay
    listens); this process keeps retention and the target check, and builds the targets for those and
    for two-way sync."""
    config = load_config(config_path) if config_path else default_config()
    targets = build_targets(config)
    app[DELIVERY_CONFIG_KEY] = config
    app[TARGETS_KEY] = targets
    if separate:
        _add_delivery_process(app, store, config, registry)
    else:
        _add_worker(app, store, config, targets, registry)
    app.cleanup_ctx.append(_retention_ctx(store, config.retention, registry))
    app[TARGET_CHECKS_KEY] = {}
    app.cleanup_ctx.append(_target_check_ctx(targets, app[TARGET_CHECKS_KEY], registry))


def _add_delivery_process(app: web.Application, store: Store, config: RelayConfig,
                          registry: CollectorRegistry) -> None:
    child = DeliveryProcess(store, grace_seconds=config.delivery.shutdown_grace_seconds)
    app[DELIVERY_PROCESS_KEY] = child
    registry.register(child.metrics)  # type: ignore[arg-type]  # a collector: its families, on /metrics

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await child.start()
        app[ON_ACCEPT_KEY].append(child.wake)
        yield
        await child.stop()

    async def begin_shutdown(app: web.Application) -> None:
        child.begin_shutdown()  # as the inline worker's: stop claiming now, finish within the grace

    app.cleanup_ctx.append(ctx)
    app.on_shutdown.append(begin_shutdown)


def _add_worker(app: web.Application, store: Store, config: RelayConfig,
                targets: Mapping[str, Target | Forwarder], registry: CollectorRegistry) -> None:
    running: list[Worker] = app[WORKERS_KEY]

    async def delivery_ctx(app: web.Application) -> AsyncIterator[None]:
        worker = Worker(store, config, targets, metrics=DeliveryMetrics(registry),
                        intake_in_flight=app[IN_FLIGHT_KEY], tracing=app.get(TRACING_KEY))
        running.append(worker)
        await worker.start()
        app[ON_ACCEPT_KEY].append(worker.notify)
        log.info("delivering to %s", ", ".join(f"{n} ({c.kind})" for n, c in config.targets.items()))
        yield
        await worker.stop()

    async def begin_shutdown(app: web.Application) -> None:
        # Stop claiming as soon as shutdown begins; in-flight work finishes while handlers drain.
        for worker in running:
            worker.begin_shutdown()

    app.cleanup_ctx.append(delivery_ctx)
    app.on_shutdown.append(begin_shutdown)


def _target_check_ctx(targets: Mapping[str, Target | Forwarder], results: dict,
                      registry: CollectorRegistry | None):  # type: ignore[no-untyped-def]
    """Check every target at start (in the background: start-up never waits on an ITSM) and again every
    RECHECK_INTERVAL_SECONDS; the results feed the log, relay_target_check and /readyz's details."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(check_periodically(targets, results, TargetCheckMetrics(registry)),
                                   name="target-check")
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    return ctx


def _alerts_clients(clients: Callable[[str], AlertsClient] | None) -> tuple[Callable[[str], AlertsClient], Any]:
    """The Alerts Management clients to use, and the credential to close at the end (None when the
    caller gave the clients): by default the SDK's, with the relay's managed identity (DefaultAzureCredential)."""
    if clients is not None:
        return clients, None
    from azure.identity.aio import DefaultAzureCredential  # the relay's managed identity in Azure

    credential = DefaultAzureCredential()
    return azure_client_factory(credential), credential


def _add_reconcile(app: web.Application, store: Store, settings: ReconcileSettings,
                   registry: CollectorRegistry | None, clients: Callable[[str], AlertsClient] | None) -> None:
    """Reconciliation with the Alerts Management API (docs/reconciliation.md): one replica at a time
    through the store's `reconcile` lease, a first pass RECONCILE_FIRST_PASS_SECONDS after start."""
    clients, credential = _alerts_clients(clients)
    reconciler = Reconciler(store, settings, clients, registry=registry, on_accept=app[ON_ACCEPT_KEY])
    app[RECONCILER_KEY] = reconciler
    every = settings.interval_minutes * 60

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stopping = asyncio.Event()
        lease = JobLease(store, RECONCILE_JOB, owner=uuid.uuid4().hex, seconds=every * 2 + 60)
        task = asyncio.create_task(run_leased(lease, every=every, run=reconciler.run_once, stopping=stopping,
                                              first=RECONCILE_FIRST_PASS_SECONDS), name="reconcile")
        yield
        stopping.set()
        await task
        await reconciler.close()
        if credential is not None:
            await credential.close()

    app.cleanup_ctx.append(ctx)


def _add_sync(app: web.Application, store: Store, config: RelayConfig, targets: Mapping[str, Target | Forwarder],
              registry: CollectorRegistry | None, clients: Callable[[str], AlertsClient] | None) -> None:
    """Two-way sync (docs/reconciliation.md "Two-way sync"): each syncing target polled every
    `sync.interval_seconds`, one replica at a time through the store's `sync-<target>` lease."""
    clients, credential = _alerts_clients(clients)
    ticket_sync = TicketSync(store, config, targets, clients, registry=registry)
    app[TICKET_SYNC_KEY] = ticket_sync
    app[itsm_events.TICKET_CHANGE_SINK_KEY] = ticket_sync  # POST /itsm-events/<target> applies through it
    every = config.sync.interval_seconds

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stopping = asyncio.Event()
        owner = uuid.uuid4().hex
        tasks = []
        for name in config.syncing_targets():
            lease = JobLease(store, sync_job_name(name), owner=owner, seconds=every * 2 + 60)

            async def poll(name: str = name, lease: JobLease = lease) -> None:
                await ticket_sync.poll(name, lease)

            tasks.append(asyncio.create_task(run_leased(lease, every=every, run=poll, stopping=stopping,
                                                        first=min(SYNC_FIRST_POLL_SECONDS, every)),
                                             name=f"sync-{name}"))
        yield
        stopping.set()
        await asyncio.gather(*tasks)
        await ticket_sync.close()
        if credential is not None:
            await credential.close()

    app.cleanup_ctx.append(ctx)


def retention_schedule(settings: RetentionSettings) -> tuple[float, float]:
    """(seconds until the first retention pass, seconds between passes)."""
    return RETENTION_FIRST_PASS_SECONDS, settings.interval_minutes * 60


async def expire_periodically(store: Store, settings: RetentionSettings, expired: Counter, *,
                              first: float, every: float) -> None:
    """Run `store.expire` now and then, forever: a failed pass is logged and the next one comes anyway.
    A pass that deleted something is followed by another after `first` rather than `every`: a backend
    that bounds its work per pass (Azure Storage) keeps up with a busy relay, and the loop settles back
    to `every` once a pass finds nothing left."""
    delay = first
    while True:
        await asyncio.sleep(delay)
        delay = every
        try:
            gone = await store.expire(time.time(), settings.store_retention())
        except StoreUnavailable as exc:
            log.warning("retention pass failed, next in %.0f s: %s", every, exc)
            continue
        except Exception:
            log.exception("retention pass failed, next in %.0f s", every)
            continue
        for kind in EXPIRED_KINDS:
            expired.labels(kind).inc(getattr(gone, kind))
        if any(getattr(gone, kind) for kind in EXPIRED_KINDS):
            delay = min(first, every)
            log.info("retention deleted %d delivered events, %d dead letters, %d ticket records, %d blobs",
                     gone.events, gone.dead_letters, gone.tickets, gone.blobs)


def _retention_ctx(store: Store, settings: RetentionSettings, registry: CollectorRegistry | None):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        expired = Counter("relay_store_expired_total", "Rows the store's retention deleted, by kind",
                          ["kind"], registry=registry)
        for kind in EXPIRED_KINDS:
            expired.labels(kind)
        first, every = retention_schedule(settings)
        task = asyncio.create_task(expire_periodically(store, settings, expired, first=first, every=every),
                                   name="store-retention")
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    return ctx


def metrics_url(app: web.Application) -> str:
    """Where the running app serves /metrics (with RELAY_METRICS_PORT=0, the port it was given)."""
    host, port = app[METRICS_ADDRESS_KEY][0]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"


def _metrics_site(settings: Settings, main: web.Application):  # type: ignore[no-untyped-def]
    """/metrics on its own port and bind address (127.0.0.1 by default), never on the public listener."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        side = web.Application()
        side[METRICS_KEY] = main[METRICS_KEY]
        side[STORE_KEY] = main[STORE_KEY]
        if DELIVERY_PROCESS_KEY in main:
            side[DELIVERY_PROCESS_KEY] = main[DELIVERY_PROCESS_KEY]
        side.router.add_get("/metrics", metrics_handler)
        _add_status_page(side, main)
        runner = web.AppRunner(side, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
        main[METRICS_ADDRESS_KEY][:] = [tuple(a[:2]) for a in runner.addresses]
        log.info("metrics on %s", metrics_url(main))
        yield
        await runner.cleanup()

    return ctx


def _add_status_page(side: web.Application, main: web.Application) -> None:
    """The read-only status page (relay.status_page), on the metrics/admin site only."""

    async def circuits() -> dict[str, str]:
        child = main.get(DELIVERY_PROCESS_KEY)
        if child is not None:
            return await child.circuits()
        return {name: state for worker in main[WORKERS_KEY] for name, state in worker.circuit_states().items()}

    def target_check() -> object:
        # The start-up target check's latest result per target; before it ran the page says "not run".
        checks = main.get(TARGET_CHECKS_KEY)
        if not checks:
            return None
        return {name: {"status": check.status,
                       "checked at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(check.checked_at)),
                       "findings": [f"{f.status}: {f.check}" + (f" ({f.detail})" if f.detail else "")
                                    for f in check.findings]}
                for name, check in sorted(checks.items())}

    status_page.add_routes(side, main[STORE_KEY], circuits=circuits, target_check=target_check)


def run(settings: Settings) -> None:
    """Serve until stopped. Raises StoreInUse when another relay owns the store (the CLI says so in one line)."""
    app = create_app(settings, deliver=True,
                     separate_delivery=settings.delivery_process == DELIVERY_PROCESS_SEPARATE)
    cap = connection_cap(raise_open_files_limit())
    loop, loop_name = event_loop()

    async def announce(app: web.Application) -> None:  # after the store opened: a refused start says nothing else
        freeze_startup_objects()
        log.info("relay listening on %s:%d (at most %d connections) with %s, event loop %s", settings.host,
                 settings.port, cap, describe(settings), loop_name)

    app.on_startup.append(announce)
    main = loop.create_task(_serve(app, runner_options(app), settings.host, settings.port, cap))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass  # SIGTERM or SIGINT: cancelling the serving task runs the runner's cleanup below
    finally:
        main.cancel()
        try:
            loop.run_until_complete(main)
        except (asyncio.CancelledError, web.GracefulExit):
            pass
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def runner_options(app: web.Application) -> dict[str, object]:
    """How `relay serve` runs aiohttp: shutdown waits as long as the delivery grace; keep-alive (also the
    only bound on how long request headers may take) is explicit."""
    return {
        "handle_signals": True,
        "shutdown_timeout": app[DELIVERY_CONFIG_KEY].delivery.shutdown_grace_seconds,
        "keepalive_timeout": KEEPALIVE_TIMEOUT_SECONDS,
        "access_log_class": AccessLogger,  # no lines for the probes; JSON fields when RELAY_LOG_FORMAT=json
    }


async def _serve(app: web.Application, options: dict[str, object], host: str, port: int,
                 max_connections: int) -> None:
    """What web.run_app does, with the capped site (issue 12: no connection cap let the relay run out of
    file descriptors) and the rate-limited accept-error log."""
    asyncio.get_running_loop().set_exception_handler(accept_error_handler())
    runner = web.AppRunner(app, **options)  # type: ignore[arg-type]
    await runner.setup()
    try:
        await CappedTCPSite(runner, host, port, max_connections=max_connections).start()
        await asyncio.Event().wait()  # until SIGTERM/SIGINT (GracefulExit) cancels this task
    finally:
        await runner.cleanup()


def describe(settings: Settings) -> str:
    """A one-line, secret-free summary of the effective settings for the start-up log."""
    return json.dumps({
        "tenant": settings.tenant_id,
        "audiences": list(settings.audiences),
        "allowed_app_ids": list(settings.allowed_app_ids),
        "required_role": settings.required_role,
        "metadata_url": settings.metadata_url,
        "metrics": f"{settings.metrics_host}:{settings.metrics_port}",
        "allowed_subscriptions": list(settings.allowed_subscriptions) or "any",
        # Only the scheme: a connection string holds an account key and must never reach a log.
        "store": settings.store_url.split("://")[0]
        if settings.store_url.startswith((SQLITE_URL_PREFIX, AZURE_STORAGE_ACCOUNT_PREFIX))
        else "azure-storage (connection string)",
    })
