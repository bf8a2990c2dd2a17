"""Streamed HTTP bodies written as a list of byte strings, without joining them.

A merged NDJSON answer is a few large byte strings per round (runs of lines
sliced from the nodes' chunks), and a peer's scan chunk is a head plus the
lines.  aiohttp's ``StreamResponse.write`` takes one bytes object and, for a
chunked body, joins it again with the chunk framing, so every byte of the
answer would be copied twice before the socket sees it.  :class:`PartsWriter`
sends the chunk framing and the parts with one ``transport.writelines`` call
(uvloop hands them to ``writev``), and waits for the transport to drain
exactly as aiohttp's writer does.

Only HTTP/1.1 answers with chunked transfer encoding take this path; the
first write goes through aiohttp (it carries the buffered headers), and any
other response falls back to joined ``resp.write`` calls.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http import HttpVersion11

#: wait for the transport to drain once it holds more than this (as aiohttp's writer)
DRAIN_ABOVE = 1 << 16
#: parts smaller than this on average are joined first: each part costs a buffer of its
#: own (a TLS record on a TLS transport), which for small parts costs more than the copy
SMALL_PART = 4096


class PartsWriter:
    """Writes the body of ``resp`` (prepared by the caller) part lists at a time."""

    def __init__(self, request: web.BaseRequest, resp: web.StreamResponse):
        self.resp = resp
        self.transport = request.transport
        writer = getattr(resp, "_payload_writer", None)
        self._drain = getattr(writer, "drain", None)
        self.raw = (
            request.version == HttpVersion11
            and resp.chunked
            and self._drain is not None
            and self.transport is not None
            and hasattr(self.transport, "get_write_buffer_size")
        )
        self._started = False

    @staticmethod
    def prepare(request: web.BaseRequest, resp: web.StreamResponse) -> None:
        """Ask for a chunked body where HTTP/1.1 allows it (call before ``prepare``)."""
        if request.version == HttpVersion11:
            resp.enable_chunked_encoding()

    async def write(self, parts: list[bytes]) -> None:
        if not self._started or not self.raw:
            self._started = True
            await self.resp.write(parts[0] if len(parts) == 1 else b"".join(parts))
            return
        size = sum(map(len, parts))
        if not size:
            return
        if len(parts) > 1 and size < len(parts) * SMALL_PART:
            parts = [b"".join(parts)]  # small parts cost more than one copy
        transport = self.transport
        if transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.writelines([b"%x\r\n" % size, *parts, b"\r\n"])
        if transport.get_write_buffer_size() > DRAIN_ABOVE:
            await self._drain()
