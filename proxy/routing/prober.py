"""The I/O drivers beside the data path: active health checks (``check_forever``, feeding
``health.HealthState``) and load scrapes (``scrape_forever``, feeding ``load.Report``s).

Tasks of a worker, off the data path: plain asyncio streams, a short connection of their own per
probe (TLS for https endpoints), every endpoint probed at once each interval.
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


async def fetch(host, port, path, timeout, ssl=None, server_hostname=None, limit=4 << 20):
    """The body of ``GET path`` if it answers 200 within ``timeout`` seconds, else None."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname)
            authority = server_hostname or f"{host}:{port}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
            # To the close: vLLM's /metrics (tens of KiB) may come in several reads, and one
            # read of it would lose the families past the first.
            parts = []
            size = 0
            while True:
                part = await reader.read(65536)
                if not part:
                    break
                size += len(part)
                if size > limit:
                    log.warning("load scrape of %s:%d: the answer passed %d bytes; ignored", host, port, limit)
                    return None
                parts.append(part)
            raw = b"".join(parts)
    except (OSError, TimeoutError):
        return None
    except Exception as exc:
        log.warning("load scrape of %s:%d raised %r", host, port, exc)
        return None
    finally:
        if writer is not None:
            writer.transport.abort()
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or head[9:12] != b"200":
        return None
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return body


def _dechunk(body):
    out = []
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return None
        if not sep or size == 0:
            break
        out.append(rest[:size])
        body = rest[size + 2:]
    return b"".join(out)


async def scrape_forever(endpoints, cfg, clock):
    """Scrape ``/metrics`` of every vLLM endpoint whose last load report is older than
    ``cfg.load.scrape_interval`` (streams carry no in-band report), and record what it says.

    One worker of a group scrapes (the reports are shared); providers are never scraped."""
    load = cfg.load
    interval = load.scrape_interval
    # A busy inference server answers /metrics slowly; a report a second late still beats none.
    timeout = max(interval, cfg.health.timeout)
    while True:
        try:
            await _scrape_once(endpoints, load, interval, timeout, clock)
        except Exception:
            log.exception("load scrape round failed; the next one runs in %.1f s", interval)
        await asyncio.sleep(interval)


async def _scrape_once(endpoints, load, interval, timeout, clock):
    now = clock()
    # ``endpoints`` is the router's own list: discovery adds and removes members in it.
    due = [e for e in endpoints if not e.provider and _stale(e.current_report(), now, interval)]
    if due:
        bodies = await asyncio.gather(
            *(fetch(e.host, e.port, load.metrics_path, timeout, e.ssl, e.server_hostname) for e in due)
        )
        now = clock()
        for endpoint, body in zip(due, bodies):
            fields = parse_metrics(body) if body else None
            if fields is not None:
                endpoint.observe(fields[0], fields[1], fields[2], SCRAPED, now)


def _stale(report, now, interval):
    return report is None or now - report.at >= interval
