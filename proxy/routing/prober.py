"""The I/O drivers beside the data path: active health checks (``check_forever``, feeding
``health.HealthState``) and load scrapes (``scrape_forever``, feeding ``load.Report``s).

Tasks of a worker, off the data path: every endpoint probed at once each interval, health
checks and load scrapes each over a kept-alive connection per endpoint (``fetch.Fetcher``,
TLS for https endpoints).
"""

import asyncio
import logging

from ..periodic import Pace
from .fetch import Fetcher
from .load import SCRAPED, parse_metrics

log = logging.getLogger("fleetproxy.health")


async def probe(fetcher, endpoint, path, timeout):
    """True if ``endpoint`` answers ``GET path`` with a 2xx within ``timeout`` seconds."""
    answer = await fetcher.get(endpoint, path, timeout)
    return answer is not None and 200 <= answer[0] < 300


async def check_forever(endpoints, cfg, router=None):
    """Probe ``endpoints`` (``router.endpoints``) every ``cfg.health.interval`` seconds, or
    ``cfg.health.no_traffic_interval`` while nothing is routed where that is set (``periodic.Pace``).

    An endpoint with no health path (external providers, by default) is not probed; its
    ejections end when their time is up.
    """
    health = cfg.health
    loop = asyncio.get_running_loop()
    fetcher = Fetcher(limit=0)
    pace = Pace(router, health.interval, health.no_traffic_interval or health.interval)
    try:
        while True:
            try:
                await _check_once(endpoints, health, loop, fetcher)
            except Exception:  # checks must outlive any one round: without them nobody comes back
                log.exception("health check round failed; the next one runs in %.1f s", health.interval)
            await pace.next()
    finally:
        fetcher.close()


async def _check_once(endpoints, health, loop, fetcher):
    now = loop.time()
    for endpoint in endpoints:
        endpoint.sync_health(now)  # drains and ejections other workers decided
    probed = [e for e in endpoints if e.health_path is not None]
    fetcher.keep_only(probed)
    results = await asyncio.gather(*(probe(fetcher, e, e.health_path, health.timeout) for e in probed))
    now = loop.time()
    for endpoint, ok in zip(probed, results):
        endpoint.probed(ok, now)
    for endpoint in endpoints:
        if endpoint.health_path is None and endpoint.health.ejection_due(now):
            endpoint.probed(True, now)


async def scrape_forever(endpoints, cfg, clock, router=None):
    """Scrape ``/metrics`` of every vLLM endpoint whose last load report is older than
    ``cfg.load.scrape_interval`` (streams carry no in-band report), and record what it says.

    One worker of a group scrapes (the reports are shared); providers are never scraped. While
    nothing is routed, rounds are ``cfg.no_traffic_interval`` apart (``periodic.Pace``): an idle
    proxy needs no load to route by, and each scrape makes vLLM render its metrics."""
    load = cfg.load
    interval = load.scrape_interval
    # A busy inference server answers /metrics slowly; a report a second late still beats none.
    timeout = max(interval, cfg.health.timeout)
    fetcher = Fetcher()
    pace = Pace(router, interval, cfg.no_traffic_interval)
    try:
        while True:
            try:
                await _scrape_once(endpoints, load, interval, timeout, clock, fetcher)
            except Exception:
                log.exception("load scrape round failed; the next one runs in %.1f s", interval)
            await pace.next()
    finally:
        fetcher.close()


async def _scrape_once(endpoints, load, interval, timeout, clock, fetcher):
    now = clock()
    # ``endpoints`` is the router's own list: discovery adds and removes members in it.
    fetcher.keep_only(endpoints)
    due = [e for e in endpoints if not e.provider and _stale(e.current_report(), now, interval, load.max_age)]
    if due:
        answers = await asyncio.gather(*(fetcher.get(e, load.metrics_path, timeout) for e in due))
        now = clock()
        for endpoint, answer in zip(due, answers):
            fields = parse_metrics(answer[1]) if answer is not None and answer[0] == 200 else None
            if fields is not None:
                endpoint.observe(fields[0], fields[1], fields[2], SCRAPED, now)


def _stale(report, now, interval, max_age):
    """Due for a scrape: no report, one older than ``interval``, or a running count older than
    half of ``max_age``. In-band reports keep the rest fresh, but only a scrape has that count
    (Endpoint.observe carries it on until max_age), so a busy endpoint is scraped that often."""
    if report is None or now - report.at >= interval:
        return True
    return report.running_at is None or now - report.running_at >= max(interval, max_age / 2)
