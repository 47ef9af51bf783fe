"""Active health checks: GET <path> on every backend each interval; 2xx means up.

Off the data path: one task per worker, plain asyncio streams, its own short connections.
"""

import asyncio
import logging

log = logging.getLogger("fleetproxy.health")


async def probe(host, port, path, timeout):
    """True if the backend answers ``GET path`` with a 2xx within ``timeout`` seconds."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            line = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.transport.abort()
    parts = line.split(b" ", 2)
    return len(parts) >= 2 and parts[1][:1] == b"2"


async def check_forever(backends, cfg):
    health = cfg.health
    while True:
        results = await asyncio.gather(*(probe(b.host, b.port, health.path, health.timeout) for b in backends))
        for backend, up in zip(backends, results):
            if up != backend.healthy:
                log.warning("backend %s is %s", backend.label, "up" if up else "down")
                backend.healthy = up
        await asyncio.sleep(health.interval)
