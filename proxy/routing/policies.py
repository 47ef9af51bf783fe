"""Balancing policies, sans-IO: ring snapshots, round robin, least request, consistent hashing
with bounded loads. Nothing here touches a socket, a clock or a loop; callers pass in what they
know.

How this works.
- A ``Snapshot`` is the immutable view of one cluster's *eligible* endpoints (healthy, not ejected,
  not drained): the members, a weighted round-robin schedule and the hash ring. Whoever changes
  eligibility builds a new Snapshot and swaps one reference; a lookup never sees a half-built
  ring and never takes a lock.
- Members are duck-typed: ``member.weight`` (int >= 1), ``member.label`` (str, stable across
  processes and restarts: it places the member's ring points), ``member.load()`` (requests in
  flight) and ``member.pressure(now)`` ((load, queueing) as vLLM reports it, see ``Bound``).
  Accounting lives with the member so it can move to shared memory without touching this
  module.
- The ring (consistent hashing, Karger et al.): each member owns ``vnodes x weight`` points
  hashed from its label; a key goes to the first point at or after its hash. Points depend only
  on the member's own label, so a member that comes or goes moves only its own keys (~1/N).
- Bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018): with a total load T in the cluster, a
  member may take a new request only while its load is below
  ``ceil(c x (T + 1) x weight / total_weight)``; a key whose successor is full walks on along
  the ring to the next member with room. Such a member always exists when c >= 1, and no member
  ever goes above ``ceil(c x average)`` because of a placement. Load is what the inference
  server reports, and a session is never moved below a floor or while vLLM does not queue
  (``Bound``): moving it throws its prefix cache away.
- ``least_request`` is the power of two choices (Mitzenmacher): two members drawn at random,
  the one with less load per unit of weight wins.
- Each pick takes ``exclude`` (members already tried by this request, or None) and ``limit``
  (the circuit breaker: a member at ``limit`` in flight takes nothing; 0 = no limit). A pick
  that finds nobody returns None; the caller falls back or answers 503.
"""

from bisect import bisect_left
from random import random
from zlib import crc32

_M32 = 0xFFFFFFFF
_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (policies.pxd)


def hash_bytes(data):
    """A 32-bit hash that is the same in every process and on every run (``hash()`` is
    salted per process, so workers would disagree). CRC-32 runs in C; one multiply by the
    golden ratio (Fibonacci hashing) makes the high bits, which place a key on the ring,
    depend on every bit of the CRC. About 0.1 us per key."""
    return (crc32(data) * 0x9E3779B1) & _M32


def ring_points(label, weight, vnodes):
    """The ring points of one member: they depend on nothing else, which is what bounds the
    disruption when membership changes."""
    base = label.encode()
    return [hash_bytes(b"%s#%d" % (base, i)) for i in range(weight * vnodes)]


class Snapshot:
    """Immutable routing state of one cluster: who is eligible, in which order, where on the ring."""

    __slots__ = ("members", "weights", "total_weight", "points", "owners", "schedule")

    def __init__(self, members, vnodes=160, points_of=None):
        members = tuple(members)
        labels = [m.label for m in members]
        if len(set(labels)) != len(labels):
            raise ValueError(f"member labels must be unique: {labels}")
        self.members = members
        self.weights = tuple(m.weight for m in members)
        if any(type(w) is not int or w < 1 for w in self.weights):
            raise ValueError(f"member weights must be integers >= 1: {self.weights}")
        self.total_weight = sum(self.weights)
        ring = []
        for index, member in enumerate(members):
            pts = points_of(member) if points_of is not None else ring_points(member.label, member.weight, vnodes)
            ring.extend((p, member.label, index) for p in pts)
        ring.sort()  # ties broken by label: the same ring whatever the members' order
        self.points = [p for p, _, _ in ring]
        self.owners = [i for _, _, i in ring]
        self.schedule = _smooth_schedule(self.weights)

    def __len__(self):
        return len(self.members)

    def stats(self):
        n = len(self.members)
        return {"members": n, "ring_points": len(self.points), "total_weight": self.total_weight}


def _smooth_schedule(weights):
    """nginx's smooth weighted round robin, unrolled once: a member of weight w appears w times
    per cycle, spread out rather than in a burst."""
    n = len(weights)
    total = sum(weights)
    current = [0] * n
    order = []
    for _ in range(total):
        for i in range(n):
            current[i] += weights[i]
        best = max(range(n), key=lambda i: (current[i], -i))
        current[best] -= total
        order.append(best)
    return tuple(order)


class RoundRobin:
    """Members in turn, by weight. The position survives snapshot swaps (it is taken modulo)."""

    __slots__ = ("next",)

    def __init__(self):
        self.next = 0

    def pick(self, snap, exclude=None, limit=0):
        schedule = snap.schedule
        n = len(schedule)
        if not n:
            return None
        members = snap.members
        start = self.next
        for step in range(n):
            member = members[schedule[(start + step) % n]]
            if exclude is not None and member in exclude:
                continue
            if limit and member.load() >= limit:
                continue
            self.next = start + step + 1
            return member
        return None


