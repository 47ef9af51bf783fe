"""The cache_aware policy: send a prompt where its prefix is already cached, without hot spots.

How this works.
- The prompt is cut into blocks of ``block_chars`` bytes, in the order vLLM prefills them
  (``fields.prompt_of``), and each full block gets a chained hash: hash i identifies the whole
  prefix up to the end of block i, as vLLM's own block hashes do (``_speedups.block_hashes``).
- A ``PrefixTable`` remembers, per endpoint, the block hashes it was sent recently: a fixed-size,
  set-associative table in memory every worker shares, aged out after ``ttl``, so memory never
  grows with traffic and every worker knows what any worker placed.
- A chat request also carries its conversation key: the hash of its opening (the messages up
  to the end of the first user message), recorded beside the blocks. A later turn of a
  conversation whose key an endpoint holds is *sticky* there: it leaves only when that endpoint
  sheds by vLLM's own signal (``policies.Bound``: above a floor, vLLM queueing, and above its
  share of the cluster's load), because moving it means prefilling the whole conversation
  again elsewhere.
- Every other request (a first turn, completions, a conversation no endpoint remembers) is
  *placed*: candidates in order of the longest cached prefix, ties broken by walking the hash
  ring from the first block's home (so sessions that share a system prompt meet, and every
  proxy replica walks the same order). The first candidate whose share of the requests placed
  recently (decayed over ``WINDOW``) stays under ``spread`` x its fair share takes it; a prompt
  nobody holds goes to the first under its fair share, which spreads new system prompts evenly.
  Shares over time, not momentary in-flight counts: with a few sessions per backend the
  momentary counts swing with every session that starts or ends, and chasing them would split
  conversation groups for nothing, while a share says when a prompt is too hot for one backend
  (it then gets a second home: prefilled once more, never piled on one). No placement goes to
  an endpoint that sheds by vLLM's signal.
- Wherever the request goes, its blocks and conversation key are recorded there: the next turn
  follows it.
- Prompts shorter than one block have nothing to cache: least request decides.

Replicas. Several proxies do not share the table. They agree on placement while their views of
load agree (the load is vLLM's own report, the same for all of them, and the ring is the same),
and a later turn that reaches a replica that did not place the conversation is placed by its
longest cached prefix as that replica knows it, falling back to the ring home of its first block.
"""

from math import exp

from _speedups import prompt_hashes

from .fields import prompt_of
from .policies import Bound, _ceil, least_request, ring_order

_M32 = 0xFFFFFFFF
_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (cache_aware.pxd)
WINDOW = 60.0  # s: how long the recent-request counts that balance placement remember
OVER = 1.4  # x its fair share of recent requests: an endpoint too busy to keep a group
SLACK = 2.0  # requests above that it may carry first (shares are noisy at the start)
PRIOR = 1.0  # conversations per endpoint assumed already spread evenly, when judging a prompt hot
OVER_PRIOR = 4.0  # requests per endpoint likewise, when judging an endpoint over its share
MAX_GROUPS = 4096  # first blocks whose recent traffic is remembered
# kept/shed: a later turn stayed with its conversation or left it (vLLM queued there); cached: a
# new conversation went where its prefix is; hot: its prefix was too hot for one endpoint; over:
# that endpoint was well over its share; new: nobody held the prefix; short: no full block.
DECISIONS = ("kept", "shed", "cached", "hot", "over", "new", "short")
KEPT, SHED, CACHED, HOT, OVER_SHARE, NEW, SHORT = range(len(DECISIONS))  # their places in CacheAware.counts


