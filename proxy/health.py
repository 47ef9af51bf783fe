"""Backend health: active checks, passive outlier ejection, drain. Who may take traffic.

How this works.
- ``HealthState`` is the sans-IO part: counters and deadlines fed with results and a clock,
  answering whether the backend is *eligible* (up, not ejected, not drained). It never imports
  asyncio; tests drive it with plain numbers.
- Active checks: ``GET <path>`` every ``interval``; ``unhealthy_threshold`` failures in a row
  take an up backend down, ``healthy_threshold`` passes bring it back. Backends start up
  (optimistic), so a fresh proxy serves at once.
- Passive outlier ejection (Envoy's vocabulary): ``consecutive_failures`` real requests in a
  row that failed (connect error, reset, 502/503/504, timeout) eject the backend for
  ``base_ejection x 2^(n-1)`` seconds (n = ejections so far, capped at ``max_ejection``). When
  that time is up the next active probe decides: pass, and it rejoins; fail, and it stays out.
  The multiplier decays: a backend that stayed in for ``max_ejection`` starts again at 1. A
  pool never ejects more than ``max_ejected_percent`` of its backends (the caller checks).
- ``check_forever`` is the I/O driver, one task per worker, off the data path: plain asyncio
  streams, short connections of its own, TLS for https backends.
"""

import asyncio
import logging

log = logging.getLogger("fleetproxy.health")


class HealthState:
    __slots__ = ("up", "passes", "fails", "ejected_until", "ejections", "returned_at", "drained")

    def __init__(self):
        self.up = True  # active-check verdict; optimistic until the first checks say otherwise
        self.passes = 0  # consecutive passed probes while down
        self.fails = 0  # consecutive failed probes while up
        self.ejected_until = None  # monotonic time the ejection may end; None = not ejected
        self.ejections = 0  # ejections in a row (the back-off multiplier)
        self.returned_at = 0.0  # when the last ejection ended
        self.drained = False  # taken out by the operator (admin API)

    @property
    def eligible(self):
        return self.up and self.ejected_until is None and not self.drained

    def probed(self, ok, now, healthy_threshold, unhealthy_threshold):
        """One active check's result. Returns True if eligibility changed."""
        before = self.eligible
        if ok:
            self.fails = 0
            if not self.up:
                self.passes += 1
                if self.passes >= healthy_threshold:
                    self.up = True
                    self.passes = 0
            if self.ejected_until is not None and now >= self.ejected_until:
                self.ejected_until = None
                self.returned_at = now
        else:
            self.passes = 0
            if self.up:
                self.fails += 1
                if self.fails >= unhealthy_threshold:
                    self.up = False
                    self.fails = 0
        return self.eligible != before

    def eject(self, now, base, cap):
        """Take the backend out for a back-off that doubles on each repeat. Returns the
        ejection's length in seconds."""
        if self.ejections and now - self.returned_at >= cap:
            self.ejections = 0  # it behaved for a whole max_ejection: forgive the past
        self.ejections += 1
        seconds = min(cap, base * (2 ** (self.ejections - 1)))
        self.ejected_until = now + seconds
        return seconds

    def ejection_due(self, now):
        return self.ejected_until is not None and now >= self.ejected_until

    def state(self, now):
        out = {"up": self.up, "drained": self.drained, "ejected": self.ejected_until is not None, "ejections": self.ejections}
        if self.ejected_until is not None:
            out["ejected_for_s"] = round(max(0.0, self.ejected_until - now), 3)
        return out


async def probe(host, port, path, timeout, ssl=None, server_hostname=None):
    """True if the backend answers ``GET path`` with a 2xx within ``timeout`` seconds."""
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


async def check_forever(backends, cfg):
    """Probe ``backends`` (``router.backends``) every ``cfg.health.interval`` seconds.

    A backend with no health path (external providers, by default) is not probed; its
    ejections end when their time is up.
    """
    health = cfg.health
    loop = asyncio.get_running_loop()
    while True:
        now = loop.time()
        probed = [b for b in backends if b.health_path is not None]
        results = await asyncio.gather(
            *(
                probe(b.host, b.port, b.health_path, health.timeout, b.ssl, b.server_hostname)
                for b in probed
            )
        )
        now = loop.time()
        for backend, ok in zip(probed, results):
            backend.probed(ok, now)
        for backend in backends:
            if backend.health_path is None and backend.health.ejection_due(now):
                backend.probed(True, now)
        await asyncio.sleep(health.interval)
