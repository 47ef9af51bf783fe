"""fleetproxy: an L7 gateway for fleets of vLLM and OpenAI-compatible servers."""

__version__ = "0.1.0"