class CacheAware:
    __slots__ = (
        "bound", "spread", "block", "depth", "table", "ttl_ms", "recent", "window", "groups", "placed",
        "conversations", "counts",
    )

    def __init__(self, table, block_chars=256, depth=128, ttl=600.0, load_factor=1.25, floor=8, spread=1.1,
                 endpoints=None, window=WINDOW):
        self.bound = Bound(load_factor, floor)
        self.spread = spread
        self.window = window
        # Per endpoint index: requests placed there recently (a Cell, made on first use).
        # This worker's own: each worker balances what it sends, and so the sum is balanced.
        self.recent = []
        # Per first block (a system prompt, typically): conversations placed recently, decayed,
        # so a prompt too hot for one endpoint is seen as such. Bounded: see _Recent.
        self.groups = _Recent(MAX_GROUPS)
        self.placed = Cell()  # conversations placed recently (decayed), the groups' total
        self.conversations = []  # by endpoint index: conversations placed there recently
        # How requests were routed, for /admin/backends: a conversation kept or shed, and why
        # others went where they went.
        self.counts = [0] * len(DECISIONS)  # by decision: a list index per request, not a dict's key
        self.block = block_chars
        self.depth = depth
        self.table = table  # _speedups.PrefixTable, columns in Endpoint.index order
        self.ttl_ms = int(ttl * 1000)

    @property
    def decisions(self):
        """How many requests each decision routed (``DECISIONS``), for /admin/backends."""
        return dict(zip(DECISIONS, self.counts))

    def blocks(self, fields):
        """(block hashes, conversation key or 0, later turn) of a request's fields, or None."""
        prompt = prompt_of(fields, self.block * self.depth, self.block)
        if prompt is None:
            return None
        hashes, key = prompt_hashes(prompt.text, self.block, self.depth, prompt.opening)
        if not hashes:
            return None
        return hashes, key, prompt.later

    def pick(self, snap, blocks, exclude=None, limit=0, now=0.0):
        """An endpoint for a request whose ``blocks`` are as ``blocks()`` returned (None: no
        cacheable prompt), or None when every member is excluded or at ``limit``.

        Runs for nearly every real chat (a prompt of one block or more), so it is written for
        the compiled build: lists of small ints walked by C indices, counts in C doubles, no
        closure, no sort with a key function unless many members hold the prompt, and no call
        by name that the build can make a C call."""
        if blocks is None:
            self.counts[SHORT] += 1
            return least_request(snap, exclude, limit)
        members = snap.members
        n = len(members)
        if not n:
            return None
        hashes, key, later = blocks
        now_ms = int(now * 1000)
        oldest = now_ms - self.ttl_ms
        table = self.table
        matches = table.matches(hashes, oldest)  # by endpoint index
        indices = [m.index for m in members]
        cached = [matches[indices[j]] for j in range(n)]  # by member: leading blocks held there
        first = hashes[0]  # the first block's hash: where on the ring the walk starts, and the group
        ranked = _ranked(ring_order(snap, (first >> 31) & _M32), cached)
        pressures = [m.pressure(now) for m in members]
        bound = self.bound
        weights = snap.weights
        scale = bound.scale(pressures, snap.total_weight)

        chosen = -1
        if later and key:
            # A later turn: its conversation's endpoint first, as long as it need not shed.
            holders = table.matches((key,), oldest)
            for j in ranked:
                if holders[indices[j]] and _usable(members[j], exclude, limit):
                    if _has_room(bound, pressures[j], scale, weights[j]):
                        chosen = j
                        self.counts[KEPT] += 1
                    else:
                        self.counts[SHED] += 1
                    break
        if chosen < 0:
            chosen = self._place(members, indices, ranked, cached, first, bound, scale, pressures, exclude, limit,
                                 now, snap)
            if chosen < 0:
                return None
        index = indices[chosen]
        cell = _cell(self.recent, index)
        cell.value += 1.0
        table.record(index, hashes, now_ms)
        if key:
            table.record(index, (key,), now_ms)
        return members[chosen]

    def _place(self, members, indices, ranked, cached, group, bound, scale, pressures, exclude, limit, now, snap):
        """Where a request goes that no conversation claims (see the module docstring): the
        member's position in ``members``, or -1."""
        group_cell = self.groups[group]
        group_cell.value += 1.0
        self.placed.value += 1.0
        conversations = self.conversations
        recent = self.recent
        window = self.window
        n = len(members)
        total = 0.0
        for j in range(n):
            total += aged(_cell(recent, indices[j]), now, window)
        weights = snap.weights
        total_weight = snap.total_weight
        fair = total / total_weight  # recent requests per unit of weight
        if exclude is None and not limit:
            usable = ranked  # (what the filter below keeps then)
        else:
            usable = [j for j in ranked if _usable(members[j], exclude, limit)]
            if not usable:
                return -1
        best = usable[0]  # the first with room; the first of all where none has room
        for j in usable:
            if _has_room(bound, pressures[j], scale, weights[j]):
                best = j
                break
        if cached[best]:
            # The prefix is cached there. Stay unless this prefix alone is too hot for one
            # endpoint (its share of the conversations started recently: counted from the
            # first burst on, which decides where most of them will stay), or that endpoint
            # is well over its share of requests however it got there. The prior keeps the
            # first two or three conversations, when every share is noise, from calling a
            # prompt hot.
            placed = aged(self.placed, now, window)
            group_share = aged(group_cell, now, window) / (placed + PRIOR * n)
            weight = weights[best]
            hot = group_share > self.spread * weight / total_weight
            over = _cell(recent, indices[best]).value > OVER * (fair + OVER_PRIOR) * weight + SLACK
            if not hot and not over:
                self.counts[CACHED] += 1
                cell = _cell(conversations, indices[best])
                cell.value += 1.0
                return best
            roomy = _roomy(usable, bound, pressures, scale, weights)
            if hot:
                self.counts[HOT] += 1
                # A hot prompt's new conversations go where the fewest conversations started
                # recently: each stays where it starts, so the turns it will bring follow
                # conversations, not the requests in flight at this instant.
                started = [aged(_cell(conversations, indices[j]), now, window) / weights[j] for j in roomy]
                loads = [pressures[j][0] / weights[j] for j in roomy]
                chosen = roomy[_least(started, loads)]
                cell = _cell(conversations, indices[chosen])
                cell.value += 1.0
                return chosen
        else:
            roomy = _roomy(usable, bound, pressures, scale, weights)
        # A new prefix: where the recent share is lowest (ring order breaks ties).
        self.counts[OVER_SHARE if cached[best] else NEW] += 1
        shares = [_cell(recent, indices[j]).value / weights[j] for j in roomy]
        chosen = roomy[_least(shares, None)]
        cell = _cell(conversations, indices[chosen])
        cell.value += 1.0
        return chosen


