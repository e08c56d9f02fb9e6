"""Azurite (the Azure Storage emulator) for the tests: started once per session on free loopback ports.

Test modules load the fixtures with `pytest_plugins = ["tests.azurite"]`. Azurite comes from the
repo's package.json (`npm ci`); without it the tests skip with the reason, or fail under
REQUIRE_E2E=1. `StorageCut` sits between a store and Azurite to cut storage off and restore it.

PYTEST_DONT_REWRITE: test modules import this module before pytest_plugins registers it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.store.azure import StorageNames

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"
# Azurite's well-known development account, published in its README; it guards nothing.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_TIMEOUT_SECONDS = 60


def skip_or_fail(reason: str) -> None:
    if os.environ.get("REQUIRE_E2E") == "1":
        pytest.fail(f"REQUIRE_E2E=1 but {reason}")
    pytest.skip(reason)


def require_azurite() -> Path:
    if shutil.which("node") is None:
        skip_or_fail("node is not installed, so Azurite cannot run")
    if not AZURITE_BIN.exists():
        skip_or_fail(f"Azurite is not installed ({AZURITE_BIN} is missing): run `npm ci` in {ROOT}")
    return AZURITE_BIN


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def connection_string(blob_port: int, queue_port: int, table_port: int) -> str:
    base = "http://127.0.0.1:{}/" + DEV_ACCOUNT
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"BlobEndpoint={base.format(blob_port)};QueueEndpoint={base.format(queue_port)};"
        f"TableEndpoint={base.format(table_port)};"
    )


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Azurite:
    """One Azurite process; in memory, or persisted under `location` so that it survives a restart."""

    def __init__(self, workdir: Path, location: Path | None = None) -> None:
        self.bin = require_azurite()
        self.workdir = workdir
        self.location = location
        self.blob_port, self.queue_port, self.table_port = free_ports(3)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "azurite.log"

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.blob_port, self.queue_port, self.table_port

    @property
    def connection_string(self) -> str:
        return connection_string(*self.ports)

    def start(self) -> Azurite:
        persistence = ["--location", str(self.location)] if self.location else ["--inMemoryPersistence"]
        # --skipApiVersionCheck: the current queue SDK speaks an API version Azurite 3.35 rejects.
        cmd = [str(self.bin), "--skipApiVersionCheck", *persistence,
               "--loose", "--disableTelemetry", "--silent",
               "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
               "--blobPort", str(self.blob_port), "--queuePort", str(self.queue_port),
               "--tablePort", str(self.table_port)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not all(_listening(p) for p in self.ports):
            if self.proc.poll() is not None:
                raise RuntimeError(f"Azurite exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"Azurite did not listen within {START_TIMEOUT_SECONDS}s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


class StorageCut:
    """A loopback TCP relay in front of Azurite's three ports that can be cut and restored.

    Cut: it stops listening and drops every open connection, so a client sees what it would see
    when storage goes away (connection reset, then refused). Restored: it listens on the same ports.
    """

    def __init__(self, azurite: Azurite) -> None:
        self.targets = azurite.ports
        self.ports = tuple(free_ports(3))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="storage-cut", daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread.start()
        self.restore()

    @property
    def connection_string(self) -> str:
        return connection_string(*self.ports)

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> None:
        if self._servers:
            return
        for port, target in zip(self.ports, self.targets, strict=True):
            self._servers.append(await asyncio.start_server(
                lambda r, w, t=target: self._pipe(r, w, t), "127.0.0.1", port))

    async def _cut(self) -> None:
        servers, self._servers = self._servers, []
        for s in servers:
            s.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        for s in servers:
            await s.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: int) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers -= {writer, up_writer}


def unique_names() -> StorageNames:
    """Fresh queue, table and container names, so tests sharing one Azurite never see each other."""
    s = uuid.uuid4().hex[:12]
    return StorageNames(queue=f"relay-events-{s}", poison_queue=f"relay-events-{s}-poison",
                        table=f"relaystate{s}", container=f"relay-payloads-{s}")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """An in-memory Azurite shared by the whole session; tests isolate themselves with unique_names()."""
    require_azurite()
    workdir = Path(tempfile.mkdtemp(prefix="azurite-"))
    instance = Azurite(workdir).start()
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(workdir, ignore_errors=True)
