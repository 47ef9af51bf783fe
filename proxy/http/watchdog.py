"""One timer per worker for every relay waiting on its upstream (see relay.py, the watchdog)."""


class Watchdog:
    """The worker's one timer for every relay waiting on its upstream: while any is watched,
    it runs each one's ``_watch`` once per ``tick``. A relay counts its ticks from -1, so the
    partial tick it joined in never counts: a timeout fires between its limit and one tick more
    (a quarter of it, Context.tick), never before.

    Every request joins and leaves once, so the watched relays are the first ``count`` slots
    of a list in which each relay knows its place (``Relay.watch_at``, -1 when not watched):
    joining takes the next slot, leaving moves the last one into the place left. The slots
    stay allocated (a list that grows and shrinks by one reallocates); a set costs ~4x this
    in hashing and probing."""

    __slots__ = ("loop", "tick", "watched", "count", "timer")

    def __init__(self, loop, tick):
        self.loop = loop
        self.tick = tick
        self.watched = []  # slots; the first ``count`` hold the relays watched
        self.count = 0
        self.timer = None

    def add(self, relay):
        if relay.watch_at < 0:
            at = self.count
            if at < len(self.watched):
                self.watched[at] = relay
            else:
                self.watched.append(relay)
            relay.watch_at = at
            self.count = at + 1
        if self.timer is None:
            self.timer = self.loop.call_later(self.tick, self._run)

    def discard(self, relay):
        at = relay.watch_at
        if at < 0:
            return
        relay.watch_at = -1
        self.count -= 1
        last = self.watched[self.count]
        self.watched[self.count] = None
        if last is not relay:
            self.watched[at] = last
            last.watch_at = at

    def relays(self):
        """The relays watched now."""
        return self.watched[:self.count]

    def _run(self):
        self.timer = None
        for relay in self.relays():  # a copy: a check may end exchanges, and so leave
            if relay.watch_at >= 0:
                relay._watch()
        if self.count:
            self.timer = self.loop.call_later(self.tick, self._run)
