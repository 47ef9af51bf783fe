"""The pretend engine: deterministic tokens, a bounded batch, a waiting queue, a prefix
cache, counters.

How it works: a request holds one of `max_concurrency` running slots while it
generates. When all are taken it waits in a FIFO, as vLLM's scheduler does, and
`num_requests_waiting` counts it. A finishing request hands its slot straight
to the oldest waiter, so the running count never dips between the two.

At admission a request looks its prompt up in the prefix cache (`PrefixCache`);
the part that missed is what prefill has to compute, so it sets the extra TTFT.

Output is a pure function of the request body: a blake2b digest of the body
seeds the ids and the choice of each token from a fixed word list, so the same
request always gets the same reply and different requests (almost) never do.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections import OrderedDict, deque

import orjson

# Fragments in the style of the recorded tiny model: printable ASCII, most with
# a leading space, some without, so joined text looks like what vLLM returned.
WORDS = (
    " week", " early,", " an!", " see", "ount", " B", " the", " model",
    " token", " fleet", " of", " and", " proxy", " route", "ing", " cache",
    " to", " prefix", " a", " load", " stream", ".", " on", " back",
    " end", " block", " is", " it", "ed", " request", " queue", " run",
)
WORDS_JSON = tuple(orjson.dumps(w) for w in WORDS)  # pre-escaped JSON strings
_INDEX = tuple(i.to_bytes(4, "little") for i in range(4096))


class Output:
    """What the engine will say for one request body: ids and token choices."""

    __slots__ = ("hex_id", "seed", "n")

    def __init__(self, body: bytes, n: int) -> None:
        digest = hashlib.blake2b(body, digest_size=12).digest()
        self.hex_id = digest[:8].hex()  # 16 hex digits, like vLLM's request ids
        self.seed = int.from_bytes(digest[8:], "little")
        self.n = n

    def token(self, i: int) -> int:
        """Index into WORDS of token i: crc32 of the index, seeded by the body."""
        key = _INDEX[i] if i < 4096 else i.to_bytes(8, "little")
        return zlib.crc32(key, self.seed) % len(WORDS)

    def tokens(self) -> list[int]:
        return [self.token(i) for i in range(self.n)]

    def text(self) -> str:
        return "".join([WORDS[t] for t in self.tokens()])


def prompt_words(prompt: object) -> list[str]:
    """A completions prompt as words: how the simulator approximates prompt tokens.

    Whitespace-separated words of a string or of each string in a list; a list
    of ints is a pre-tokenized prompt and counts one token per int.
    """
    if isinstance(prompt, str):
        return prompt.split()
    if isinstance(prompt, list):
        if prompt and all(type(v) is int for v in prompt):
            return [str(v) for v in prompt]
        return [w for p in prompt for w in prompt_words(p)]
    return []


def chat_words(messages: list[object]) -> list[str]:
    """The words of every message's content (a string or text parts).

    Roles and the chat template are not counted, so `prompt_tokens` is easy to
    predict in tests: "tell me about fleets" is 4 tokens.
    """
    words: list[str] = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            words += content.split()
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    words += part["text"].split()
    return words


NOTHING = (0, 0)  # a lookup that hashed no block


class PrefixCache:
    """A bounded LRU of prompt-prefix blocks, keyed the way vLLM's prefix cache is.

    How it works: the prompt's tokens are cut into blocks of `block_size`; a partial
    last block is never cached (vLLM caches full blocks only). Block i's key hashes
    block i-1's key with block i's tokens, so one key names the whole prefix up to
    its block and hits end at the first miss. Hits are the leading blocks
    found, but at most the blocks before the prompt's last token: vLLM always
    recomputes that token for its logits, so a prompt cached whole reports one
    block less. Then every full block is inserted or refreshed, the last block
    first, so the chain's head is the most recent entry and eviction (oldest
    first) eats prefixes from their tail, as vLLM's free-block queue does.
    Keys are Python hashes: stable within one process, which is all a cache needs.
    """

    __slots__ = ("block_size", "capacity", "_blocks")

    def __init__(self, block_size: int, capacity: int) -> None:
        self.block_size = block_size  # tokens
        self.capacity = capacity  # blocks; 0 turns the cache off
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup_insert(self, tokens: list[str]) -> tuple[int, int]:
        """(tokens already cached, tokens newly cached); then cache all full blocks."""
        size = self.block_size
        full = len(tokens) // size
        if full == 0 or not self.capacity:
            return NOTHING  # the common short prompt: nothing to hash
        blocks = self._blocks
        countable = (len(tokens) - 1) // size  # blocks that may count as hits
        keys = []
        key = hits = created = 0
        for start in range(0, full * size, size):
            key = hash((key, *tokens[start:start + size]))
            if key in blocks:
                if hits == len(keys) and hits < countable:
                    hits += 1
            else:
                created += 1
            keys.append(key)
        for key in reversed(keys):
            blocks[key] = None
            blocks.move_to_end(key)
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)
        return hits * size, created * size


class Stats:
    """Counters and gauges behind /metrics; tests may read them directly."""

    __slots__ = (
        "http_requests", "requests", "aborted", "connections", "connections_open",
        "running", "waiting", "prompt_tokens", "generation_tokens", "finished",
        "prefix_cache_queries", "prefix_cache_hits",
    )

    def __init__(self) -> None:
        self.http_requests = 0  # every parsed HTTP request, any path
        self.requests = 0  # requests to the generation endpoints
        self.aborted = 0  # generations cancelled because the client went away
        self.connections = 0  # TCP connections accepted
        self.connections_open = 0
        self.running = 0
        self.waiting = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        # Prefix cache lookups in tokens, as vLLM counts them: queries are prompt
        # tokens looked up, hits the cached ones among them.
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        # vLLM's finished_reason labels. "abort" stays 0 because real vLLM does
        # not count aborts there either; sim:requests_aborted_total does.
        self.finished = {"stop": 0, "length": 0, "abort": 0, "error": 0, "repetition": 0}


class Scheduler:
    """Running slots plus a FIFO of waiters; `try_admit` is the no-await fast path."""

    __slots__ = ("stats", "limit", "_waiters")

    def __init__(self, stats: Stats, limit: int) -> None:
        self.stats = stats
        self.limit = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_admit(self) -> bool:
        if self.stats.running < self.limit and not self._waiters:
            self.stats.running += 1
            return True
        return False

    async def admit(self) -> None:
        if self.try_admit():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.stats.waiting += 1
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived together with the cancel
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        finally:
            self.stats.waiting -= 1

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves over; running unchanged
                return
        self.stats.running -= 1
