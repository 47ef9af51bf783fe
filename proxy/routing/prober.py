"""Active health checks: the I/O driver that feeds ``health.HealthState``.

One task per worker, off the data path: plain asyncio streams, a short connection of its own per
probe (TLS for https endpoints), every endpoint probed at once each ``interval``.
"""

import asyncio


async def probe(host, port, path, timeout, ssl=None, server_hostname=None):
    """True if the endpoint answers ``GET path`` with a 2xx within ``timeout`` seconds."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            if ssl is None:
                reader, writer = await asyncio.open_connection(host, port)
            else:
                reader, writer = await asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname)
            authority = server_hostname or f"{host}:{port}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
            line = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.transport.abort()
    parts = line.split(b" ", 2)
    return len(parts) >= 2 and parts[1][:1] == b"2"


async def check_forever(endpoints, cfg):
    """Probe ``endpoints`` (``router.endpoints``) every ``cfg.health.interval`` seconds.

    An endpoint with no health path (external providers, by default) is not probed; its
    ejections end when their time is up.
    """
    health = cfg.health
    loop = asyncio.get_running_loop()
    while True:
        probed = [e for e in endpoints if e.health_path is not None]
        results = await asyncio.gather(
            *(
                probe(e.host, e.port, e.health_path, health.timeout, e.ssl, e.server_hostname)
                for e in probed
            )
        )
        now = loop.time()
        for endpoint, ok in zip(probed, results):
            endpoint.probed(ok, now)
        for endpoint in endpoints:
            if endpoint.health_path is None and endpoint.health.ejection_due(now):
                endpoint.probed(True, now)
        await asyncio.sleep(health.interval)
