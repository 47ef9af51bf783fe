"""The I/O drivers beside the data path: active health checks (``check_forever``, feeding
``health.HealthState``) and load scrapes (``scrape_forever``, feeding ``load.Report``s).

Tasks of a worker, off the data path: plain asyncio streams (TLS for https endpoints), every
endpoint probed at once each interval; a health probe opens a connection of its own each time
(it checks that one can be opened), a load scrape reuses one kept-alive connection
(``Scraper``).
"""

import asyncio
import logging

from .load import SCRAPED, parse_metrics

log = logging.getLogger("fleetproxy.health")


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
    except Exception as exc:  # an odd answer or a bug of ours: this probe failed, the next one runs
        log.warning("health check of %s:%d raised %r", host, port, exc)
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
        try:
            await _check_once(endpoints, health, loop)
        except Exception:  # checks must outlive any one round: without them nobody comes back
            log.exception("health check round failed; the next one runs in %.1f s", health.interval)
        await asyncio.sleep(health.interval)


async def _check_once(endpoints, health, loop):
    now = loop.time()
    for endpoint in endpoints:
        endpoint.sync_health(now)  # drains and ejections other workers decided
    probed = [e for e in endpoints if e.health_path is not None]
    results = await asyncio.gather(
        *(probe(e.host, e.port, e.health_path, health.timeout, e.ssl, e.server_hostname) for e in probed)
    )
    now = loop.time()
    for endpoint, ok in zip(probed, results):
        endpoint.probed(ok, now)
    for endpoint in endpoints:
        if endpoint.health_path is None and endpoint.health.ejection_due(now):
            endpoint.probed(True, now)


class Scraper:
    """Load scrapes over one kept-alive connection per endpoint. A scrape runs every half
    second per endpoint while only streams flow; a fresh TCP connection each time (connect,
    accept, close, on both sides) cost the worker more than reading the answer. A connection
    that fails, or that the server closed while it sat idle, is dropped and the scrape tried
    once more on a new one; an endpoint that leaves the router loses its connection."""

    def __init__(self, limit=4 << 20):
        self.conns = {}  # endpoint -> (StreamReader, StreamWriter)
        self.limit = limit

    async def fetch(self, endpoint, path, timeout):
        """The body of ``GET path`` on ``endpoint`` if it answers 200 within ``timeout``
        seconds, else None."""
        conn = self.conns.pop(endpoint, None)
        try:
            async with asyncio.timeout(timeout):
                if conn is not None:
                    try:
                        return await self._get(endpoint, conn, path)
                    except (OSError, asyncio.IncompleteReadError):
                        pass  # closed while idle, most likely: once more, on a new connection
                conn = await asyncio.open_connection(
                    endpoint.host, endpoint.port, ssl=endpoint.ssl, server_hostname=endpoint.server_hostname)
                return await self._get(endpoint, conn, path)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return None
        except Exception as exc:
            log.warning("load scrape of %s:%d raised %r", endpoint.host, endpoint.port, exc)
            return None

    async def _get(self, endpoint, conn, path):
        """One request on ``conn``: kept for the next scrape only when its answer ended where
        its framing says and the server keeps it open; closed otherwise, errors included."""
        reader, writer = conn
        kept = False
        try:
            authority = endpoint.server_hostname or f"{endpoint.host}:{endpoint.port}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            fields = head.lower()
            if b"\r\ntransfer-encoding: chunked" in fields:
                body = await self._chunked(reader)
            else:
                at = fields.find(b"\r\ncontent-length:")
                if at < 0:
                    raise ValueError("a /metrics answer without a length")
                size = int(fields[at + 17:fields.index(b"\r\n", at + 2)])
                if size > self.limit:
                    raise ValueError(f"a /metrics answer of {size} bytes")
                body = await reader.readexactly(size)
            kept = head.startswith(b"HTTP/1.1 ") and b"\r\nconnection: close" not in fields
            return body if head[9:12] == b"200" else None
        finally:
            if kept:
                self.conns[endpoint] = conn
            else:
                writer.transport.abort()

    async def _chunked(self, reader):
        parts = []
        size = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            chunk = int(line.split(b";", 1)[0], 16)
            if chunk == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields
                return b"".join(parts)
            size += chunk
            if size > self.limit:
                raise ValueError(f"a /metrics answer past {self.limit} bytes")
            parts.append((await reader.readexactly(chunk + 2))[:-2])

    def keep_only(self, endpoints):
        """Close the connections of endpoints no longer in ``endpoints``."""
        for endpoint in [e for e in self.conns if e not in endpoints]:
            self.conns.pop(endpoint)[1].transport.abort()


async def scrape_forever(endpoints, cfg, clock):
    """Scrape ``/metrics`` of every vLLM endpoint whose last load report is older than
    ``cfg.load.scrape_interval`` (streams carry no in-band report), and record what it says.

    One worker of a group scrapes (the reports are shared); providers are never scraped."""
    load = cfg.load
    interval = load.scrape_interval
    # A busy inference server answers /metrics slowly; a report a second late still beats none.
    timeout = max(interval, cfg.health.timeout)
    scraper = Scraper()
    while True:
        try:
            await _scrape_once(endpoints, load, interval, timeout, clock, scraper)
        except Exception:
            log.exception("load scrape round failed; the next one runs in %.1f s", interval)
        await asyncio.sleep(interval)


async def _scrape_once(endpoints, load, interval, timeout, clock, scraper):
    now = clock()
    # ``endpoints`` is the router's own list: discovery adds and removes members in it.
    scraper.keep_only(endpoints)
    due = [e for e in endpoints if not e.provider and _stale(e.current_report(), now, interval)]
    if due:
        bodies = await asyncio.gather(*(scraper.fetch(e, load.metrics_path, timeout) for e in due))
        now = clock()
        for endpoint, body in zip(due, bodies):
            fields = parse_metrics(body) if body else None
            if fields is not None:
                endpoint.observe(fields[0], fields[1], fields[2], SCRAPED, now)


def _stale(report, now, interval):
    return report is None or now - report.at >= interval
