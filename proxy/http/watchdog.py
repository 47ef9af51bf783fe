"""One timer per worker for every relay waiting on its upstream (see relay.py, the watchdog)."""


class Watchdog:
    """The worker's one timer for every relay waiting on its upstream: while any is watched,
    it runs each one's ``_watch`` once per ``tick``. A relay counts its ticks from -1, so the
    partial tick it joined in never counts: a timeout fires between its limit and one tick more
    (a quarter of it, Context.tick), never before."""

    __slots__ = ("loop", "tick", "watched", "timer")

    def __init__(self, loop, tick):
        self.loop = loop
        self.tick = tick
        self.watched = set()
        self.timer = None

    def add(self, relay):
        self.watched.add(relay)
        if self.timer is None:
            self.timer = self.loop.call_later(self.tick, self._run)

    def discard(self, relay):
        self.watched.discard(relay)

    def _run(self):
        self.timer = None
        watched = self.watched
        for relay in list(watched):  # a copy: a check may end exchanges, and so leave the set
            if relay in watched:
                relay._watch()
        if watched:
            self.timer = self.loop.call_later(self.tick, self._run)
