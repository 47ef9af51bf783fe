"""/metrics in Prometheus text format 0.0.4, shaped like vLLM's own.

The `vllm:` families carry vLLM's labels (engine="0", model_name) and HELP
texts, so a router that scrapes real vLLM scrapes the simulator unchanged.
The load gauges (running, waiting, KV-cache usage) are read from the engine at
the moment of the scrape: the values the in-band `endpoint-load-metrics` header
reports (generate.py). The `sim:` families exist only here;
`sim:requests_aborted_total` is how tests see that a proxy really closed an
upstream connection when its client left.
"""

from __future__ import annotations

from .config import SimConfig
from .engine import Stats


def _family(out: list[str], name: str, kind: str, help_: str,
            samples: list[tuple[str, float]]) -> None:
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        out.append(f"{name}{labels} {float(value)!r}")


def render_metrics(stats: Stats, cfg: SimConfig, kv_usage: float) -> bytes:
    """The exposition as it is now: every gauge is read at the moment of the scrape."""
    base = '{engine="0",model_name="%s"}' % cfg.model
    out: list[str] = []
    g = _family
    g(out, "vllm:num_requests_running", "gauge",
      "Number of requests in model execution batches.", [(base, stats.running)])
    g(out, "vllm:num_requests_waiting", "gauge",
      "Number of requests waiting to be processed.", [(base, stats.waiting)])
    # Blocks held by running requests / blocks (engine.KVCache); free cached ones are free.
    g(out, "vllm:kv_cache_usage_perc", "gauge",
      "KV-cache usage. 1 means 100 percent usage.", [(base, kv_usage)])
    g(out, "vllm:prefix_cache_queries_total", "counter",
      "Prefix cache queries, in terms of number of queried tokens.",
      [(base, stats.prefix_cache_queries)])
    g(out, "vllm:prefix_cache_hits_total", "counter",
      "Prefix cache hits, in terms of number of cached tokens.",
      [(base, stats.prefix_cache_hits)])
    g(out, "vllm:prompt_tokens_total", "counter",
      "Number of prefill tokens processed.", [(base, stats.prompt_tokens)])
    g(out, "vllm:prompt_tokens_cached_total", "counter",
      "Number of cached prompt tokens (local + external).",
      [(base, stats.prefix_cache_hits)])
    g(out, "vllm:generation_tokens_total", "counter",
      "Number of generation tokens processed.", [(base, stats.generation_tokens)])
    g(out, "vllm:request_success_total", "counter",
      "Count of successfully processed requests.",
      [('{engine="0",finished_reason="%s",model_name="%s"}' % (reason, cfg.model), count)
       for reason, count in stats.finished.items()])
    g(out, "vllm:cache_config_info", "gauge",
      "Information of the LLMEngine CacheConfig",
      [('{block_size="%d",enable_prefix_caching="%s",engine="0",num_gpu_blocks="%d"}' % (
          cfg.block_size, cfg.cache_blocks > 0, cfg.cache_blocks), 1)])
    g(out, "sim:requests_total", "counter",
      "Requests received on the generation endpoints.", [("", stats.requests)])
    g(out, "sim:requests_aborted_total", "counter",
      "Generations cancelled because the client connection closed.", [("", stats.aborted)])
    g(out, "sim:http_requests_total", "counter",
      "HTTP requests parsed, any path.", [("", stats.http_requests)])
    g(out, "sim:connections_total", "counter",
      "TCP connections accepted.", [("", stats.connections)])
    g(out, "sim:connections_open", "gauge",
      "TCP connections open now.", [("", stats.connections_open)])
    out.append("")
    return "\n".join(out).encode()
