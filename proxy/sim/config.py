"""The simulator's settings: one frozen struct, every duration in seconds."""

from __future__ import annotations

import msgspec

# Ways the simulated backend can misbehave. Each is also selectable per request
# with the `x-sim-fault` header, so one simulator serves many test cases.
FAULTS = frozenset(
    {"none", "500", "503", "die-after", "error-event", "hang", "bad-framing"}
)

VERSION = "0.32.0-sim"  # the vLLM release whose bytes were recorded, marked as ours


class SimConfig(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port; Sim.port tells which
    model: str = "tiny"  # served model name; any other name gets vLLM's 404
    tokens: int = 16  # completion tokens when the request sets no max_tokens
    # Tokens of prompt + completion. The recorded tiny model has 1024; the default is
    # roomier so tests may ask for long streams (tests/test_sim_fidelity.py sets 1024).
    max_model_len: int = 32768
    ttft: float = 0.0  # seconds from admission to the first token
    itl: float = 0.0  # seconds between tokens
    # Running requests (vLLM's --max-num-seqs); the rest wait in a queue, as do requests
    # the KV cache cannot hold. vLLM's default is 256 on most GPUs, 128 in the CPU build
    # (vllm/engine/arg_utils.py): a handful of requests is a batch, not a queue.
    max_concurrency: int = 256
    fault: str = "none"  # one of FAULTS
    fault_after: int = 3  # content tokens sent before die-after/error-event/bad-framing
    name: str | None = None  # echoed in `x-sim-backend`; default "host:port"
    # The KV cache (see engine.KVCache): `cache_blocks` blocks of `block_size` tokens
    # (words) hold running requests and, once free, the prefix cache (LRU). Like vLLM's
    # num_gpu_blocks one block is reserved. vLLM's GPU default block is 16 tokens, the CPU
    # build that tests/data/vllm recorded uses 128 (x 4096 blocks); 0 blocks turns the KV
    # model and the prefix cache off.
    block_size: int = 16  # tokens per block; only full blocks are cached
    cache_blocks: int = 4096
    prefill_per_token: float = 0.0  # seconds of extra TTFT per uncached prompt token
    # Batching (see engine.Engine): off by default so every request keeps its own clock.
    itl_per_seq: float = 0.0  # seconds added per token for each other running request
    shared_prefill: bool = False  # prefills take turns on the engine and pause the batch
    prompt_tokens_details: bool = False  # like vLLM's --enable-prompt-tokens-details
    request_id_headers: bool = False  # like vLLM's --enable-request-id-headers
    # vLLM names a reply after the request's X-Request-Id ("chatcmpl-<id>"). Off by
    # default: the proxy adds one, and tests compare proxied bytes with direct ones.
    id_from_request_id: bool = False
    # vLLM answers 400 to a POST whose Content-Type is not application/json. Off by
    # default: many tests post bare bodies; the conformance tests turn it on.
    strict_content_type: bool = False
    # vLLM's server writes every event of a stream on its own (one write per token). Without
    # delays (itl 0, no batching) the simulator writes a whole stream at once unless this is
    # on: the bench turns it on, so that a proxy reads what it would read from vLLM.
    event_writes: bool = False
    # uvicorn (vLLM's server) closes a keep-alive connection idle this long (its
    # --timeout-keep-alive, 5 s): a proxy's pool must drop its idle connections sooner, and a
    # bench sees what a pool that does pays in new connections. 0: never.
    keep_alive_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {sorted(FAULTS)}, not {self.fault!r}")
        if self.keep_alive_timeout < 0:
            raise ValueError("keep_alive_timeout must be >= 0")
        if self.tokens < 1 or self.max_concurrency < 1 or self.fault_after < 0:
            raise ValueError("tokens and max_concurrency must be >= 1, fault_after >= 0")
        if self.max_model_len < 2:
            raise ValueError("max_model_len must be >= 2")
        if min(self.ttft, self.itl, self.prefill_per_token, self.itl_per_seq) < 0:
            raise ValueError("ttft, itl, prefill_per_token and itl_per_seq are durations "
                             "and cannot be negative")
        if self.block_size < 1 or self.cache_blocks < 0 or self.cache_blocks == 1:
            raise ValueError("block_size must be >= 1, cache_blocks 0 (off) or >= 2 "
                             "(one block is reserved, as in vLLM)")
