"""A TCP proxy between the service and PostgreSQL that can make the database go away in each
of the ways a real one does, without touching the server every other test shares.

* ``PASS``: traffic flows both ways, byte for byte;
* :meth:`PgProxy.cut`: every open connection is closed at once (a restart, a network drop);
* ``REFUSE``: a new connection is accepted and closed at once (the server is down);
* ``SHUTTING_DOWN``: a new connection is answered as a server that is shutting down answers
  it: ``N`` to an SSLRequest, then, after the startup packet, an ErrorResponse FATAL 57P03
  "the database system is shutting down", and closed.

It runs its own event loop on a thread of its own, so a test's threads (or its event loop)
drive it with plain calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Coroutine
from enum import Enum
from typing import Any

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


class Mode(Enum):
    PASS = "pass"
    REFUSE = "refuse"
    SHUTTING_DOWN = "shutting_down"


def error_response(sqlstate: str, message: str, severity: str = "FATAL") -> bytes:
    """A PostgreSQL ``ErrorResponse`` message (protocol 3.0)."""
    fields = b"".join(
        kind + value.encode() + b"\0"
        for kind, value in ((b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


SHUTTING_DOWN = error_response("57P03", "the database system is shutting down")


class PgProxy:
    """``127.0.0.1:port`` → ``upstream_host:upstream_port``; see the module docstring."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = Mode.PASS
        self.port = 0
        self.accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> PgProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            server = self._server

            async def close() -> None:  # on the proxy's loop: asyncio's Server is not thread-safe
                server.close()

            self._call(close())
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode

    def cut(self) -> int:
        """Closes every open connection, both ends, at once; how many there were."""

        async def cut() -> int:
            writers = list(self._writers)
            self._writers.clear()
            for writer in writers:
                with contextlib.suppress(Exception):
                    writer.transport.abort()
            return len(writers)

        cut_off: int = self._call(cut())
        return cut_off

    @property
    def open_connections(self) -> int:
        return len(self._writers) // 2

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        mode = self.mode
        if mode is Mode.REFUSE:
            writer.transport.abort()
            return
        if mode is Mode.SHUTTING_DOWN:
            await self._answer_shutting_down(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    @staticmethod
    async def _answer_shutting_down(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                length = struct.unpack("!i", await reader.readexactly(4))[0]
                packet = await reader.readexactly(length - 4)
                code = struct.unpack("!i", packet[:4])[0]
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    writer.write(b"N")  # no encryption here; the startup packet follows
                    await writer.drain()
                    continue
                break  # the startup packet
            writer.write(SHUTTING_DOWN)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()
