"""Delivery in a process of its own: `relay serve` runs the delivery worker in a child process, so intake
and delivery each have a core's worth of Python (RELAY_DELIVERY_PROCESS=separate, the default).

The parent (relay.app) keeps intake, the store's ownership, reconciliation, two-way sync and the inbound
endpoints. `DeliveryProcess` is its side: it starts the child once the store is open, wakes it after
accepts commit, asks it for its metrics and circuits, restarts it with a backoff when it dies (releasing
the dead child's leases first, so nothing waits for them to run out) and stops it at shutdown. The child
(`python -m relay.delivery_process FD PARENT_PID`, `serve_child`) opens the same store without owning
it, runs the Worker with its scheduler, and talks over its end of one socket pair:

    parent -> child   b"w"  something was accepted: claim now (one byte per batch of accepts, coalesced
                            per turn of the parent's loop; the worker's poll stays the fallback)
                      b"m"  your metrics (Prometheus text exposition), b"s"  your state (JSON circuits)
    child -> parent   a hello once started ({"pid", "owner"}), then one answer per question, in order,
                      each framed as a 4-byte big-endian length and the bytes

End of file on the socket means the parent is gone: the child stops at once, giving back what it holds.
On Linux it is also killed with its parent (PR_SET_PDEATHSIG), so a SIGKILLed relay leaves no worker
behind to race the next one.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from relay import telemetry
from relay.child_process import die_with_parent, exit_description, frame, read_frame
from relay.delivery.config import build_targets, load_config
from relay.delivery.metrics import DeliveryMetrics
from relay.delivery.routing import default_config
from relay.delivery.scheduler import LEASE_NAME as SCHEDULER_LEASE
from relay.delivery.worker import Worker
from relay.event_loop import event_loop, freeze_startup_objects
from relay.logs import configure as configure_logging
from relay.settings import LogSettings, Settings
from relay.store import Store, open_store
from relay.store.leases import JobLease
from relay.store.sqlite import SqliteStore

log = logging.getLogger("relay.delivery_process")

WAKE, METRICS, STATE = b"w", b"m", b"s"
START_TIMEOUT_SECONDS = 60.0  # imports, config, targets and the store, on a busy 2-core machine
ASK_TIMEOUT_SECONDS = 2.0  # a scrape or the status page waits this long for the child's answer
STOP_MARGIN_SECONDS = 5.0  # past the worker's grace, the parent kills a child that has not exited
# Delays before restarting a child that died soon after its start (it lived less than STABLE_SECONDS);
# one that ran for a while is restarted after the first. A crash loop settles at the last.
RESTART_DELAYS_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_SECONDS = 60.0
# The child runs at a lower CPU priority than intake: where both want one core (the stack's default
# relay.cpu is 0.5), the kernel then gives intake's answers about three times the child's share (CFS
# weights 1024 : 335), and delivery still always runs (an accepted alert is already durable). Not
# measured: the benchmarks run everything at nice 19, where a child cannot go lower.
CHILD_NICENESS = 5


class DeliveryProcessFailed(RuntimeError):
    """The delivery process did not start (its own log lines, just above, say why)."""


def restart_delay(quick_deaths: int) -> float:
    """Seconds before restarting a child after `quick_deaths` deaths in a row, each soon after its start."""
    return RESTART_DELAYS_SECONDS[min(max(quick_deaths - 1, 0), len(RESTART_DELAYS_SECONDS) - 1)]




class ChildMetrics:
    """The delivery process's metric families as last read, collected with the parent's registry, so
    /metrics (and the OTLP push) shows each family once: the parent registers no delivery metrics itself."""

    def __init__(self) -> None:
        self._families: list[Metric] = []

    def describe(self) -> list[Metric]:
        return []  # names unknown until the child answers; they never clash with the parent's

    def collect(self) -> Iterable[Metric]:
        return list(self._families)

    def update(self, exposition: bytes | None) -> None:
        """The child's latest exposition, or None when it did not answer (its families are left out)."""
        self._families = [] if exposition is None else list(text_string_to_metric_families(exposition.decode()))


