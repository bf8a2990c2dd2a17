"""Talking to peers over mutual TLS: node-local scans, heads, checkpoints.

The peer wire format for scans is a stream of msgpack maps: ``{"e": [...]}``
chunks of compact entries, then exactly one ``{"end": {"count": n}}``.  A
stream that stops without its end marker was cut: the caller reports the node
as lost mid-stream instead of passing a truncated answer off as complete.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from itertools import islice
from operator import attrgetter, itemgetter

import aiohttp
import msgpack

from auditlog.engine.entry import WIRE_FIELDS, WIRE_OPTIONAL, Entry
from auditlog.query.cluster.settings import PeerConfig
from auditlog.query.lines import LEN_CODE, TS_CODE, le_array, le_bytes, line_marks

PEER_PREFIX = "/peer/v1"


#: an entry's fields as a peer sends them (msgpack, values as stored: ts in
#: microseconds, the signature as bytes): the wire fields (engine.entry.WIRE_FIELDS)
#: but ``id`` and ``node`` (the peer's own), then ``violation``; ``sub`` and the seq of
#: the entry's position follow (``entry_to_compact``)
COMPACT_FIELDS = (*(f for f in WIRE_FIELDS if f not in ("id", "node")), WIRE_OPTIONAL)
_compact = attrgetter(*COMPACT_FIELDS)


def entry_to_compact(e: Entry) -> list:
    return [*_compact(e), e.sub, e.position[0]]


def entry_from_compact(node: str, c: list | tuple) -> Entry:
    """An entry a peer sent; fields of the wrong type are a malformed stream (ValueError)."""
    n = len(COMPACT_FIELDS)
    if not isinstance(c, (list, tuple)) or len(c) not in (n, n + 1, n + 2):
        raise ValueError("malformed entry")
    (seq, ts, user, action, target, domain, ip, ua, success, details, sig, integrity, violation) = c[:n]
    if not (
        type(seq) is int
        and type(ts) is int
        and type(user) is str
        and type(action) is str
        and all(v is None or type(v) is str for v in (target, domain, ip, ua, violation))
        and type(success) is bool
        and isinstance(details, dict)
        and type(sig) is bytes
        and integrity in ("ok", "violation")
    ):
        raise ValueError("malformed entry")
    e = Entry.of(node, seq, ts, user, action, target, domain, ip, ua, success, details, sig, integrity, violation)
    if len(c) > n:
        if not all(type(x) is int for x in c[n:]):
            raise ValueError("malformed entry")
        e.sub = c[n]
        if len(c) == n + 2:
            e.pos_seq = c[n + 1]
    return e


class PeerError(Exception):
    """A peer refused, timed out, failed mid-stream or answered nonsense."""


class PeerClient:
    """One configured peer, reached over mTLS with a bounded wait for every step."""

    def __init__(self, peer: PeerConfig, session: aiohttp.ClientSession, timeout: float):
        self.node = peer.node
        self.url = peer.url.rstrip("/")
        self.session = session
        self.timeout = timeout

    async def _get(self, path: str, params=None):
        try:
            resp = await asyncio.wait_for(
                self.session.get(
                    self.url + PEER_PREFIX + path,
                    params=params,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout),
                ),
                self.timeout,
            )
        except TimeoutError:
            raise PeerError(f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientConnectorCertificateError as e:
            raise PeerError(f"TLS certificate rejected: {e.certificate_error}") from None
        except (aiohttp.ClientError, ssl.SSLError, OSError) as e:
            raise PeerError(_describe(e)) from None
        if resp.status != 200:
            text = (await resp.text())[:200]
            resp.release()
            raise PeerError(f"HTTP {resp.status}: {text}")
        return resp

    async def json(self, path: str, params=None) -> dict:
        resp = await self._get(path, params)
        try:
            return await asyncio.wait_for(resp.json(), self.timeout)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            raise PeerError(f"bad answer to {path}: {_describe(e)}") from None
        finally:
            resp.release()

    async def post_json(self, path: str, body: dict) -> dict:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.session.post(self.url + PEER_PREFIX + path, json=body) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status >= 300:
                        raise PeerError(f"HTTP {resp.status}: {str(data)[:200]}")
                    return data
        except TimeoutError:
            raise PeerError(f"no answer within {self.timeout:g} s") from None
        except (aiohttp.ClientError, ssl.SSLError, OSError, ValueError) as e:
            raise PeerError(_describe(e)) from None

    async def get_bytes(self, path: str, params=None, *, limit: int, wait: float | None = None) -> tuple[bytes, dict]:
        """GET ``path`` whole (at most ``limit`` bytes): the body and its headers.  The
        connection must come within ``peer_timeout``; the answer, within ``wait``
        seconds (default ``peer_timeout``), for a peer that has work to do first."""
        wait = self.timeout if wait is None else wait
        try:
            async with asyncio.timeout(wait):
                async with self.session.get(
                    self.url + PEER_PREFIX + path,
                    params=params,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
                ) as resp:
                    data = await resp.content.read(limit + 1)
                    if resp.status != 200:
                        raise PeerError(f"HTTP {resp.status}: {data[:200].decode('utf-8', 'replace')}")
                    if len(data) > limit:
                        raise PeerError(f"answer to {path} larger than {limit} bytes")
                    return data, dict(resp.headers)
        except TimeoutError:
            raise PeerError(f"no answer within {wait:g} s") from None
        except aiohttp.ClientConnectorCertificateError as e:
            raise PeerError(f"TLS certificate rejected: {e.certificate_error}") from None
        except (aiohttp.ClientError, ssl.SSLError, OSError) as e:
            raise PeerError(_describe(e)) from None

    async def post(self, path: str, body: bytes, content_type: str, limit: int = 1 << 20) -> tuple[int, bytes]:
        """POST ``body``; the status and the answer's bytes, whatever the status
        (PeerError only when no answer came)."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self.session.post(
                    self.url + PEER_PREFIX + path, data=body, headers={"Content-Type": content_type}
                ) as resp:
                    data = await resp.content.read(limit + 1)
                    if len(data) > limit:
                        raise PeerError(f"answer to {path} larger than {limit} bytes")
                    return resp.status, data
        except TimeoutError:
            raise PeerError(f"no answer within {self.timeout:g} s") from None
        except (aiohttp.ClientError, ssl.SSLError, OSError) as e:
            raise PeerError(_describe(e)) from None

    async def scan(
        self, params: dict[str, str], order: str, after: tuple[int, int] | None
    ) -> AsyncIterator[list[Entry]]:
        """Batches of the peer's matching entries, in its order; PeerError if cut short."""
        q = dict(params)
        q["order"] = order
        if after is not None:
            q["after_seq"], q["after_sub"] = str(after[0]), str(after[1])
        resp = await self._get("/scan", q)
        count = 0
        node = self.node
        try:
            async for msg in _read_messages(resp, self.timeout, lambda: count):  # noqa: B023 (the count so far)
                if "end" in msg:
                    return
                batch = [entry_from_compact(node, c) for c in msg.get("e", ())]
                count += len(batch)
                if batch:
                    yield batch
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise PeerError(f"malformed scan stream: {e}") from None
        finally:
            resp.close()

    async def scan_lines(
        self, params: dict[str, str], order: str, after: tuple[int, int] | None
    ) -> AsyncIterator[tuple[list[int], list[int], bytes, int]]:
        """The peer's matching entries rendered as NDJSON lines, chunk by chunk:
        ``(timestamps, line marks, lines blob, non-ok count)``; PeerError if cut short."""
        q = dict(params)
        q["order"] = order
        q["format"] = "lines"
        if after is not None:
            q["after_seq"], q["after_sub"] = str(after[0]), str(after[1])
        resp = await self._get("/scan", q)
        count = 0
        try:
            async for msg in _read_messages(resp, self.timeout, lambda: count):  # noqa: B023 (the count so far)
                if "end" in msg:
                    return
                chunk = unpack_line_chunk(msg)
                count += len(chunk[0])
                yield chunk
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
            raise PeerError(f"malformed scan stream: {e!r}"[:300]) from None
        finally:
            resp.close()


