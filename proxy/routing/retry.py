"""Retry decisions, sans-IO: which failures may be retried, and the budget that keeps
retries from becoming a storm. The clock is passed in.

A request is retried only before any response byte reached the client (the caller checks), on
another endpoint, while it has attempts left (``RetryPolicy.attempts``, the first included):
- a connect failure, or a reset before the response began (not a timeout: a backend silent
  past first_byte may still be working on the request, and a second one would double the load);
- a response status the config lists (429/502/503 by default);
- and only while the budget allows.
- and only when a second copy can do no harm (``RetryPolicy.may_resend``): nothing of the
  request reached a backend (the connect failed, the pool refused), or its method is
  idempotent, or it is a POST to a path the config lists as stateless (``resend_paths``: vLLM's
  generation and embedding calls keep nothing, so a second copy costs compute, never a second
  effect). Anything else written to a connection that then failed may have acted there.
A pooled connection the backend closed just as it was reused usually never saw the request:
it is sent once more on a fresh connection to the same endpoint under the same rule, and that
retry spends the budget like any other.
"""

# RFC 9110 9.2.2.
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))


class RetryPolicy:
    """The config's retry section, ready for the data path."""

    __slots__ = ("attempts", "statuses", "budget", "resend_paths")

    def __init__(self, cfg, now=0.0):
        self.attempts = cfg.attempts
        self.statuses = frozenset(cfg.on_status)
        self.budget = RetryBudget(cfg.budget, cfg.min_per_second, now=now)
        self.resend_paths = frozenset(p.encode() for p in cfg.resend_paths)

    def may_resend(self, method, target, reached):
        """Whether a failed request may be sent again. ``reached``: it was written to a
        connection, so a backend may have received it."""
        if not reached or method in IDEMPOTENT:
            return True
        return method == b"POST" and target.partition(b"?")[0] in self.resend_paths

    def stats(self):
        return {**self.budget.stats(), "attempts": self.attempts}


class RetryBudget:
    """At most ``ratio`` retries per request over time, plus ``min_per_second`` retries a second
    so a quiet service can still retry; an outage cannot become a retry storm.

    Two token buckets: every first attempt deposits ``ratio`` tokens (capped at ``burst``), and
    time refills a floor of ``min_per_second`` tokens a second (capped at one second's worth).
    A retry spends one token, earned ones first.
    """

    __slots__ = ("ratio", "min_rate", "burst", "tokens", "floor", "last", "requests", "retries", "refused")

    def __init__(self, ratio=0.2, min_per_second=5.0, burst=10.0, now=0.0):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError("retry budget ratio must be within [0, 1]")
        self.ratio = ratio
        self.min_rate = min_per_second
        self.burst = burst
        self.tokens = 0.0
        self.floor = min_per_second
        self.last = now
        self.requests = 0
        self.retries = 0
        self.refused = 0

    def on_request(self):
        self.requests += 1
        tokens = self.tokens + self.ratio
        self.tokens = tokens if tokens < self.burst else self.burst

    def try_retry(self, now):
        if self.min_rate:
            elapsed = now - self.last
            if elapsed > 0:
                self.floor = min(self.min_rate, self.floor + elapsed * self.min_rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
        elif self.floor >= 1.0:
            self.floor -= 1.0
        else:
            self.refused += 1
            return False
        self.retries += 1
        return True

    def stats(self):
        return {
            "requests": self.requests,
            "retries": self.retries,
            "refused": self.refused,
            "ratio": self.ratio,
            "tokens": round(self.tokens, 3),
        }
