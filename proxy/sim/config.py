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
    max_concurrency: int = 256  # running slots; the rest wait, like vLLM's queue
    fault: str = "none"  # one of FAULTS
    fault_after: int = 3  # content tokens sent before die-after/error-event/bad-framing
    name: str | None = None  # echoed in `x-sim-backend`; default "host:port"
    # Prefix cache (see engine.PrefixCache). vLLM's default block is 16 tokens on GPUs
    # (the CPU build uses 128); cache_blocks=0 turns the cache off.
    block_size: int = 16  # tokens per cached block; only full blocks are cached
    cache_blocks: int = 4096  # blocks the LRU holds
    prefill_per_token: float = 0.0  # seconds of extra TTFT per uncached prompt token
    prompt_tokens_details: bool = False  # like vLLM's --enable-prompt-tokens-details
    request_id_headers: bool = False  # like vLLM's --enable-request-id-headers
    # vLLM names a reply after the request's X-Request-Id ("chatcmpl-<id>"). Off by
    # default: the proxy adds one, and tests compare proxied bytes with direct ones.
    id_from_request_id: bool = False
    # vLLM answers 400 to a POST whose Content-Type is not application/json. Off by
    # default: many tests post bare bodies; the conformance tests turn it on.
    strict_content_type: bool = False

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {sorted(FAULTS)}, not {self.fault!r}")
        if self.tokens < 1 or self.max_concurrency < 1 or self.fault_after < 0:
            raise ValueError("tokens and max_concurrency must be >= 1, fault_after >= 0")
        if self.max_model_len < 2:
            raise ValueError("max_model_len must be >= 2")
        if self.ttft < 0 or self.itl < 0 or self.prefill_per_token < 0:
            raise ValueError("ttft, itl and prefill_per_token are durations and cannot be negative")
        if self.block_size < 1 or self.cache_blocks < 0:
            raise ValueError("block_size must be >= 1 and cache_blocks >= 0")
