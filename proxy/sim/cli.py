"""`fleetproxy-sim`: flags into a SimConfig, serve on uvloop until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop

from .app import start_sim
from .config import FAULTS, SimConfig


def parse_args(argv: list[str] | None) -> SimConfig:
    d = SimConfig()
    p = argparse.ArgumentParser(prog="fleetproxy-sim", description="vLLM-compatible simulator")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port, help="0 picks a free port")
    p.add_argument("--model", default=d.model, help="served model name")
    p.add_argument("--tokens", type=int, default=d.tokens,
                   help="completion tokens when a request sets no max_tokens")
    p.add_argument("--max-model-len", type=int, default=d.max_model_len,
                   help="context length in tokens: longer prompts get vLLM's 400, "
                        "max_tokens is clamped to what is left")
    p.add_argument("--ttft", type=float, default=d.ttft, help="seconds to the first token")
    p.add_argument("--itl", type=float, default=d.itl, help="seconds between tokens")
    p.add_argument("--max-concurrency", "--max-num-seqs", dest="max_concurrency", type=int,
                   default=d.max_concurrency, metavar="N",
                   help="running requests (vLLM's --max-num-seqs); the rest, and requests "
                        "the KV cache cannot hold, wait in a queue")
    p.add_argument("--fault", default=d.fault, choices=sorted(FAULTS))
    p.add_argument("--fault-after", type=int, default=d.fault_after,
                   help="content tokens before die-after/error-event/bad-framing")
    p.add_argument("--name", default=d.name, help="backend name for the x-sim-backend header")
    p.add_argument("--block-size", type=int, default=d.block_size,
                   help="KV cache block, in tokens (words); only full blocks are cached "
                        "(vLLM: 16 on GPUs, 128 in the CPU build)")
    p.add_argument("--cache-blocks", type=int, default=d.cache_blocks,
                   help="KV cache size in blocks (vLLM's num_gpu_blocks, one reserved): "
                        "running requests hold blocks, free ones are the prefix cache (LRU); "
                        "0 turns both off")
    p.add_argument("--prefill-per-token", type=float, default=d.prefill_per_token,
                   help="seconds of extra time to first token per uncached prompt token")
    p.add_argument("--itl-per-seq", type=float, default=d.itl_per_seq,
                   help="seconds added to every token, and to the time to first token, per "
                        "other running request: vLLM's step computes the whole batch")
    p.add_argument("--shared-prefill", action="store_true",
                   help="prefills take turns on one engine and pause every running request "
                        "for their compute time, as vLLM's mixed prefill/decode steps do")
    p.add_argument("--prompt-tokens-details", action="store_true",
                   help="report usage.prompt_tokens_details.cached_tokens "
                        "(vLLM's --enable-prompt-tokens-details)")
    p.add_argument("--enable-request-id-headers", action="store_true",
                   help="echo X-Request-Id (or a generated one) on every response, as vLLM does")
    p.add_argument("--id-from-request-id", action="store_true",
                   help="name replies chatcmpl-<X-Request-Id> as vLLM does")
    p.add_argument("--strict-content-type", action="store_true",
                   help="refuse POST bodies not declared application/json, as vLLM does")
    p.add_argument("--event-writes", action="store_true",
                   help="write each event of a stream on its own even with --itl 0, as vLLM "
                        "does (default: a stream without delays leaves in one write)")
    p.add_argument("--keep-alive-timeout", type=float, default=d.keep_alive_timeout, metavar="S",
                   help="close a keep-alive connection idle this long, as uvicorn does "
                        "(vLLM's --timeout-keep-alive; 0: never)")
    a = p.parse_args(argv)
    try:
        return SimConfig(host=a.host, port=a.port, model=a.model, tokens=a.tokens,
                         ttft=a.ttft, itl=a.itl, max_concurrency=a.max_concurrency,
                         fault=a.fault, fault_after=a.fault_after, name=a.name,
                         block_size=a.block_size, cache_blocks=a.cache_blocks,
                         prefill_per_token=a.prefill_per_token,
                         itl_per_seq=a.itl_per_seq, shared_prefill=a.shared_prefill,
                         prompt_tokens_details=a.prompt_tokens_details,
                         max_model_len=a.max_model_len,
                         request_id_headers=a.enable_request_id_headers,
                         id_from_request_id=a.id_from_request_id,
                         strict_content_type=a.strict_content_type, event_writes=a.event_writes,
                         keep_alive_timeout=a.keep_alive_timeout)
    except ValueError as e:
        p.error(str(e))


async def serve(config: SimConfig) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # only flag it; the loop does the rest
    try:
        sim = await start_sim(config)
    except OSError as e:
        raise SystemExit(f"fleetproxy-sim: cannot listen on {config.host}:{config.port}: {e}")
    print(f"fleetproxy-sim listening on http://{config.host}:{sim.port} "
          f"model={config.model}", flush=True)
    await stop.wait()
    await sim.close()


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    uvloop.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
