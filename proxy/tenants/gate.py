"""The fair queue at admission, one per worker: holds requests while a model's backends are
saturated and lets them go in weighted fair order (the rules are ``fairqueue.py``'s).

When a request waits. After its tenant's limits admitted it and its route is known, before an
endpoint is picked (``Exchange.start``): it waits when the route already has requests waiting
here (no overtaking), or when vLLM reports requests waiting on every eligible endpoint of the
route (``Router.saturated``: the freshest load report of each, from shared memory, until one
has room). Otherwise it goes straight on: without saturation the gate costs a dict lookup and
a look at the first endpoint's report.

When a request leaves the queue (the release rule). Capacity frees in two ways, and both release:
- a request of that route that this worker placed finishes (any ending): one waiting request
  takes its place, so while the backends stay saturated this worker's in-flight count on the
  route holds steady and the order of admission is the fair one;
- every TICK, while requests wait: if the route is no longer saturated (vLLM's reported queue
  went down to zero somewhere), one request per endpoint that reports room; and if this worker
  has nothing in flight on the route (so no finish will come), the head goes regardless.
A request that waited ``fair_queue.max_wait`` gets a 503 with Retry-After, as does one the full
queue refuses or evicts (the largest tag goes: see ``fairqueue.py``). A request whose client
leaves while it waits is cancelled at once (``Exchange.finish``): nothing went upstream.
"""

import logging

from ..http.errors import Overloaded
from .fairqueue import FairQueue

ESTIMATE_BYTES = 4  # request body bytes per prompt token (tenants/admission.py's estimate too)

TICK = 0.05  # s between looks at saturated routes while requests wait
COMPLETION_GUESS = 256  # tokens assumed for a request that sets no max_tokens (cost in the queue)

log = logging.getLogger("fleetproxy.tenants")


class FairGate:
    __slots__ = ("loop", "clock", "router", "max_length", "max_wait", "queues", "waiting", "timer", "refused")

    def __init__(self, section, loop, router):
        self.loop = loop
        self.router = router
        self.clock = router.clock
        self.max_length = section.max_length
        self.max_wait = section.max_wait
        self.queues = {}  # route name -> (FairQueue, route)
        self.waiting = 0  # requests waiting over every route (the fast "nothing to do" test)
        self.timer = None
        self.refused = 0  # 503s given: full, evicted or waited too long
        router.gate = self  # its held requests keep the worker's background rounds going (Router.traffic)

    def queued(self):
        """{route name: requests waiting} (the metrics' fleetproxy_model_queued)."""
        return {name: len(q) for name, (q, _) in self.queues.items()}

    # -- admission ----------------------------------------------------------------------------

    def hold(self, ex, selection, body):
        """Queue ``ex`` (its prepared ``selection``, its request ``body``) when its route must
        wait: True when queued, False when it may go on now. Raises Overloaded (503) when the
        full queue refuses it."""
        route = selection.route
        pair = self.queues.get(route.name)
        if pair is None or not len(pair[0]):
            if not self.router.saturated(route, self.clock()):
                return False
            if pair is None:
                pair = self.queues[route.name] = (FairQueue(self.max_length, self.max_wait), route)
        queue = pair[0]
        tenant = ex.tenant.tenant
        now = self.clock()
        entry, evicted = queue.push(tenant.name, tenant.weight, cost_of(body), (ex, selection), now)
        if entry is None:
            self.refused += 1
            raise self._overloaded(queue, now, "is full")
        ex.queued = entry
        self.waiting += 1
        if evicted is not None:
            self._refuse(evicted[0], queue, now, "is full")
        if self.timer is None:
            self.timer = self.loop.call_later(TICK, self._tick)
        return True

    def cancel(self, ex):
        """``ex`` ends while it waits (its client left): out of the queue, never sent."""
        entry = ex.queued
        ex.queued = None
        pair = self.queues.get(entry.item[1].route.name)
        if pair is not None and entry.alive:
            pair[0].cancel(entry)
            self.waiting -= 1

    def finished(self, route):
        """A request this worker placed on ``route`` ended: one waiting request takes its place."""
        pair = self.queues.get(route.name)
        if pair is not None and len(pair[0]):
            self._release(pair[0], 1)

    # -- inside -------------------------------------------------------------------------------

    def _release(self, queue, n):
        now = self.clock()
        for _ in range(n):
            item = queue.pop(now)
            if item is None:
                return
            self.waiting -= 1
            ex, selection = item
            ex.queued = None
            # Not from inside the caller's own finish: the released request starts on a clean stack.
            self.loop.call_soon(ex.dequeued, selection)

    def _refuse(self, ex, queue, now, why):
        self.refused += 1
        self.waiting -= 1
        ex.queued = None
        ex.queue_refused(self._overloaded(queue, now, why))

    def _overloaded(self, queue, now, why):
        err = Overloaded(f"the fair queue of this model {why}: its backends are saturated")
        err.retry_after = queue.retry_after(now)
        return err

    def _tick(self):
        self.timer = None
        now = self.clock()
        for name, (queue, route) in list(self.queues.items()):
            for ex, _ in queue.expire(now):
                self._refuse(ex, queue, now, f"held this request {self.max_wait:g} s")
            if not len(queue):
                continue
            room = self._room(route, now)
            if room:
                self._release(queue, room)
        if self.waiting:
            self.timer = self.loop.call_later(TICK, self._tick)

    def _room(self, route, now):
        """How many to release at a tick: one per endpoint with room, or one when this worker
        has nothing in flight on the route (no finish would release it)."""
        room = 0
        busy = False
        for cluster in route.clusters:
            for endpoint in cluster.snapshot.members:
                if not endpoint.queueing(now):
                    room += 1
                busy = busy or endpoint.in_flight > 0
        return room or (0 if busy else 1)

    def close(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


_MAX_TOKENS = (b'"max_completion_tokens"', b'"max_tokens"')


def cost_of(body):
    """A request's tokens as the fair queue weighs them: the prompt at ESTIMATE_BYTES a token
    plus the completion it asks for (``max_tokens``, else COMPLETION_GUESS). Two byte searches,
    no JSON decode: a wrong guess only skews one request's place in the queue."""
    completion = COMPLETION_GUESS
    for name in _MAX_TOKENS:
        at = body.find(name)
        if at >= 0:
            at = body.find(b":", at + len(name))
            end = at + 1
            while end < len(body) and body[end] in b" \t\r\n":
                end += 1
            start = end
            while end < len(body) and 48 <= body[end] <= 57:
                end += 1
            if end > start:
                completion = int(body[start:end])
            break
    return len(body) // ESTIMATE_BYTES + completion
