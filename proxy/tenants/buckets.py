"""Rate limits as GCRA buckets: one number per limit, so a bucket fits one shared int64 cell.

How this works. The generic cell rate algorithm (ATM's GCRA; what Redis's redis-cell and
many gateways use) is a token bucket kept as a single time: the *theoretical arrival time*
``tat`` at which the bucket would be full again. A limit of ``rate`` units a second with room
for ``capacity`` units at once has an emission interval ``T = 1/rate`` and a tolerance
``tau = capacity * T``. A request costing ``n`` units at ``now`` is admitted when
``max(tat, now) + n*T - now <= tau``, and then ``tat`` moves to that sum. Everything a client
is told follows from the same numbers:

- remaining: ``floor((tau - (tat - now)) / T)`` units could be spent now;
- reset: ``tat - now``, until the bucket is full again;
- retry after (refused): ``max(tat, now) + n*T - tau - now``, exactly when the same request
  would pass if nobody else spent in between. It is honest by construction, and tested so.

A charge made after the fact (tokens corrected from the response's usage) moves ``tat`` by
``n*T``, a refund moves it back; a charge may overdraw the bucket (``tat - now > tau``), which
the next request then waits for. Times are integer microseconds of the monotonic clock, which
every process on the machine shares. Sans-IO: numbers in, numbers out.
"""

import math

US = 1_000_000  # microseconds a second


class Limit:
    """One limit's constants: ``rate`` units a second, ``capacity`` units at once."""

    __slots__ = ("rate", "capacity", "interval", "tolerance")

    def __init__(self, rate, capacity):
        if rate <= 0 or capacity < 1:
            raise ValueError("a limit needs a positive rate and a capacity of at least 1")
        self.rate = rate
        self.capacity = int(capacity)
        self.interval = US / rate  # us a unit
        self.tolerance = self.capacity * self.interval  # us

    def take(self, tat, now, cost):
        """Admit ``cost`` units at ``now`` (us) against the bucket ``tat`` (us). Returns
        (admitted, new tat, remaining units, reset us, retry-after us). A cost above the
        capacity is checked as the capacity (it could never pass otherwise) but charged whole."""
        start = tat if tat > now else now
        check = cost if cost <= self.capacity else self.capacity
        if start + check * self.interval - now > self.tolerance + 0.5:  # half a us: rounding
            wait = start + check * self.interval - self.tolerance - now
            return False, tat, self.remaining(tat, now), int(start - now), int(math.ceil(wait))
        new = int(round(start + cost * self.interval))
        return True, new, self.remaining(new, now), new - now if new > now else 0, 0

    def remaining(self, tat, now):
        """Whole units that could be spent at ``now``."""
        used = tat - now if tat > now else 0
        left = (self.tolerance - used) / self.interval
        if left <= 0:
            return 0
        return min(self.capacity, int(left + 1e-9))

    def charge(self, tat, now, units):
        """``tat`` after charging ``units`` more (negative: a refund) after admission. A refund
        never credits time before ``now``: an idle bucket is full, not fuller."""
        start = tat if tat > now else now
        if units >= 0:
            return int(round(start + units * self.interval))
        new = tat + units * self.interval
        return int(round(new if new > now else now))


def reset_text(us):
    """A reset time as OpenAI's headers write it: ``20ms``, ``1.5s``, ``6m0s``."""
    if us < US:
        return "%dms" % math.ceil(us / 1000)
    seconds = us / US
    if seconds < 60:
        return ("%.3f" % seconds).rstrip("0").rstrip(".") + "s"
    minutes = int(seconds // 60)
    return "%dm%ds" % (minutes, math.ceil(seconds - 60 * minutes))
