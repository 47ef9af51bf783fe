"""fleetproxy: an L7 gateway for fleets of vLLM and OpenAI-compatible servers."""

import _speedups  # noqa: F401  (first: it decides whether the compiled data path or its .py imports)

__version__ = "0.1.0"
