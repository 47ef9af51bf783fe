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
  proxy replica walks the same order), and the first with room under the bounded-load cap takes
  it. Placement loses at most a shared prefix (a system prompt prefilled once more on a second
  endpoint), so it keeps the cluster balanced.
- Wherever the request goes, its blocks and conversation key are recorded there: the next turn
  follows it.
- Prompts shorter than one block have nothing to cache: least request decides.

Replicas. Several proxies do not share the table. They agree on placement while their views of
load agree (the load is vLLM's own report, the same for all of them, and the ring is the same),
and a later turn that reaches a replica that did not place the conversation is placed by its
longest cached prefix as that replica knows it, falling back to the ring home of its first block.
"""

from _speedups import block_hashes

from .fields import prompt_of
from .policies import Bound, _ceil, least_request, ring_order

_M32 = 0xFFFFFFFF


class CacheAware:
    __slots__ = ("bound", "block", "depth", "table", "ttl_ms")

    def __init__(self, table, block_chars=256, depth=128, ttl=600.0, load_factor=1.25, floor=8):
        self.bound = Bound(load_factor, floor)
        self.block = block_chars
        self.depth = depth
        self.table = table  # _speedups.PrefixTable, columns in Endpoint.index order
        self.ttl_ms = int(ttl * 1000)

    def blocks(self, fields):
        """(block hashes, conversation key or 0, later turn) of a request's fields, or None."""
        prompt = prompt_of(fields, self.block * self.depth)
        if prompt is None:
            return None
        hashes = block_hashes(prompt.text, self.block, self.depth)
        if not hashes:
            return None
        key = 0
        opening = prompt.opening
        if opening >= 16:
            key = block_hashes(prompt.text[:opening] + b"\x00", opening + 1, 1)[0]
        return hashes, key, prompt.later

    def pick(self, snap, blocks, exclude=None, limit=0, now=0.0):
        """An endpoint for a request whose ``blocks`` are as ``blocks()`` returned (None: no
        cacheable prompt), or None when every member is excluded or at ``limit``."""
        if blocks is None:
            return least_request(snap, exclude, limit)
        members = snap.members
        if not members:
            return None
        hashes, key, later = blocks
        now_ms = int(now * 1000)
        oldest = now_ms - self.ttl_ms
        table = self.table
        matches = table.matches(hashes, oldest)
        holders = table.matches((key,), oldest) if later and key else None
        order = ring_order(snap, (hashes[0] >> 31) & _M32)
        ranked = sorted(order, key=lambda j: -matches[members[j].index])  # stable: ring order breaks ties
        pressures = [m.pressure(now) for m in members]
        scale = self.bound.scale(pressures, snap.total_weight)
        weights = snap.weights
        chosen = None
        if holders is not None:
            # A later turn: its conversation's endpoint first, as long as it need not shed.
            for j in ranked:
                member = members[j]
                if holders[member.index] and _usable(member, exclude, limit):
                    load, queueing = pressures[j]
                    if self.bound.room(load, queueing, _ceil(scale * weights[j]), True):
                        chosen = member
                    break
        if chosen is None:
            for j in ranked:
                member = members[j]
                if _usable(member, exclude, limit):
                    load, queueing = pressures[j]
                    if self.bound.room(load, queueing, _ceil(scale * weights[j]), False):
                        chosen = member
                        break
        if chosen is None:
            return None
        table.record(chosen.index, hashes, now_ms)
        if key:
            table.record(chosen.index, (key,), now_ms)
        return chosen


def _usable(member, exclude, limit):
    return (exclude is None or member not in exclude) and (not limit or member.load() < limit)
