"""The proxy's own CPU per request, without the kernel: the real data path in one process.

    python bench/micro/path.py [--requests 20000] [--config FILE] [--profile] [--stream]

Why. On a shared machine CPU per request measured end to end (``python -m bench``) moves by
20-30% between runs, and most of it is the kernel's (loopback TCP) and uvloop's; what the proxy
can change is its own Python. This drives the real ``Downstream``, ``Exchange``, router and
observer over in-memory transports: each request is one ``data_received`` of the request on
the client side and the response's reads on the upstream side (one read for a JSON answer; one
read per event for a stream, as vLLM writes them), on a pooled upstream connection. Nothing
else is timed, so two runs of one tree agree within a few percent, and a change to the hot path
shows as a number (``--profile``: where it goes, by cProfile, which inflates every call alike).
"""

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import uvloop  # noqa: E402

from proxy.config import build, read_file  # noqa: E402
from proxy.http.downstream import Downstream  # noqa: E402
from proxy.http.upstream import UpstreamConnection  # noqa: E402
from proxy.observe import Observer  # noqa: E402
from proxy.process.worker import GC_THRESHOLDS, Context  # noqa: E402
from proxy.routing.router import Router  # noqa: E402

CHAT = b'{"model":"tiny","messages":[{"role":"user","content":"Say hello to the fleet"}],"max_tokens":16}'
# bench/lua/chat_system.lua's body: a 1.5 KiB system prompt, so cache_aware places it by its
# prefix (CHAT's prompt is shorter than a block, and takes the least-request path): ``--system``.
_RULE = b"Answer in the user's language, cite the retrieved documents by title, and say when they do not cover the question. "
SYSTEM = (b'{"model":"tiny","messages":[{"role":"system","content":"You are the fleet\'s support assistant. ' + _RULE * 13
          + b'"},{"role":"user","content":"How do I drain one backend without dropping streams?"}],"max_tokens":16}')
LOAD = b"endpoint-load-metrics: TEXT named_metrics.kv_cache_usage_perc=0.01, named_metrics.num_requests_waiting=0\r\n"
ANSWER = (
    b'{"id":"chatcmpl-0","object":"chat.completion","created":1764000000,"model":"tiny","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hello fleet hello fleet hello fleet hello fleet hello fleet hello",'
    b'"refusal":null,"tool_calls":[]},"logprobs":null,"finish_reason":"length","stop_reason":null}],'
    b'"usage":{"prompt_tokens":12,"total_tokens":28,"completion_tokens":16,"prompt_tokens_details":null}}'
)


# The fields the openai Python SDK sends with a chat completion (besides Host, Content-Type and
# Content-Length), as a real client's request carries them: ``--sdk-head``.
SDK_FIELDS = (
    b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\n"
    b"User-Agent: OpenAI/Python 1.99.0\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.99.0\r\n"
    b"X-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\n"
    b"X-Stainless-Runtime-Version: 3.11.7\r\nAuthorization: Bearer sk-test\r\nX-Stainless-Async: false\r\n"
    b"X-Stainless-Retry-Count: 0\r\nX-Stainless-Read-Timeout: 600\r\n"
)


def request(body, sdk=False):
    return b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        SDK_FIELDS if sdk else b"", len(body), body)


def json_response():
    return [b"HTTP/1.1 200 OK\r\ndate: Thu, 03 Dec 2026 10:00:00 GMT\r\nserver: uvicorn\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n%s\r\n%s" % (len(ANSWER), LOAD, ANSWER)]


