"""The simulator's settings: one frozen struct, every duration in seconds."""

from __future__ import annotations

import msgspec

# Ways the simulated backend can misbehave. Each is also selectable per request
# with the `x-sim-fault` header, so one simulator serves many test cases.
FAULTS = frozenset(
    {"none", "500", "503", "die-after", "error-event", "hang", "bad-framing"}
)

MAX_MODEL_LEN = 1024  # tokens; what the recorded tiny model reports
VERSION = "0.32.0-sim"  # the vLLM release whose bytes were recorded, marked as ours


class SimConfig(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port; Sim.port tells which
    model: str = "tiny"  # served model name; any other name gets vLLM's 404
    tokens: int = 16  # completion tokens when the request sets no max_tokens
    ttft: float = 0.0  # seconds from admission to the first token
    itl: float = 0.0  # seconds between tokens
    max_concurrency: int = 256  # running slots; the rest wait, like vLLM's queue
    fault: str = "none"  # one of FAULTS
    fault_after: int = 3  # content tokens sent before die-after/error-event/bad-framing
    name: str | None = None  # echoed in `x-sim-backend`; default "host:port"

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {sorted(FAULTS)}, not {self.fault!r}")
        if self.tokens < 1 or self.max_concurrency < 1 or self.fault_after < 0:
            raise ValueError("tokens and max_concurrency must be >= 1, fault_after >= 0")
        if self.ttft < 0 or self.itl < 0:
            raise ValueError("ttft and itl are durations and cannot be negative")