def least_request(snap, exclude=None, limit=0, rand=random):
    """Power of two choices on load per unit of weight."""
    members = snap.members
    n = len(members)
    if n == 0:
        return None
    if n == 1 and exclude is None and not limit:
        return members[0]  # a cluster of one: no loads to compare
    if exclude is None and n > 1:
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1  # two distinct members
        a = members[i]
        b = members[j]
        la = a.load()
        lb = b.load()
        if lb * a.weight < la * b.weight:
            a, la = b, lb
        if not limit or la < limit:
            return a
    # Few members, some excluded, or both draws at the breaker: the least loaded with room.
    best = None
    best_load = 0
    for m in members:
        if exclude is not None and m in exclude:
            continue
        load = m.load()
        if limit and load >= limit:
            continue
        if best is None or load * best.weight < best_load * m.weight:
            best, best_load = m, load
    return best


class LeastRequest:
    __slots__ = ()

    def pick(self, snap, exclude=None, limit=0):
        return least_request(snap, exclude, limit)


def ring_order(snap, key_hash):
    """Member indices in the order a key walks the ring from its successor, each once."""
    points = snap.points
    npoints = len(points)
    order = []
    if not npoints:
        return order
    owners = snap.owners
    n = len(snap.members)
    seen = bytearray(n)  # compiled: a byte read and written per step, no int object
    i = successor(points, key_hash)
    for _ in range(npoints):
        if i == npoints:
            i = 0
        j = owners[i]
        i += 1
        if not seen[j]:
            seen[j] = 1
            order.append(j)
            if len(order) == n:
                break
    return order


def successor(points, key_hash):
    """``bisect_left(points, key_hash)``: where a key's successor is on the ring (``points``
    sorted, 32-bit). Compiled, a binary search over C integers, not a call of bisect's
    comparisons of int objects."""
    if not _COMPILED:
        return bisect_left(points, key_hash)
    key = key_hash
    lo = 0
    hi = len(points)
    while lo < hi:
        mid = (lo + hi) >> 1
        point = points[mid]
        if point < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


class Bound:
    """When an endpoint sheds a request to the next candidate: bounded loads on real load.

    ``load`` and ``queueing`` come from ``member.pressure(now)`` (see routing/load.py): the
    requests the endpoint holds as vLLM reports them (never fewer than this proxy's own in
    flight), and whether vLLM says new requests wait. An endpoint keeps a request that would
    lose its cache by moving (``sticky``) while it carries fewer than ``floor`` requests (light
    traffic never spills), or while vLLM says it does not queue (continuous batching takes it
    at once), or while its load is below ``ceil(c x (T + 1) x weight / total_weight)``, T the
    cluster's total load. Placement that loses nothing (``sticky`` False) obeys the last rule
    only, which keeps a cluster balanced. With c >= 1 some member always has room."""

    __slots__ = ("load_factor", "floor")

    def __init__(self, load_factor=1.25, floor=0):
        if not load_factor >= 1.0:
            raise ValueError("load_factor must be >= 1 (below 1 the cluster cannot hold its own load)")
        self.load_factor = load_factor
        self.floor = floor

    def scale(self, pressures, total_weight):
        total = 0
        for load, _ in pressures:
            total += load
        return self.load_factor * (total + 1) / total_weight

    def room(self, load, queueing, cap, sticky):
        if sticky and (load < self.floor or queueing is False):
            return True
        return load < cap


class ConsistentHash:
    """Ring lookup with bounded loads on real load (see ``Bound`` and the module docstring)."""

    __slots__ = ("bound",)

    def __init__(self, load_factor=1.25, floor=0):
        self.bound = Bound(load_factor, floor)

    @property
    def load_factor(self):
        return self.bound.load_factor

    def pick(self, snap, key_hash, exclude=None, limit=0, now=0.0):
        points = snap.points
        npoints = len(points)
        if not npoints:
            return None
        members = snap.members
        i = successor(points, key_hash)
        if i == npoints:
            i = 0
        bound = self.bound
        # The common case: the successor is idle or under the floor, not excluded, within the
        # breaker: no need to look at the others.
        member = members[snap.owners[i]]
        if exclude is None or member not in exclude:
            load, queueing = member.pressure(now)
            if (load == 0 or load < bound.floor or queueing is False) and (not limit or member.load() < limit):
                return member
        pressures = [m.pressure(now) for m in members]
        scale = bound.scale(pressures, snap.total_weight)
        weights = snap.weights
        for j in ring_order(snap, key_hash):
            member = members[j]
            if exclude is not None and member in exclude:
                continue
            load, queueing = pressures[j]
            if bound.room(load, queueing, _ceil(scale * weights[j]), True) and (not limit or member.load() < limit):
                return member
        return None


def _ceil(x):
    n = int(x)
    return n + 1 if n < x else n