class Cell:
    """A count that decays with time (``aged``): its value, and when it was last aged."""

    __slots__ = ("value", "when")

    def __init__(self):
        self.value = 0.0
        self.when = 0.0


def aged(cell, now, window):
    """``cell``'s count brought to ``now``, decayed by exp(-elapsed / window); returns it."""
    elapsed = now - cell.when
    if elapsed > 0:
        cell.value *= _exp(-elapsed / window)
        cell.when = now
    return cell.value


def _exp(x):
    """``math.exp``: compiled, C's exp (the function math.exp calls), with no float object."""
    if _COMPILED:
        return fleetproxy_exp(x)  # noqa: F821 (cache_aware.pxd)
    return exp(x)


def _cell(cells, index):
    """The count of endpoint ``index`` in ``cells`` (a list by endpoint index), made on first use."""
    if index >= len(cells):
        cells.extend([None] * (index + 1 - len(cells)))
    cell = cells[index]
    if cell is None:
        cell = cells[index] = Cell()
    return cell


class _Recent(dict):
    """Decayed request counts (``Cell``) by key, made on first use; at most ``limit`` keys (the
    smallest are dropped first when full)."""

    def __init__(self, limit=0):
        super().__init__()
        self.limit = limit

    def __missing__(self, key):
        if self.limit and len(self) >= self.limit:
            for old in sorted(self, key=lambda k: self[k].value)[: self.limit // 4]:
                del self[old]
        cell = self[key] = Cell()
        return cell


def _ranked(order, cached):
    """``order`` (members along the ring) by how many leading blocks each holds (``cached``),
    most first, ring order breaking ties. Most often that is ``order`` itself (a prompt cached
    at its ring home, or nowhere): no new list then. Otherwise most members hold none of a
    prompt: those keep their order after the few that do, which an insertion sort puts in
    place (stable); ``sorted`` only where many do."""
    n = len(order)
    i = 1
    while i < n and cached[order[i - 1]] >= cached[order[i]]:
        i += 1
    if i >= n:
        return order  # already so
    ranked = [j for j in order if cached[j]]
    holding = len(ranked)  # at least one, or order was already so
    if holding > 16:
        ranked.sort(key=_negated(cached))
    else:
        for i in range(1, holding):
            j = ranked[i]
            c = cached[j]
            k = i
            while k > 0 and cached[ranked[k - 1]] < c:
                ranked[k] = ranked[k - 1]
                k -= 1
            ranked[k] = j
    for j in order:
        if not cached[j]:
            ranked.append(j)
    return ranked


def _negated(cached):
    """The key of a sort by ``cached``, most first: a bound method, not a closure."""
    keys = [-c for c in cached]
    return keys.__getitem__


def _roomy(usable, bound, pressures, scale, weights):
    """Those of ``usable`` with room (``_has_room``), or all of them where none has."""
    return [j for j in usable if _has_room(bound, pressures[j], scale, weights[j])] or usable


def _usable(member, exclude, limit):
    return (exclude is None or member not in exclude) and (not limit or member.load() < limit)


def _has_room(bound, pressure, scale, weight):
    # Never onto an endpoint that must shed by vLLM's own signal.
    load, queueing = pressure
    return bound.room(load, queueing, _ceil(scale * weight), True)


def _least(keys, ties):
    """The position of the least of ``keys``, ``ties`` (or None) deciding between equal ones;
    the first of equals: ``min(range(len(keys)), key=...)`` without a tuple per item."""
    best = 0
    for i in range(1, len(keys)):
        if keys[i] < keys[best] or (ties is not None and keys[i] == keys[best] and ties[i] < ties[best]):
            best = i
    return best
