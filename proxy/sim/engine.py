"""The pretend engine: deterministic tokens, a batch of running requests, a waiting
queue, a KV cache of blocks that is also the prefix cache, counters.

What each part mirrors in vLLM (V1 engine, 0.32; ../shared/vllm-api.md and
../shared/realvllm/README.md hold the observed facts), and why:

- Admission (`Engine`). A request runs when one of `max_concurrency` running slots
  is free (vLLM's --max-num-seqs) and the KV cache can hold it; otherwise it waits
  in a FIFO and `num_requests_waiting` counts it. Like vLLM's scheduler the queue is
  first come, first served and stops at the first request that does not fit. So a
  handful of requests in flight is one batch, not a queue: waiting > 0 means the
  batch or the KV cache is full, which is what a router reading the gauge expects.
- Memory (`KVCache`). `cache_blocks` blocks of `block_size` tokens (vLLM's
  num_gpu_blocks, one of them its reserved null block) hold the running requests'
  prompts and replies and, once free, the prefix cache: what a finished request
  computed stays until its blocks are reused, oldest freed first. A prefix that
  stays hot on one server survives; one that is spread over many is evicted sooner.
  `kv_cache_usage_perc` is the share of blocks held by running requests, as vLLM's.
- Time (`Engine.prefill`, `Engine.decode`; the knobs are in generate.py). By default
  every request keeps its own clock (ttft, itl, prefill_per_token): fast and exact
  for tests. `itl_per_seq` makes each token slower the more requests run (a decode
  step computes the whole batch: vLLM's CPU build measured ~700 tokens/s alone,
  ~440 each over 8), and `shared_prefill` puts prefill compute on the one engine:
  prefills take turns and every running stream waits for them, as vLLM's steps mix
  prefill with decode. With both, a server that receives more work gets slower, its
  requests stay in flight longer, and a router that bounds in-flight load spills
  sessions off it, as it does in front of real servers.
- Tokens are whitespace-separated words (chat roles and template not counted), so
  counts are easy to predict in tests. vLLM's tokenizer makes more of the same text
  (the recorded 420-word prompt is 660 completion tokens, 674 as a chat), so a block
  of N words stands for about 1.5 N of vLLM's tokens.

Output is a pure function of the request body: a blake2b digest of the body
seeds the ids and the choice of each token from a fixed word list, so the same
request always gets the same reply and different requests (almost) never do.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
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


PLAIN = 1 << 64  # free-queue ids of runs of unnamed blocks start here, above any hash()


class Blocks:
    """One request's hold on the KV cache (a Seq is one)."""

    __slots__ = ("held", "plain", "count", "pending", "hit_tokens", "created_tokens")

    def __init__(self) -> None:
        self.held: list[int] = []  # named (cacheable) prompt blocks held, in prompt order
        self.plain = 0  # held blocks without a name: partial, reply, recomputed
        self.count = 0  # blocks taken so far, over-committed ones included
        self.pending = 0  # blocks reserved for reply tokens not generated yet
        self.hit_tokens = 0  # prompt tokens found cached
        self.created_tokens = 0  # prompt tokens this request added to the cache