async def _read_messages(resp, timeout: float, seen) -> AsyncIterator[dict]:
    """The msgpack maps of a scan stream as they arrive; PeerError if it stalls or breaks.

    ``seen()`` gives the number of entries passed on so far (for the messages).
    """
    unpacker = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=True, max_buffer_size=64 * 1024 * 1024)
    while True:
        try:
            chunk = await asyncio.wait_for(resp.content.readany(), timeout)
        except TimeoutError:
            raise PeerError(f"stalled mid-stream after {seen()} entries (nothing for {timeout:g} s)") from None
        except (aiohttp.ClientError, OSError) as e:
            raise PeerError(f"failed mid-stream after {seen()} entries: {_describe(e)}") from None
        if not chunk:
            raise PeerError(f"stream cut after {seen()} entries (no end marker)")
        unpacker.feed(chunk)
        for msg in unpacker:
            if not isinstance(msg, dict):
                raise PeerError("malformed scan stream")
            yield msg


def pack_line_chunk(ts: list[int], lens, parts: list[bytes], bad: int) -> list[bytes]:
    """One chunk of a ``format=lines`` scan, a msgpack map: ``t`` timestamps as
    little-endian int64s, ``n`` the lines' lengths as little-endian uint32s, ``v``
    the count of non-ok entries, ``l`` the lines (each ending in ``\n``) as one
    blob (``parts``, in order).  Framed here rather than by a Packer, and given
    as a list of byte strings, so the lines are not copied before the socket."""
    t, n = le_bytes(TS_CODE, ts), le_bytes(LEN_CODE, lens)
    size = sum(map(len, parts))
    head = b"".join(
        (
            b"\x84\xa1t",
            _bin_header(len(t)),
            t,
            b"\xa1n",
            _bin_header(len(n)),
            n,
            b"\xa1v",
            msgpack.packb(bad),
            b"\xa1l",
            _bin_header(size),
        )
    )
    return [head, *parts]