def stream_response(tokens=16, usage=False):
    """vLLM's stream, one read per event; ``usage``: as it answers a request with include_usage
    (the proxy adds it when observing): a usage event before [DONE], which takes the
    fingerprint the finish event carries otherwise (tests/realvllm/recorded/details)."""

    def chunk(payload):
        return b"%x\r\n%s\r\n" % (len(payload), payload)

    event = (b'data: {"id":"chatcmpl-0","object":"chat.completion.chunk","created":1764000000,"model":"tiny",'
             b'"choices":[{"index":0,"delta":{"content":" fleet"},"logprobs":null,"finish_reason":null}]}\n\n')
    head = (b"HTTP/1.1 200 OK\r\ndate: Thu, 03 Dec 2026 10:00:00 GMT\r\nserver: uvicorn\r\n"
            b"content-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n%s\r\n" % LOAD)
    reads = [head + chunk(event)]
    reads += [chunk(event) for _ in range(tokens - 1)]
    finish = event.replace(b'"finish_reason":null', b'"finish_reason":"length"')
    fingerprint = b',"system_fingerprint":"vllm-0.32.0"}\n\n'
    if not usage:
        reads.append(chunk(finish[:-3] + fingerprint))
        reads.append(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return reads
    reads.append(chunk(finish))
    reads.append(chunk(b'data: {"id":"chatcmpl-0","object":"chat.completion.chunk","created":1764000000,"model":"tiny",'
                       b'"choices":[],"usage":{"prompt_tokens":12,"total_tokens":28,"completion_tokens":16,'
                       b'"prompt_tokens_details":null}' + fingerprint)
                 + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return reads
    return reads


class Sink(asyncio.Transport):
    """A transport that takes every write and keeps only a count."""

    def __init__(self):
        super().__init__()
        self.written = 0
        self.closed = False

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_write_buffer_size(self):
        return 0

    def write(self, data):
        self.written += len(data)

    def writelines(self, parts):
        for p in parts:
            self.written += len(p)

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def can_write_eof(self):
        return False


def setup(cfg, loop):
    router = Router(cfg, loop)
    ctx = Context(cfg, loop, router)
    ctx.observe = Observer.build(cfg, loop)
    endpoint = router.endpoints[0]
    conn = UpstreamConnection(endpoint.pool)
    conn.connection_made(Sink())
    endpoint.pool.conns.add(conn)
    endpoint.pool.release(conn)
    down = Downstream(ctx)
    client = Sink()
    down.connection_made(client)
    return ctx, down, conn, client


def run(cfg, n, stream, profile, sdk=False, system=False):
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    ctx, down, conn, client = setup(cfg, loop)
    body = SYSTEM if system else CHAT
    req = request(body[:-1] + b',"stream":true}' if stream else body, sdk)
    asks = ctx.observe is not None and ctx.observe.stream_usage  # the proxy adds include_usage
    reads = stream_response(usage=asks) if stream else json_response()

    def one():
        down.data_received(req)
        for data in reads:
            conn.data_received(data)

    for _ in range(500):  # warm up: caches, series, first-request paths
        one()
    assert conn.exchange is None and down.active is None, "a request did not complete"
    before = client.written
    gc.collect()  # the collector's pace a worker sets once serving (process/worker.py)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    # CPU time of this process: a neighbour taking the CPU away does not count against us.
    t0 = time.process_time()
    for _ in range(n):
        one()
    took = time.process_time() - t0
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    assert client.written > before and not client.closed
    if ctx.observe is not None:
        ctx.observe.close()
    loop.close()
    return took / n * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--config", help="a config file (its backends are replaced by one stub endpoint)")
    p.add_argument("--stream", action="store_true", help="a 16-token stream, one read per event")
    p.add_argument("--sdk-head", action="store_true", help="the request head the openai SDK sends (17 fields, not 3)")
    p.add_argument("--system", action="store_true", help="a chat with a 1.5 KiB system prompt (bench/lua/chat_system.lua)")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    raw = read_file(args.config) if args.config else {}
    raw["backends"] = ["http://127.0.0.1:9"]
    raw.setdefault("log_level", "warning")
    cfg = build(raw)
    results = [run(cfg, args.requests, args.stream, args.profile and i == 0, args.sdk_head, args.system)
               for i in range(args.rounds)]
    print(f"{'stream' if args.stream else 'json'}: {min(results):.2f} us/request of the proxy's Python "
          f"(best of {args.rounds}: {', '.join(f'{r:.2f}' for r in results)})")


if __name__ == "__main__":
    main()
