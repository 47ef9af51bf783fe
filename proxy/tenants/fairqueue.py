"""Weighted fair queuing across tenants, by tokens. Sans-IO: plain numbers in, items out.

Why. When every backend of a model already queues (vLLM reports requests waiting), sending
more only lengthens vLLM's own queue, which is first come, first served: a tenant that sends
ten times as many requests gets ten times the share. The proxy holds those requests instead,
in one ``FairQueue`` per route, and lets them go in an order where each tenant's share of the
tokens admitted follows its configured ``weight``, whatever its request rate.

How this works (self-clocked fair queuing, Golestani 1994). Each request gets a virtual
finish tag ``F = max(V, last F of its tenant) + cost / weight``, where ``cost`` is its
estimated tokens and ``V`` the finish tag of the request released last. Requests go out in
increasing ``F``. A backlogged tenant's tags advance by cost/weight per request, so over any
stretch where two tenants both wait, the tokens released for each are in the ratio of their
weights; a tenant that was idle starts from ``V``, with no credit saved up. Within a tenant,
tags only grow: its requests leave in the order they came.

Bounds. At most ``max_length`` requests wait: when full, the one with the largest tag goes
(the newcomer itself, or the last-queued request of the tenant that is furthest ahead of its
share), so a noisy tenant cannot fill the queue and shut a quiet one out. Each request waits
at most ``max_wait`` seconds (``expire``). A request whose client left is ``cancel``ed.
Removal is lazy (an entry is marked dead, skipped when reached), so every operation is
O(log n) amortised, and O(tenants) only when the queue is full.

``retry_after`` estimates, for a refused request, when the queue ahead of it will have
drained: its length over the release rate measured recently (an EWMA of releases per second).
It is an estimate, not a promise: releases follow backend capacity, which no number here knows.
"""

import heapq
import math
from collections import deque

RATE_HALF_LIFE = 5.0  # s: how fast the measured release rate forgets


class Entry:
    __slots__ = ("finish", "seq", "start", "tenant", "item", "deadline", "alive")

    def __init__(self, finish, seq, start, tenant, item, deadline):
        self.finish = finish
        self.seq = seq
        self.start = start  # the tag its tenant had before it (rolled back to if it is evicted)
        self.tenant = tenant
        self.item = item
        self.deadline = deadline
        self.alive = True

    def __lt__(self, other):
        return self.finish < other.finish or (self.finish == other.finish and self.seq < other.seq)


class FairQueue:
    def __init__(self, max_length, max_wait):
        if max_length < 1 or max_wait <= 0:
            raise ValueError("a fair queue needs room for one request and a positive wait")
        self.max_length = max_length
        self.max_wait = max_wait
        self.heap = []  # Entry, smallest finish tag first (dead ones skipped)
        self.arrivals = deque()  # Entry in arrival order: deadlines in order too (expire)
        self.tenants = {}  # tenant -> deque of its entries (for eviction from the tail)
        self.last = {}  # tenant -> the finish tag of its last queued request
        self.vtime = 0.0
        self.seq = 0
        self.length = 0
        self.rate = 0.0  # releases a second, EWMA
        self.rate_at = None  # when the rate was last updated

    def __len__(self):
        return self.length

    def push(self, tenant, weight, cost, item, now):
        """Queue ``item`` for ``tenant``. Returns (entry or None when refused, an evicted
        item or None): a full queue refuses the newcomer, or evicts the request with the
        largest tag when the newcomer's is smaller."""
        start = self.last.get(tenant, 0.0)
        if start < self.vtime:
            start = self.vtime
        finish = start + max(cost, 1) / weight
        evicted = None
        if self.length >= self.max_length:
            victim = self._largest()
            if victim is None or victim.finish <= finish:
                return None, None
            self._evict(victim)
            evicted = victim.item
            start = max(self.last.get(tenant, 0.0), self.vtime)  # our own tail may have left
            finish = start + max(cost, 1) / weight
        self.seq += 1
        entry = Entry(finish, self.seq, start, tenant, item, now + self.max_wait)
        self.last[tenant] = finish
        heapq.heappush(self.heap, entry)
        self.arrivals.append(entry)
        queue = self.tenants.get(tenant)
        if queue is None:
            queue = self.tenants[tenant] = deque()
        queue.append(entry)
        self.length += 1
        return entry, evicted

    def pop(self, now):
        """The next item to release (smallest tag), or None when empty."""
        heap = self.heap
        while heap:
            entry = heapq.heappop(heap)
            if entry.alive:
                self.vtime = entry.finish
                self._remove(entry)  # after: an empty queue starts over at 0
                self._count_release(now)
                return entry.item
        return None

    def cancel(self, entry):
        """The request of ``entry`` left (its client is gone): it will not be released."""
        if entry.alive:
            self._remove(entry)

    def expire(self, now):
        """Items that waited ``max_wait``: removed, returned in arrival order."""
        out = []
        arrivals = self.arrivals
        while arrivals and (not arrivals[0].alive or arrivals[0].deadline <= now):
            entry = arrivals.popleft()
            if entry.alive:
                self._remove(entry)
                out.append(entry.item)
        return out

    def retry_after(self, now):
        """Whole seconds until the queue as it is now would have drained (at least 1)."""
        rate = self._decayed(now)
        if rate <= 0.0:
            return math.ceil(self.max_wait)
        return max(1, math.ceil(self.length / rate))

    # -- inside --

    def _remove(self, entry):
        entry.alive = False
        self.length -= 1
        queue = self.tenants[entry.tenant]
        while queue and not queue[0].alive:
            queue.popleft()
        while queue and not queue[-1].alive:
            queue.pop()
        if not queue:
            del self.tenants[entry.tenant]
        if self.length == 0:  # nothing waits: tags mean nothing any more, start over
            self.heap.clear()
            self.arrivals.clear()
            self.last.clear()
            self.vtime = 0.0

    def _largest(self):
        best = None
        for queue in self.tenants.values():
            entry = queue[-1]  # alive: _remove trims dead tails
            if best is None or best < entry:
                best = entry
        return best

    def _evict(self, entry):
        tenant = entry.tenant
        self._remove(entry)
        if tenant in self.tenants or self.length:
            self.last[tenant] = entry.start  # its share goes back to where it was before it

    def _decayed(self, now):
        if self.rate_at is None:
            return 0.0
        return self.rate * 0.5 ** ((now - self.rate_at) / RATE_HALF_LIFE)

    def _count_release(self, now):
        """One more release at ``now``: the rate an EWMA of 1/interval, weighted by time."""
        if self.rate_at is None:
            self.rate, self.rate_at = 0.0, now
        dt = now - self.rate_at
        decay = 0.5 ** (dt / RATE_HALF_LIFE)
        # An exponentially decaying count of releases, normalised by the window it spans.
        self.rate = self.rate * decay + math.log(2) / RATE_HALF_LIFE
        self.rate_at = now