def _bin_header(size: int) -> bytes:
    if size < 0x100:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 0x10000:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def unpack_line_chunk(msg: dict) -> tuple[list[int], list[int], bytes, int]:
    """A chunk as (timestamps, line marks (``query.lines.line_marks``), blob, non-ok count).

    Refused unless the lengths cut the whole blob into non-empty lines that each
    end in ``\n`` and no line holds a CR (JSON escapes both inside a line; a LF
    inside a line is not looked for, which would cost a scan of every byte)."""
    t, n, blob, bad = msg["t"], msg["n"], msg["l"], msg["v"]
    if (
        type(t) is not bytes
        or type(n) is not bytes
        or type(blob) is not bytes
        or type(bad) is not int
        or len(t) % 8
        or len(n) * 2 != len(t)
    ):
        raise PeerError("malformed line chunk")
    lens = le_array(LEN_CODE, n)
    marks = line_marks(lens)
    if (
        marks[-1] + 1 != len(blob)
        or 0 in lens
        or b"\r" in blob
        or (len(marks) > 1 and _bytes_at(blob, marks) != b"\n" * (len(marks) - 1))
    ):
        raise PeerError("malformed line chunk: lengths and lines disagree")
    return le_array(TS_CODE, t).tolist(), marks, blob, bad


def _bytes_at(blob: bytes, marks: list[int]) -> bytes:
    """The byte at each mark but the leading -1 (each line's last byte)."""
    if len(marks) == 2:
        return blob[marks[1] : marks[1] + 1]
    return bytes(itemgetter(*islice(marks, 1, None))(blob))


def _describe(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror if e.os_error and e.os_error.strerror else e}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "connection closed by the peer"
    if isinstance(e, (ssl.SSLError, aiohttp.ClientSSLError)):
        return f"TLS handshake failed: {e}"
    return str(e) or type(e).__name__
