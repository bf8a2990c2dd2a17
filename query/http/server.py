"""Serving a running node: the ``[server]`` settings, background jobs, the
listeners (HTTP, Unix socket, the cluster's peer listener), graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from aiohttp import web

from auditlog.engine.errors import ConfigError
from auditlog.query.http.app import create_app
from auditlog.query.node import RunningNode

log = logging.getLogger("auditlog.server")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


#: seconds between runs of the term-postings job
TERMS_INTERVAL = 5.0
#: seconds between looks at whether a signed checkpoint is due
TREE_HEAD_TICK = 5.0


async def _every(seconds: float, fn, name: str, service: RunningNode, first_delay: float | None = None):
    await asyncio.sleep(seconds if first_delay is None else first_delay)
    while True:
        try:
            await service.run(fn)
        except Exception:
            log.exception("background job %s failed", name)
        await asyncio.sleep(seconds)


def background_jobs(node: RunningNode):
    """For the app's ``cleanup_ctx``: the node's periodic jobs, for as long as it serves."""

    async def ctx(app):
        tasks = [
            asyncio.create_task(_every(node.settings.key_use_interval, node.flush_key_uses, "api-key-use", node)),
            asyncio.create_task(
                _every(node.settings.retention_interval, node.run_retention, "retention", node, first_delay=60.0)
            ),
            # term postings: sealed segments' built ahead of the first selective query,
            # the active segment's kept up with as it grows (so a query finds little to index)
            asyncio.create_task(_every(TERMS_INTERVAL, node.postings_job, "term-postings", node, first_delay=5.0)),
            # signed checkpoints of the Merkle tree: at a segment seal, every checkpoint_interval
            asyncio.create_task(_every(TREE_HEAD_TICK, node.tree_head_job, "tree-head", node, first_delay=5.0)),
        ]
        if node.cluster is not None and node.cluster.peers:
            from auditlog.query.cluster.checkpoints import checkpoint_loop

            tasks.append(asyncio.create_task(checkpoint_loop(node.cluster)))
        yield
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return ctx


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on ``listen`` (HOST:PORT), taken before anything is
    written, so that a port in use fails ``serve`` with nothing changed (OSError)."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


async def serve(
    node: RunningNode, listen: str, unix_socket: str | None = None, ready=None, socks: dict | None = None
) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, finish requests, flush and close.

    The app's ``cleanup_ctx`` starts and stops the node's cluster and syslog
    forwarder (``create_app``) and its background jobs; the node itself is
    closed last.  ``socks``: sockets already bound (``bind``) for ``"http"`` and
    ``"peer"``, used instead of binding here."""
    socks = socks or {}
    app = create_app(node)
    app.cleanup_ctx.append(background_jobs(node))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    peer_runner = None
    cluster = node.cluster
    try:
        if "http" in socks:
            await web.SockSite(runner, socks["http"]).start()
        else:
            host, port = parse_listen(listen)
            await web.TCPSite(runner, host, port).start()
        if cluster is not None and cluster.settings.listen:
            from auditlog.query.cluster.pki import server_context
            from auditlog.query.cluster.routes import create_peer_app

            s = cluster.settings
            peer_runner = web.AppRunner(create_peer_app(node, cluster), access_log=None, handle_signals=False)
            await peer_runner.setup()
            tls = server_context(s.ca, s.cert, s.key)
            if "peer" in socks:
                await web.SockSite(peer_runner, socks["peer"], ssl_context=tls).start()
            else:
                phost, pport = parse_listen(s.listen)
                await web.TCPSite(peer_runner, phost, pport, ssl_context=tls).start()
        if unix_socket:
            await web.UnixSite(runner, unix_socket).start()
            os.chmod(unix_socket, 0o660)
    except BaseException:
        if peer_runner is not None:
            await peer_runner.cleanup()
        await runner.cleanup()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready:
        ready(runner)
    try:
        await stop.wait()
    finally:
        node.stopping = True  # follow streams end instead of holding the shutdown up
        if peer_runner is not None:
            await peer_runner.cleanup()
        await runner.cleanup()
        await loop.run_in_executor(None, node.close)


def serve_forever(main) -> None:
    """Run the server's coroutine to its end, on uvloop's event loop where uvloop is
    installed (its sockets and TLS cost less CPU per byte than asyncio's, which
    shows in merged reads), else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
