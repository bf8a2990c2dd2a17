"""Running the service: background jobs, listeners, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from query.app import create_app
from query.service import Service

log = logging.getLogger("auditlog.server")


def parse_listen(text: str) -> tuple[str, int]:
    from engine.errors import ConfigError
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _every(seconds: float, fn, name: str, service: Service, first_delay: float | None = None):
    await asyncio.sleep(seconds if first_delay is None else first_delay)
    while True:
        try:
            await service.run(fn)
        except Exception:
            log.exception("background job %s failed", name)
        await asyncio.sleep(seconds)


def background_jobs(service: Service):
    async def ctx(app):
        tasks = [
            asyncio.create_task(_every(service.settings.key_use_interval, service.flush_key_uses,
                                       "api-key-use", service)),
            asyncio.create_task(_every(service.settings.retention_interval, service.run_retention,
                                       "retention", service, first_delay=60.0)),
            # term postings of sealed segments, built ahead of the first selective query
            asyncio.create_task(_every(30.0, service.log.build_missing_terms, "term-postings",
                                       service, first_delay=5.0)),
        ]
        yield
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ctx


async def serve(service: Service, listen: str, unix_socket: str | None = None,
                ready=None) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, finish requests, flush and close."""
    app = create_app(service)
    app.cleanup_ctx.append(background_jobs(service))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    peer_runner = None
    cluster = service.cluster
    try:
        host, port = parse_listen(listen)
        site = web.TCPSite(runner, host, port)
        await site.start()
        if cluster is not None:
            await cluster.start()
            if cluster.settings.listen:
                from query.pki import server_context
                from query.routes.peer import create_peer_app
                s = cluster.settings
                peer_runner = web.AppRunner(create_peer_app(service, cluster), access_log=None,
                                            handle_signals=False)
                await peer_runner.setup()
                phost, pport = parse_listen(s.listen)
                await web.TCPSite(peer_runner, phost, pport,
                                  ssl_context=server_context(s.ca, s.cert, s.key)).start()
    except BaseException:
        if cluster is not None:
            await cluster.stop()
        if peer_runner is not None:
            await peer_runner.cleanup()
        await runner.cleanup()
        raise
    jobs = []
    if cluster is not None and cluster.peers:
        from query.cluster import checkpoint_loop
        jobs.append(asyncio.create_task(checkpoint_loop(cluster)))
    if unix_socket:
        usite = web.UnixSite(runner, unix_socket)
        await usite.start()
        os.chmod(unix_socket, 0o660)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready:
        ready(runner)
    try:
        await stop.wait()
    finally:
        for t in jobs:
            t.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        if peer_runner is not None:
            await peer_runner.cleanup()
        await runner.cleanup()
        if cluster is not None:
            await cluster.stop()
        await loop.run_in_executor(None, service.close)


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
