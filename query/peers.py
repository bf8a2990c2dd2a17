"""Talking to peers over mutual TLS: node-local scans, heads, checkpoints.

The peer wire format for scans is a stream of msgpack maps: ``{"e": [...]}``
chunks of compact entries, then exactly one ``{"end": {"count": n}}``.  A
stream that stops without its end marker was cut: the caller reports the node
as lost mid-stream instead of passing a truncated answer off as complete.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp
import msgpack

from engine.entry import Entry

PEER_PREFIX = "/peer/v1"


def entry_to_compact(e: Entry) -> list:
    return [e.seq, e.ts, e.user, e.action, e.target, e.domain, e.ip, e.user_agent, e.success,
            e.details, e.signature, e.integrity, e.violation]


def entry_from_compact(node: str, c: list | tuple) -> Entry:
    (seq, ts, user, action, target, domain, ip, ua, success, details, sig, integrity, violation) = c
    return Entry(node, seq, ts, user, action, target, domain, ip, ua, success, details, sig,
                 integrity, violation)


class PeerError(Exception):
    """A peer refused, timed out, failed mid-stream or answered nonsense."""


@dataclass(frozen=True)
class PeerConfig:
    node: str
    url: str


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
                self.session.get(self.url + PEER_PREFIX + path, params=params,
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                                               sock_read=self.timeout)),
                self.timeout)
        except asyncio.TimeoutError:
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
        except (asyncio.TimeoutError, aiohttp.ClientError, ValueError) as e:
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

    async def scan(self, params: dict[str, str], order: str, after_seq: int | None) -> AsyncIterator[list[Entry]]:
        """Batches of the peer's matching entries, in its order; PeerError if cut short."""
        q = dict(params)
        q["order"] = order
        if after_seq is not None:
            q["after_seq"] = str(after_seq)
        resp = await self._get("/scan", q)
        unpacker = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=True,
                                    max_buffer_size=64 * 1024 * 1024)
        count = 0
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(resp.content.readany(), self.timeout)
                except asyncio.TimeoutError:
                    raise PeerError(f"stalled mid-stream after {count} entries "
                                    f"(nothing for {self.timeout:g} s)") from None
                except (aiohttp.ClientError, OSError) as e:
                    raise PeerError(f"failed mid-stream after {count} entries: {_describe(e)}") from None
                if not chunk:
                    raise PeerError(f"stream cut after {count} entries (no end marker)")
                unpacker.feed(chunk)
                batch: list[Entry] = []
                for msg in unpacker:
                    if not isinstance(msg, dict):
                        raise PeerError("malformed scan stream")
                    if "end" in msg:
                        if batch:
                            yield batch
                        return
                    node = self.node
                    batch.extend(entry_from_compact(node, c) for c in msg.get("e", ()))
                count += len(batch)
                if batch:
                    yield batch
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise PeerError(f"malformed scan stream: {e}") from None
        finally:
            resp.close()


def _describe(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror if e.os_error and e.os_error.strerror else e}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "connection closed by the peer"
    if isinstance(e, (ssl.SSLError, aiohttp.ClientSSLError)):
        return f"TLS handshake failed: {e}"
    return str(e) or type(e).__name__
