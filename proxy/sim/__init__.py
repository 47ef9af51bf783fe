"""A vLLM-compatible HTTP server with deterministic output, timing knobs and faults.

The backend for fleetproxy's tests, demos and benchmarks:
`await start_sim(SimConfig(port=0))` returns a listening `Sim`.
"""

from .app import Sim, start_sim
from .config import FAULTS, SimConfig
from .engine import Stats

__all__ = ["FAULTS", "Sim", "SimConfig", "Stats", "start_sim"]
