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
WINDOW = 60.0  # s: how long the recent-request counts that balance placement remember
OVER = 1.4  # x its fair share of recent requests: an endpoint too busy to keep a group
SLACK = 2.0  # requests above that it may carry first (shares are noisy at the start)
PRIOR = 1.0  # conversations per endpoint assumed already spread evenly, when judging a prompt hot
OVER_PRIOR = 4.0  # requests per endpoint likewise, when judging an endpoint over its share
MAX_GROUPS = 4096
# kept/shed: a later turn stayed with its conversation or left it (vLLM queued there); cached: a
# new conversation went where its prefix is; hot: its prefix was too hot for one endpoint; over:
# that endpoint was well over its share; new: nobody held the prefix; short: no full block.
DECISIONS = ("kept", "shed", "cached", "hot", "over", "new", "short")  # first blocks whose recent traffic is remembered


class CacheAware:
    __slots__ = (
        "bound", "spread", "block", "depth", "table", "ttl_ms", "recent", "window", "groups", "placed",
        "conversations", "decisions",
    )

    def __init__(self, table, block_chars=256, depth=128, ttl=600.0, load_factor=1.25, floor=8, spread=1.1,
                 endpoints=None, window=WINDOW):
        self.bound = Bound(load_factor, floor)
        self.spread = spread
        self.window = window
        # Per endpoint (by index): [requests placed here recently, decayed; when last aged].
        # This worker's own: each worker balances what it sends, and so the sum is balanced.
        self.recent = _Recent()
        # Per first block (a system prompt, typically): conversations placed recently, decayed,
        # so a prompt too hot for one endpoint is seen as such. Bounded: see _Recent.
        self.groups = _Recent(MAX_GROUPS)
        self.placed = [0.0, 0.0]  # conversations placed recently (decayed), the groups' total
        self.conversations = _Recent()  # per endpoint index: conversations placed there recently
        # How requests were routed, for /admin/backends: a conversation kept or shed, and why
        # others went where they went.
        self.decisions = dict.fromkeys(DECISIONS, 0)
        self.block = block_chars
        self.depth = depth
        self.table = table  # _speedups.PrefixTable, columns in Endpoint.index order
        self.ttl_ms = int(ttl * 1000)

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

        No closures here or in ``_place`` (key functions are lists of keys computed first):
        they would keep these Python functions, while the native build makes them C calls."""
        if blocks is None:
            self.decisions["short"] += 1
            return least_request(snap, exclude, limit)
        members = snap.members
        if not members:
            return None
        hashes, key, later = blocks
        now_ms = int(now * 1000)
        oldest = now_ms - self.ttl_ms
        table = self.table
        matches = table.matches(hashes, oldest)
        order = ring_order(snap, (hashes[0] >> 31) & _M32)
        cached = [-matches[m.index] for m in members]  # by member: the sort key below
        ranked = sorted(order, key=cached.__getitem__)  # stable: ring order breaks ties
        pressures = [m.pressure(now) for m in members]
        bound = self.bound
        weights = snap.weights
        scale = bound.scale(pressures, snap.total_weight)

        chosen = None
        if later and key:
            # A later turn: its conversation's endpoint first, as long as it need not shed.
            holders = table.matches((key,), oldest)
            for j in ranked:
                member = members[j]
                if holders[member.index] and _usable(member, exclude, limit):
                    if _has_room(bound, pressures[j], scale * weights[j]):
                        chosen = member
                        self.decisions["kept"] += 1
                    else:
                        self.decisions["shed"] += 1
                    break
        if chosen is None:
            chosen = self._place(members, ranked, matches, hashes[0], bound, scale, pressures, exclude, limit, now, snap)
            if chosen is None:
                return None
        self.recent[chosen.index][0] += 1.0
        table.record(chosen.index, hashes, now_ms)
        if key:
            table.record(chosen.index, (key,), now_ms)
        return chosen

    def _place(self, members, ranked, matches, group, bound, scale, pressures, exclude, limit, now, snap):
        """Where a request goes that no conversation claims (see the module docstring)."""
        self.groups[group][0] += 1.0
        self.placed[0] += 1.0
        conversations = self.conversations
        recent = self.recent
        window = self.window
        total = 0.0
        for member in members:
            total += aged(recent[member.index], now, window)
        weights = snap.weights
        fair = total / snap.total_weight  # recent requests per unit of weight
        usable = [j for j in ranked if _usable(members[j], exclude, limit)]
        if not usable:
            return None
        roomy = [j for j in usable if _has_room(bound, pressures[j], scale * weights[j])] or usable
        best = roomy[0]
        if matches[members[best].index]:
            # The prefix is cached there. Stay unless this prefix alone is too hot for one
            # endpoint (its share of the conversations started recently: counted from the
            # first burst on, which decides where most of them will stay), or that endpoint
            # is well over its share of requests however it got there. The prior keeps the
            # first two or three conversations, when every share is noise, from calling a
            # prompt hot.
            placed = aged(self.placed, now, window)
            group_share = aged(self.groups[group], now, window) / (placed + PRIOR * len(members))
            hot = group_share > self.spread * weights[best] / snap.total_weight
            over = recent[members[best].index][0] > OVER * (fair + OVER_PRIOR) * weights[best] + SLACK
            if not hot and not over:
                self.decisions["cached"] += 1
                conversations[members[best].index][0] += 1.0
                return members[best]
            if hot:
                self.decisions["hot"] += 1
                # A hot prompt's new conversations go where the fewest conversations started
                # recently: each stays where it starts, so the turns it will bring follow
                # conversations, not the requests in flight at this instant.
                chosen = _least(roomy, [(aged(conversations[members[j].index], now, window) / weights[j],
                                         pressures[j][0] / weights[j]) for j in roomy])
                conversations[members[chosen].index][0] += 1.0
                return members[chosen]
        # A new prefix: where the recent share is lowest (ring order breaks ties).
        self.decisions["over" if matches[members[best].index] else "new"] += 1
        chosen = _least(roomy, [recent[members[j].index][0] / weights[j] for j in roomy])
        conversations[members[chosen].index][0] += 1.0
        return members[chosen]


def aged(cell, now, window):
    """A decayed count ([value, when last aged]) brought to ``now``; returns its value."""
    elapsed = now - cell[1]
    if elapsed > 0:
        cell[0] *= exp(-elapsed / window)
        cell[1] = now
    return cell[0]


class _Recent(dict):
    """Decayed request counts ([value, when last aged]) by key, made on first use; at most
    ``limit`` keys (the smallest are dropped first when full)."""

    def __init__(self, limit=0):
        super().__init__()
        self.limit = limit

    def __missing__(self, key):
        if self.limit and len(self) >= self.limit:
            for old in sorted(self, key=lambda k: self[k][0])[: self.limit // 4]:
                del self[old]
        cell = self[key] = [0.0, 0.0]
        return cell


def _usable(member, exclude, limit):
    return (exclude is None or member not in exclude) and (not limit or member.load() < limit)


def _has_room(bound, pressure, share):
    # Never onto an endpoint that must shed by vLLM's own signal.
    load, queueing = pressure
    return bound.room(load, queueing, _ceil(share), True)


def _least(items, keys):
    """``min(items, key=...)`` given the keys (in items' order): the first item of the least key."""
    best = 0
    for i in range(1, len(keys)):
        if keys[i] < keys[best]:
            best = i
    return items[best]
