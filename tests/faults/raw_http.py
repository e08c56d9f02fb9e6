"""A bare HTTP/1.1 client over a loopback socket, for what no HTTP library sends: broken headers, bodies
sent slowly or never, connections held open. Every wait has a deadline."""

from __future__ import annotations

import asyncio


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, within: float = 5.0) -> RawConnection:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> bool:
        """Send bytes; False when the server has already closed the connection."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def status(self, within: float = 5.0) -> int:
        """The status of the answer, 0 when the server closed the connection without one."""
        try:
            async with asyncio.timeout(within):
                line = await self.reader.readline()
        except (ConnectionError, OSError):
            return 0
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else 0

    async def read_answer(self, within: float = 5.0) -> tuple[int, bytes]:
        """The status and everything else the server sends until it closes the connection."""
        status = await self.status(within)
        try:
            async with asyncio.timeout(within):
                rest = await self.reader.read()
        except (ConnectionError, OSError):
            rest = b""
        return status, rest

    async def closed_by_server(self, within: float) -> bool:
        """True when the server closes the connection (end of stream or reset) within `within` seconds;
        whatever it sends before closing is read and dropped."""
        try:
            async with asyncio.timeout(within):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            pass
        return True

    def close(self) -> None:
        self.writer.close()


def request(path: str = "/alerts", headers: dict[str, str] | list[tuple[str, str]] | None = None,
            body: bytes = b"", method: str = "POST", raw_headers: bytes = b"") -> bytes:
    """An HTTP/1.1 request as bytes (Connection: close; Content-Length from the body unless given)."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {name.lower() for name, _ in items}
    if "content-length" not in names and "transfer-encoding" not in names:
        items.append(("Content-Length", str(len(body))))
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in items]
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1", "surrogateescape") + raw_headers + b"\r\n"
    return head + body


async def exchange(port: int, data: bytes, within: float = 5.0) -> int:
    """Send one whole request, return the answer's status (0: closed without one)."""
    conn = await RawConnection.open(port)
    try:
        await conn.send(data)
        return await conn.status(within)
    finally:
        conn.close()