class _Child:
    """One started child: its process, its end of the socket, the answers it owes, who it is."""

    def __init__(self, proc: subprocess.Popen[bytes], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.started = time.monotonic()
        self.owner = ""  # the worker's owner id (its job leases), from the hello
        self.answers: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.listening: asyncio.Task[None] | None = None

    async def listen(self) -> None:
        """Hand each answer to its question, in order, until the child's end closes (it exited)."""
        try:
            while True:
                answer = await read_frame(self.reader)
                if self.answers:
                    fut = self.answers.popleft()
                    if not fut.done():  # its asker gave up waiting
                        fut.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            while self.answers:
                fut = self.answers.popleft()
                if not fut.done():
                    fut.set_exception(ConnectionError("the delivery process exited"))
            self.writer.close()


class DeliveryProcess:
    """The parent's side of the delivery process (see the module docstring)."""

    def __init__(self, store: Store, *, grace_seconds: float, niceness: int = CHILD_NICENESS,
                 env: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.grace_seconds = grace_seconds
        self.niceness = niceness
        self.env = dict(os.environ if env is None else env)
        self.metrics = ChildMetrics()
        self.restarts = 0
        self.released_leases = 0  # of dead children, released for their successors
        self._child: _Child | None = None
        self._wake_pending = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._child.proc.pid if self._child is not None else None

    def status(self) -> dict[str, Any]:
        """For /readyz's details: informs, never decides (the parent's intake is ready without it)."""
        running = self._child is not None and self._child.proc.poll() is None
        return {"state": "running" if running else "restarting", "pid": self.pid, "restarts": self.restarts}

    async def start(self) -> None:
        """Start the child and wait until its worker runs; raises DeliveryProcessFailed if it does not."""
        self._child = await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="delivery-process")

    async def _spawn(self) -> _Child:
        ours, theirs = socket.socketpair()
        try:
            # Popen, not the loop's subprocess support: it works the same on uvloop and asyncio, and
            # _posixsubprocess forks and execs with no Python in between (the store's threads are running).
            proc = subprocess.Popen(  # noqa: ASYNC220 - a fork and exec, once per start: no wait
                [sys.executable, "-m", "relay.delivery_process", str(theirs.fileno()), str(os.getpid()),
                 str(self.niceness)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=self.env)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        child = _Child(proc, reader, writer)
        try:
            hello = json.loads(await asyncio.wait_for(read_frame(reader), START_TIMEOUT_SECONDS))
        except BaseException as exc:  # shutdown while it started (cancelled) included: never leave it running
            writer.close()
            if proc.poll() is None:
                proc.kill()
            code = await asyncio.shield(asyncio.to_thread(proc.wait))
            if not isinstance(exc, asyncio.IncompleteReadError | ConnectionError | TimeoutError | ValueError):
                raise
            why = "did not start in time" if isinstance(exc, TimeoutError) else "exited before it started"
            raise DeliveryProcessFailed(f"the delivery process {why} ({exit_description(code)}); "
                                        "its log lines above say why") from None
        child.owner = str(hello.get("owner", ""))
        child.listening = asyncio.create_task(child.listen(), name="delivery-process-answers")
        log.info("delivery process started (pid %d)", proc.pid)
        return child

    async def _supervise(self) -> None:
        """Restart the child whenever it dies, until shutdown; release what it held first."""
        quick_deaths = 0
        while True:
            child = self._child
            assert child is not None and child.listening is not None
            await child.listening
            code = await asyncio.to_thread(child.proc.wait)
            if self._stopping:
                return
            lived = time.monotonic() - child.started
            quick_deaths = quick_deaths + 1 if lived < STABLE_SECONDS else 1
            delay = restart_delay(quick_deaths)
            released = await self._release(child.owner)
            log.error("the delivery process (pid %d) died after %.0fs (%s); released %d leases it held; "
                      "restarting it in %gs", child.proc.pid, lived, exit_description(code), released, delay)
            while not self._stopping:
                await asyncio.sleep(delay)
                try:
                    self._child = await self._spawn()
                    self.restarts += 1
                    break
                except DeliveryProcessFailed as exc:
                    quick_deaths += 1
                    delay = restart_delay(quick_deaths)
                    log.error("%s; trying again in %gs", exc, delay)

    async def _release(self, owner: str) -> int:
        """A dead child's leases: every delivery lease (SQLite: only the owner's child claims; Azure
        Storage's come back by themselves one lease later) and its scheduler lease."""
        released = 0
        try:
            if isinstance(self.store, SqliteStore):
                released = await self.store.release_leases()
            if owner:
                await JobLease(self.store, SCHEDULER_LEASE, owner=owner, seconds=0).release()
        except Exception as exc:  # the leases then run out by themselves
            log.warning("could not release the dead delivery process's leases: %s", exc)
        self.released_leases += released
        return released

    def wake(self) -> None:
        """An accept committed: tell the child, once for every accept of this turn of the loop."""
        if self._wake_pending or self._child is None:
            return
        self._wake_pending = True
        asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        child = self._child
        if child is not None and not child.writer.is_closing():
            child.writer.write(WAKE)

    async def ask(self, question: bytes) -> bytes | None:
        """The child's answer, or None when it is not running or did not answer in ASK_TIMEOUT_SECONDS."""
        child = self._child
        if child is None or child.writer.is_closing():
            return None
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        child.answers.append(fut)
        child.writer.write(question)
        try:
            return await asyncio.wait_for(fut, ASK_TIMEOUT_SECONDS)
        except (TimeoutError, ConnectionError):
            return None

    async def refresh_metrics(self) -> None:
        self.metrics.update(await self.ask(METRICS))

    async def circuits(self) -> dict[str, str]:
        """Each target's circuit, as the child's worker sees it ({} while no child answers)."""
        answer = await self.ask(STATE)
        return dict(json.loads(answer)["circuits"]) if answer else {}

    def begin_shutdown(self) -> None:
        """Shutdown began: the child stops claiming (SIGTERM) and finishes what it holds within its grace."""
        self._stopping = True
        child = self._child
        if child is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)

    async def stop(self) -> None:
        """Wait for the child to exit (killing it STOP_MARGIN_SECONDS past its grace)."""
        self.begin_shutdown()
        child = self._child
        if child is not None:
            try:
                await asyncio.to_thread(child.proc.wait, self.grace_seconds + STOP_MARGIN_SECONDS)
            except subprocess.TimeoutExpired:
                log.error("the delivery process (pid %d) did not stop within %gs; killing it", child.proc.pid,
                          self.grace_seconds + STOP_MARGIN_SECONDS)
                child.proc.kill()
                await asyncio.to_thread(child.proc.wait)
            if child.listening is not None:
                await child.listening
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None


# -- the child ----------------------------------------------------------------------------------------

async def serve_child(sock: socket.socket, settings: Settings, env: Mapping[str, str]) -> None:
    """Run the delivery worker on the relay's store until SIGTERM (stop within the grace) or the parent's
    end of `sock` closing (stop at once: the parent is gone)."""
    loop = asyncio.get_running_loop()
    config = load_config(settings.config_path) if settings.config_path else default_config()
    targets = build_targets(config, env)
    store = open_store(settings.store_url, owner=False, create=True)
    await store.open()
    trace_settings = telemetry.trace_settings(env)
    tracing = telemetry.Tracing(trace_settings, instance=socket.gethostname()) if trace_settings else None
    if tracing is not None:
        tracing.start()
    registry = CollectorRegistry()
    worker = Worker(store, config, targets, metrics=DeliveryMetrics(registry), tracing=tracing)
    stop = asyncio.Event()
    parent_gone = False
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal parent_gone
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                parent_gone = True
                stop.set()
                return
            if WAKE in chunk:
                worker.notify()
            for question in chunk:
                if question == METRICS[0]:
                    writer.write(frame(generate_latest(registry)))
                elif question == STATE[0]:
                    writer.write(frame(json.dumps({"circuits": worker.circuit_states()}).encode()))

    try:
        await worker.start()
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        writer.write(frame(json.dumps({"pid": os.getpid(), "owner": worker.owner}).encode()))
        answering = asyncio.create_task(answer(reader, writer), name="parent-questions")
        log.info("delivering to %s (delivery process, pid %d)",
                 ", ".join(f"{n} ({c.kind})" for n, c in config.targets.items()), os.getpid())
        freeze_startup_objects()
        await stop.wait()
        if parent_gone:
            log.warning("the relay's main process is gone: giving back what this delivery process holds")
        await worker.stop(0.0 if parent_gone else None)
        answering.cancel()
        await asyncio.gather(answering, return_exceptions=True)
        writer.close()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await store.close()
        if tracing is not None:
            await asyncio.to_thread(tracing.stop)


def main(argv: list[str]) -> int:
    """`python -m relay.delivery_process FD PARENT_PID NICENESS`, as DeliveryProcess starts it."""
    fd, parent, niceness = (int(a) for a in argv[1:4])
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the parent, which stops us
    log_settings = LogSettings.from_env(os.environ, terminal=sys.stderr.isatty())
    configure_logging(log_settings.level, log_settings.format)
    if niceness:
        os.nice(niceness)
    sock = socket.socket(fileno=fd)
    loop, _ = event_loop()
    try:
        loop.run_until_complete(serve_child(sock, Settings.from_env(os.environ), os.environ))
    except Exception:
        log.exception("the delivery process failed")
        return 1
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
