"""Endpoint health, sans-IO: active-check verdicts, passive outlier ejection, drain. Who may
take traffic.

How this works.
- ``HealthState`` holds counters and deadlines fed with results and a clock, and answers whether
  the endpoint is *eligible* (up, not ejected, not drained). Nothing here does I/O; the prober
  (``prober.py``) and the data path feed it, and tests drive it with plain numbers.
- Active checks: ``GET <path>`` every ``interval``; ``unhealthy_threshold`` failures in a row
  take an up backend down, ``healthy_threshold`` passes bring it back. Backends start up
  (optimistic), so a fresh proxy serves at once.
- Passive outlier ejection (Envoy's vocabulary): ``consecutive_failures`` real requests in a
  row that failed (connect error, reset, 502/503/504, timeout) eject the backend for
  ``base_ejection x 2^(n-1)`` seconds (n = ejections so far, capped at ``max_ejection``). When
  that time is up the next active probe decides: pass, and it rejoins; fail, and it stays out.
  The multiplier decays: a backend that stayed in for ``max_ejection`` starts again at 1. A
  cluster never ejects more than ``max_ejected_percent`` of its endpoints (``may_eject``).
- Which answers count as failures: connect errors, resets, timeouts and 502/503/504
  (``FAILURE_STATUSES``); any other answer below 500 ends the failure streak.
"""

FAILURE_STATUSES = frozenset((502, 503, 504))


class HealthState:
    __slots__ = ("up", "passes", "fails", "ejected_until", "ejections", "returned_at", "drained", "failures")

    def __init__(self):
        self.up = True  # active-check verdict; optimistic until the first checks say otherwise
        self.passes = 0  # consecutive passed probes while down
        self.fails = 0  # consecutive failed probes while up
        self.ejected_until = None  # monotonic time the ejection may end; None = not ejected
        self.ejections = 0  # ejections in a row (the back-off multiplier)
        self.returned_at = 0.0  # when the last ejection ended
        self.drained = False  # taken out by the operator (admin API)
        self.failures = 0  # real requests failed in a row (outlier detection)

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

    def request_failed(self, now, outlier, may_eject):
        """A real request failed. Returns the ejection's length in seconds when this failure
        ejects the endpoint, else None. ``may_eject()`` says whether the cluster can spare it."""
        failures = self.failures + 1
        self.failures = failures
        limit = outlier.consecutive_failures
        if limit and failures >= limit and self.ejected_until is None and may_eject():
            self.failures = 0
            return self.eject(now, outlier.base_ejection, outlier.max_ejection)
        return None

    def answered(self, status, now, outlier, may_eject):
        """A response head arrived: a failure for 502/503/504, a success below 500."""
        if status in FAILURE_STATUSES:
            return self.request_failed(now, outlier, may_eject)
        if status < 500:
            self.failures = 0
        return None

    def served(self):
        """A real request got a success while the checks said down (traffic reaches a down
        endpoint only in panic): its answer outweighs the probes, it is up again at once.
        Returns True if eligibility changed."""
        before = self.eligible
        self.up = True
        self.fails = 0
        self.passes = 0
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


def may_eject(ejected, members, max_percent):
    """Whether one more of ``members`` endpoints may be ejected while ``ejected`` already are."""
    return ejected + 1 <= members * max_percent // 100