class KVCache:
    """vLLM's KV-cache block pool, its prefix cache included, counted in blocks.

    How it works: block i of a prompt is named by a hash of block i-1's name and
    block i's tokens, so one name stands for the whole prefix up to its block and a
    lookup's hits end at the first miss. Only full blocks get a name: a partial last
    block is never a hit (vLLM caches full blocks only; its CPU build's blocks are
    128 tokens, its GPU default 16). Hits are the leading named blocks found, but at
    most the blocks before the prompt's last token: vLLM always computes that token
    for its logits, so a prompt cached whole reports one block less.

    A block is held (reference counted: requests that share a prefix share its
    blocks) or free. Free blocks wait in one queue in the order they were freed,
    content kept; a request that needs a block takes the oldest free one, evicting
    its content (LRU), and a hit on a free block takes it back out of the queue.
    Never-used blocks are taken first. A request frees its blocks last first, so
    its reply and its prompt's tail are evicted before its prompt's head: that is
    vLLM's free-block queue. Hits and queries are counted in tokens, as vLLM's
    prefix_cache_hits/queries are.

    Admission reserves, besides the prompt's blocks, the blocks its reply will
    fill. vLLM allocates those as the reply grows and, when none is left, preempts
    the newest request; the simulator never preempts, so under KV pressure it
    queues a request a little earlier than vLLM would. Reserved blocks are taken
    (and counted as used) only as the tokens are generated, so `usage()` grows with
    the reply as vLLM's kv_cache_usage_perc does. A request larger than the whole
    cache is admitted alone and over-commits (vLLM refuses to start instead).
    Reply blocks get no name: the simulator's replies are not tokens a later
    prompt could repeat, so caching them would only cost time.
    Names are Python hashes: stable within one process, which is all a cache needs.
    """

    __slots__ = ("block_size", "capacity", "used", "_never", "_free", "_free_blocks",
                 "_cached", "_pending", "_ids")

    def __init__(self, block_size: int, capacity: int) -> None:
        self.block_size = block_size  # tokens
        self.capacity = capacity  # usable blocks; 0 turns the KV model and the cache off
        self.used = 0  # blocks held by requests
        self._never = capacity  # blocks never used yet
        # Freed blocks, oldest first: a name -> 1, or a run of unnamed blocks freed
        # together (one request's) -> their count, so a request costs one entry.
        self._free: OrderedDict[int, int] = OrderedDict()
        self._free_blocks = 0  # blocks in _free
        self._cached: dict[int, int] = {}  # block name -> requests holding it (0: free)
        self._pending = 0  # blocks reserved for replies and not taken yet
        self._ids = itertools.count(PLAIN)

    def __len__(self) -> int:
        """Blocks whose content a prompt can hit, held or free."""
        return len(self._cached)

    def usage(self) -> float:
        """The share of blocks held by requests: vLLM's kv_cache_usage_perc.

        Computed as vLLM's BlockPool.get_usage does (1 - free / usable blocks), so the
        same state gives the same float, down to the last digit of the ORCA header.
        """
        if not self.capacity:
            return 0.0
        return 1.0 - (self.capacity - self.used) / self.capacity

    def names(self, tokens: list[str]) -> list[int]:
        """The names of the prompt's full blocks; hashed once per request."""
        size = self.block_size
        if not self.capacity or len(tokens) < size:
            return []  # the common short prompt: nothing to hash
        names = []
        name = 0
        for start in range(0, len(tokens) // size * size, size):
            name = hash((name, *tokens[start:start + size]))
            names.append(name)
        return names

    def allocate(self, b: Blocks, names: list[int], prompt: int, reply: int,
                 force: bool = False, now: bool = False) -> bool:
        """Make `b` hold the blocks of a `prompt`-token prompt (its full blocks named
        `names`) and reserve those of `reply` more tokens, or take them `now`; False if
        they do not fit, unless forced."""
        if not self.capacity:
            return True
        size = self.block_size
        if not names:  # the common short prompt: no full block, nothing to look up
            b.pending = -(-(prompt + reply) // size) - (blocks := -(-prompt // size))
            if blocks + b.pending > self._never + self._free_blocks - self._pending \
                    and not force:
                return False
            if now:
                blocks += b.pending
                b.pending = 0
            else:
                self._pending += b.pending
            b.plain = self._take(blocks)
            b.count = blocks
            return True
        cached = self._cached
        countable = min(len(names), (prompt - 1) // size)
        hits = revived = 0
        while hits < countable:
            ref = cached.get(names[hits])
            if ref is None:
                break
            revived += ref == 0
            hits += 1
        prompt_blocks = -(-prompt // size)
        b.pending = -(-(prompt + reply) // size) - prompt_blocks
        need = prompt_blocks - hits + revived + b.pending
        if need > self._never + self._free_blocks - self._pending and not force:
            return False
        cached_hits = names[:hits]
        if revived:
            free = self._free
            self._free_blocks -= revived
            self.used += revived
            for name in cached_hits:
                if not cached[name]:
                    del free[name]  # a hit on a free block takes it back
        for name in cached_hits:
            cached[name] += 1
        b.held = cached_hits
        # New blocks: the named ones after the hits, the partial last one, and the
        # reply's if it is generated at once.
        fresh = len(names) - hits
        taken = self._take(prompt_blocks - hits + (b.pending if now else 0))
        created = 0
        for name in names[hits:hits + taken]:
            if name in cached:  # recomputed: the last block of a prompt cached whole
                b.plain += 1
            else:
                cached[name] = 1
                cached_hits.append(name)
                created += 1
        if taken > fresh:
            b.plain += taken - fresh  # partial and reply blocks
        if now:
            b.count = prompt_blocks + b.pending
            b.pending = 0
        else:
            b.count = prompt_blocks  # over-committed blocks that do not exist included
            self._pending += b.pending
        b.hit_tokens = hits * size
        b.created_tokens = created * size
        return True

    def grow(self, b: Blocks, tokens: int) -> None:
        """Take the reserved blocks that `tokens` tokens of prompt and reply fill."""
        more = min(-(-tokens // self.block_size) - b.count, b.pending)
        if more > 0:
            b.pending -= more
            self._pending -= more
            b.count += more
            b.plain += self._take(more)

    def free(self, b: Blocks) -> None:
        """Give a finished request's blocks back, last first; named ones keep their content."""
        self._pending -= b.pending
        b.pending = 0
        free = self._free
        if b.plain:
            free[next(self._ids)] = b.plain
            self._free_blocks += b.plain
            self.used -= b.plain
            b.plain = 0
        cached = self._cached
        for name in reversed(b.held):
            ref = cached[name] - 1
            cached[name] = ref
            if ref == 0:
                free[name] = 1
                self._free_blocks += 1
                self.used -= 1
        b.held = []

    def _take(self, n: int) -> int:
        """n blocks for a request: never-used ones, then the oldest free ones (evicted).

        Returns how many there were: fewer than n only when over-committed."""
        got = min(n, self._never)
        self._never -= got
        n -= got
        if n and self._free_blocks:
            free = self._free
            reused = 0
            while n and free:
                name, count = free.popitem(last=False)
                if name < PLAIN:
                    del self._cached[name]  # evicted
                    count = 1
                elif count > n:
                    free[name] = count - n  # the rest of the run stays first in line
                    free.move_to_end(name, last=False)
                    count = n
                n -= count
                reused += count
            self._free_blocks -= reused
            got += reused
        self.used += got
        return got

    def lookup_insert(self, tokens: list[str]) -> tuple[int, int]:
        """(tokens found cached, tokens newly cached) for a prompt that comes and goes at once."""
        b = Blocks()
        self.allocate(b, self.names(tokens), len(tokens), 0, force=True)
        self.free(b)
        return b.hit_tokens, b.created_tokens


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
        self.running = 0  # requests admitted to the batch (prefill or decode)
        self.waiting = 0  # requests queued for a slot or for KV blocks
        self.prompt_tokens = 0
        self.generation_tokens = 0  # counted as generated, as vLLM counts them per step
        # Prefix cache lookups in tokens, as vLLM counts them: queries are prompt
        # tokens looked up, hits the cached ones among them.
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        # vLLM's finished_reason labels. "abort" stays 0 because real vLLM does
        # not count aborts there either; sim:requests_aborted_total does.
        self.finished = {"stop": 0, "length": 0, "abort": 0, "error": 0, "repetition": 0}


NEW, WAITING, RUNNING, DONE = range(4)


class Seq(Blocks):
    """One generation request as the engine sees it: prompt, reply length, the blocks
    it holds, and where it is (NEW, WAITING, RUNNING, DONE)."""

    __slots__ = ("prompt", "reply", "names", "waiter", "state")

    def __init__(self, tokens: list[str], reply: int, kv: KVCache) -> None:
        self.held = []
        self.plain = self.count = self.pending = self.hit_tokens = self.created_tokens = 0
        self.prompt = len(tokens)  # tokens
        self.reply = reply  # tokens it will generate
        self.names = kv.names(tokens)
        self.waiter: asyncio.Future[None] | None = None
        self.state = NEW


class Engine:
    """Running slots, the KV cache, the waiting queue, and the engine's clock.

    `try_admit` is the no-await fast path. A finishing request's slot and blocks go
    straight to the waiters that now fit (`release`), so the running count never
    dips between the two and num_requests_waiting drops the moment one is admitted.
    """

    __slots__ = ("stats", "limit", "kv", "itl_per_seq", "shared_prefill", "batching",
                 "prefill_work", "prefill_free_at", "_queue")

    def __init__(self, stats: Stats, limit: int, kv: KVCache, itl_per_seq: float = 0.0,
                 shared_prefill: bool = False) -> None:
        self.stats = stats
        self.limit = limit  # running requests: vLLM's --max-num-seqs
        self.kv = kv
        self.itl_per_seq = itl_per_seq  # seconds per token per other running request
        self.shared_prefill = shared_prefill
        self.batching = itl_per_seq > 0 or shared_prefill  # a request's time depends on others
        self.prefill_work = 0.0  # seconds of prefill compute put on the engine so far
        self.prefill_free_at = 0.0  # loop time at which that compute is done
        self._queue: deque[Seq] = deque()

    # -- admission ---------------------------------------------------------------

    def try_admit(self, seq: Seq, now: bool = False) -> bool:
        """Admit seq if nobody waits and it fits; `now`: its reply is generated at once."""
        if self._queue or self.stats.running >= self.limit:
            return False
        return self._start(seq, now)

    def _start(self, seq: Seq, now: bool = False) -> bool:
        stats = self.stats
        if not self.kv.allocate(seq, seq.names, seq.prompt, seq.reply, not stats.running, now):
            return False  # the KV cache is full: wait for blocks
        seq.state = RUNNING
        stats.running += 1
        if self.kv.capacity:
            stats.prefix_cache_queries += seq.prompt
            stats.prefix_cache_hits += seq.hit_tokens
        return True

    async def admit(self, seq: Seq) -> None:
        if self.try_admit(seq):
            return
        seq.waiter = asyncio.get_running_loop().create_future()
        seq.state = WAITING
        self._queue.append(seq)
        self.stats.waiting += 1
        try:
            await seq.waiter
        except asyncio.CancelledError:
            if seq.state == RUNNING:
                self.release(seq)  # admitted together with the cancel
            elif seq.state == WAITING:
                self._queue.remove(seq)
                self.stats.waiting -= 1
                seq.state = DONE
            raise

    def schedule(self) -> None:
        """Admit waiters, oldest first, while a slot is free and the oldest fits."""
        queue = self._queue
        stats = self.stats
        while queue and stats.running < self.limit:
            seq = queue[0]
            if seq.waiter.cancelled():  # its task has not heard yet
                queue.popleft()
                stats.waiting -= 1
                seq.state = DONE
                continue
            if not self._start(seq):
                return  # first come, first served: nobody passes the oldest
            queue.popleft()
            stats.waiting -= 1
            seq.waiter.set_result(None)

    def finish(self, seq: Seq) -> None:
        """The engine is done with seq: its slot and blocks are free; waiters still wait."""
        if seq.state == RUNNING:
            seq.state = DONE
            self.stats.running -= 1
            self.kv.free(seq)

    def release(self, seq: Seq) -> None:
        self.finish(seq)
        self.schedule()

    def grow(self, seq: Seq, generated: int) -> None:
        """The reply has `generated` tokens: take the blocks they fill."""
        if seq.pending:
            self.kv.grow(seq, seq.prompt + generated)

    # -- time --------------------------------------------------------------------

    def prefill(self, compute: float) -> float:
        """Seconds from now until a prefill of `compute` seconds yields its first token.

        With shared_prefill the compute queues behind the prefills already on the
        engine; with itl_per_seq the step that carries it also computes the batch.
        """
        delay = compute
        if self.shared_prefill and compute:
            now = asyncio.get_running_loop().time()
            self.prefill_free_at = max(now, self.prefill_free_at) + compute
            self.prefill_work += compute
            delay = self.prefill_free_at - now
        return delay + self.itl_per_seq * (self.stats.running - 1)

    async def decode(self, itl: float, tokens: int = 1) -> None:
        """Wait while `tokens` tokens are generated, `itl` seconds each when alone.

        Prefill compute put on the engine meanwhile (shared_prefill) held every step,
        so the wait grows by all of it.
        """
        work = self.prefill_work
        await asyncio.sleep((itl + self.itl_per_seq * (self.stats.running - 1)) * tokens)
        while self.prefill_work > work:
            extra = self.prefill_work - work
            work = self.prefill_work
            await asyncio.sleep(extra)
