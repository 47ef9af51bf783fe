"""The life of one generation request: knobs, admission, timing, faults.

Timing model: a request is admitted to the batch (or queues: engine.py says when),
looks its prompt up in the prefix cache, waits `ttft + prefill_per_token * uncached
prompt tokens` seconds, then emits one token every `itl` seconds. Streaming sends the
head and the role chunk with the first token, as vLLM does after prefill;
non-streaming answers once after ttft + tokens * itl. With ttft = itl = 0 and a free
slot the whole reply is rendered and written at once without a task: the benchmark
path. Two flags make a request's time depend on the others, as on a real vLLM where
one engine computes the whole batch (engine.Engine): `itl_per_seq` adds that many
seconds to each token, and to the time to first token, per other running request;
`shared_prefill` makes prefills take turns on the engine and pauses every running
request for each one's compute time.

Knobs, most specific first: body `max_tokens` (or `max_completion_tokens`),
then header `x-sim-tokens`, then `--tokens`; headers `x-sim-fault`,
`x-sim-fault-after`, `x-sim-ttft`, `x-sim-itl`, `x-sim-prefill-per-token`,
`x-sim-event-writes` (1 or 0) override the matching flags. `x-sim-stamp` (any value) asks for
two response fields of CLOCK_MONOTONIC nanoseconds (time.perf_counter_ns, one clock for every
process of a host): `x-sim-received-ns`, when the request reached the simulator, and, on a
stream, `x-sim-sent-ns`, when the head left with the first token. A client on the same host
takes from them how long the request and the first token spent in between (a proxy), free of
the simulator's own wait (bench/openloop.py).
Like the recorded tiny model every reply runs to its token count and ends with
finish_reason "length", unless a `stop` string turns up ("stop"). The context is
vLLM's: a prompt of max_model_len tokens or more is refused, and max_tokens is
clamped to what the prompt leaves. Requests are checked, and refused, with
vLLM's words (validate.py).

Faults: 500/503 answer at once with an error body. In a stream, die-after,
error-event and bad-framing strike after min(K, tokens) content tokens (K =
fault_after). Without a stream there is no token boundary to strike at:
die-after sends half the body, error-event answers 500 (vLLM's non-streaming
failure), bad-framing sends a chunked head and a non-hex chunk size. hang
takes a slot and says nothing until the client leaves, which counts as abort.
"""

from __future__ import annotations

import asyncio
from time import perf_counter_ns
from typing import Any, Coroutine

from .config import FAULTS, SimConfig
from .engine import Engine, Output, Seq, Stats, chat_words, prompt_words
from .render import DONE, ERROR_EVENT, LAST_CHUNK, Reply, chunk, error_body, seed_of
from .server import JSON, Connection, Request
from .validate import (BadRequest, check_content_type, check_context, max_tokens_of,
                       messages_of, parse_body, prompt_of, stop_strings)

SSE = b"text/event-stream; charset=utf-8"
IN_STREAM_FAULTS = frozenset({"die-after", "error-event", "bad-framing"})


class Knobs:
    """The effective timing and fault settings of one request."""

    __slots__ = ("fault", "fault_after", "ttft", "itl", "tokens", "prefill", "event_writes")

    def __init__(self, cfg: SimConfig, headers: dict[bytes, bytes]) -> None:
        self.fault = cfg.fault
        self.fault_after = cfg.fault_after
        self.ttft = cfg.ttft
        self.itl = cfg.itl
        self.tokens = cfg.tokens
        self.prefill = cfg.prefill_per_token  # seconds per uncached prompt token
        self.event_writes = cfg.event_writes  # a stream one write per event, even without delays
        if not any(name.startswith(b"x-sim-") for name in headers):
            return  # the common case: nothing to override
        try:
            if (v := headers.get(b"x-sim-fault")) is not None:
                self.fault = v.decode("ascii").strip().lower()
                if self.fault not in FAULTS:
                    raise ValueError(f"x-sim-fault must be one of {sorted(FAULTS)}")
            if (v := headers.get(b"x-sim-fault-after")) is not None:
                self.fault_after = max(0, int(v))
            if (v := headers.get(b"x-sim-ttft")) is not None:
                self.ttft = max(0.0, float(v))
            if (v := headers.get(b"x-sim-itl")) is not None:
                self.itl = max(0.0, float(v))
            if (v := headers.get(b"x-sim-prefill-per-token")) is not None:
                self.prefill = max(0.0, float(v))
            if (v := headers.get(b"x-sim-event-writes")) is not None:
                if v.strip() not in (b"0", b"1"):
                    raise ValueError("x-sim-event-writes must be 0 or 1")
                self.event_writes = v.strip() == b"1"
            if (v := headers.get(b"x-sim-tokens")) is not None:
                self.tokens = int(v)
                if self.tokens < 1:
                    raise ValueError("x-sim-tokens must be >= 1")
        except ValueError as e:
            raise BadRequest(f"bad x-sim-* header: {e}") from None


class Generator:
    def __init__(self, cfg: SimConfig, stats: Stats, engine: Engine) -> None:
        self.cfg = cfg
        self.stats = stats
        self.engine = engine
        # The answer needs no clock of its own: no ttft, no itl, no load-dependent time.
        self.instant = not engine.batching

    def _admitted(self, reply: Reply, seq: Seq) -> int:
        """Note what the prefix cache held for the admitted prompt; return its uncached tokens."""
        reply.cached = seq.hit_tokens
        reply.created_cache = seq.created_tokens
        return reply.prompt_tokens - reply.cached

    def load_header(self, req: Request) -> bytes:
        """vLLM's in-band load report (ORCA), asked for with endpoint-load-metrics-format.

        vLLM reads its Prometheus gauges when it writes the response, and its engine is
        done with the request by then: the values are the current ones, the finished
        request's blocks already free (the caller frees them first), requests it made
        room for still counted as waiting until the next step admits them. Only
        non-streaming chat and completions answers carry it, only for "text" or "json"
        (any case): a stream, an error or another format gets none. The two metrics and
        their order are vLLM 0.32's (tests/realvllm/recorded/details/load_*.http).
        """
        fmt = req.headers.get(b"endpoint-load-metrics-format")
        if fmt is None:
            return b""
        fmt = fmt.strip().lower()
        if fmt != b"text" and fmt != b"json":
            return b""
        waiting = float(self.stats.waiting)
        kv = self.engine.kv.usage()
        if fmt == b"json":
            return b'endpoint-load-metrics: JSON {"named_metrics": {"num_requests_waiting": ' \
                b'%r, "kv_cache_usage_perc": %r}}\r\n' % (waiting, kv)
        return b"endpoint-load-metrics: TEXT named_metrics.num_requests_waiting=%r, " \
            b"named_metrics.kv_cache_usage_perc=%r\r\n" % (waiting, kv)

    def handle(self, req: Request, conn: Connection, chat: bool
               ) -> Coroutine[Any, Any, None] | None:
        """Validate and answer now, or return the coroutine that will answer."""
        stats = self.stats
        stats.requests += 1
        cfg = self.cfg
        if b"x-sim-stamp" in req.headers:
            req.extra += b"x-sim-received-ns: %d\r\n" % perf_counter_ns()
        try:
            if cfg.strict_content_type:
                check_content_type(req.headers)
            body = parse_body(req.body)
            if chat:
                words = chat_words(messages_of(body))
            else:
                words = prompt_words(prompt_of(body))
            n = max_tokens_of(body)
            model = body.get("model") or cfg.model  # vLLM serves its model when none is named
            if model != cfg.model:
                conn.respond(404, req, error_body(
                    f"The model `{model}` does not exist. Valid aliases: {cfg.model}.",
                    "NotFoundError", 404, "model"))
                return None
            prompt_tokens = len(words)
            check_context(prompt_tokens, n, cfg.max_model_len)
            knobs = Knobs(cfg, req.headers)
        except BadRequest as e:
            conn.respond(400, req, error_body(str(e), e.type_, 400, e.param))
            return None
        if n is None:
            n = knobs.tokens
        n = min(n, cfg.max_model_len - prompt_tokens)

        fault = knobs.fault
        if fault in ("500", "503"):
            code = int(fault)
            kind = "InternalServerError" if code == 500 else "ServiceUnavailableError"
            conn.respond(code, req, error_body(f"simulated {code}", kind, code))
            return None

        stream = body.get("stream") is True
        usage = continuous = False
        if stream:
            options = body.get("stream_options")
            if isinstance(options, dict):
                usage = options.get("include_usage") is True
                continuous = options.get("continuous_usage_stats") is True
        rid = req.headers.get(b"x-request-id") if cfg.id_from_request_id else None
        reply = Reply(Output(seed_of(body), n), chat, model, prompt_tokens, cfg.prompt_tokens_details,
                      None if rid is None else rid.decode("latin-1"),
                      stop_strings(body) if "stop" in body else (), usage, continuous)
        n = reply.out.n  # a stop string may end it early
        stats.prompt_tokens += prompt_tokens
        engine = self.engine
        seq = Seq(words, n, engine.kv)
        if (fault == "none" and knobs.ttft == 0 and knobs.itl == 0 and knobs.prefill == 0
                and self.instant and not (stream and knobs.event_writes) and engine.try_admit(seq, now=True)):
            try:
                self._admitted(reply, seq)
                if stream:
                    conn.write(self._stream_bytes(req, conn, reply, 0, n, "none"))
                else:
                    engine.finish(seq)  # done before the answer leaves, as in vLLM
                    conn.respond(200, req, reply.body(), before=self.load_header(req))
                stats.generation_tokens += n
                stats.finished[reply.finish] += 1
            finally:
                engine.release(seq)
            return None
        return self._run(req, conn, reply, seq, stream, knobs)

    async def _run(self, req: Request, conn: Connection, reply: Reply, seq: Seq,
                   stream: bool, knobs: Knobs) -> None:
        """One admitted generation; a cancel here is the client's abort."""
        engine = self.engine
        admitted = finished = False
        try:
            await engine.admit(seq)
            admitted = True
            ttft = knobs.ttft + engine.prefill(knobs.prefill * self._admitted(reply, seq))
            if knobs.fault == "hang":
                await asyncio.get_running_loop().create_future()  # until the client leaves
            if ttft:
                await asyncio.sleep(ttft)
            if stream:
                await self._stream(req, conn, reply, seq, knobs)
            else:
                await self._whole(req, conn, reply, seq, knobs)
            finished = True
        except asyncio.CancelledError:
            if not finished:
                self.stats.aborted += 1
            raise
        finally:
            if admitted:
                engine.release(seq)

    def _stream_bytes(self, req: Request, conn: Connection, reply: Reply,
                      start: int, stop: int, fault: str) -> bytes:
        """Tokens start..stop-1 as chunks, with the head first and the end last."""
        parts = []
        if start == 0:
            sent = b"x-sim-sent-ns: %d\r\n" % perf_counter_ns() if b"x-sim-stamp" in req.headers else b""
            parts.append(conn.head(200, req, SSE, before=sent))
            if reply.chat:  # completions streams start with text at once
                parts.append(chunk(reply.role_event()))
        for i in range(start, stop):
            parts.append(chunk(reply.token_event(i)))
        if stop == reply.out.n or fault != "none":
            parts.append(self._stream_end(reply, fault))
        return b"".join(parts)

    def _stream_end(self, reply: Reply, fault: str) -> bytes:
        if fault == "error-event":
            return chunk(ERROR_EVENT) + chunk(DONE) + LAST_CHUNK
        if fault == "bad-framing":
            return b"zz\r\n"  # not a hex chunk size: the client's parser must fail
        if fault == "die-after":
            return b""
        return (chunk(reply.usage_event()) if reply.usage else b"") + chunk(DONE) + LAST_CHUNK

    async def _stream(self, req: Request, conn: Connection, reply: Reply, seq: Seq,
                      knobs: Knobs) -> None:
        n = reply.out.n
        fault = knobs.fault if knobs.fault in IN_STREAM_FAULTS else "none"
        stop = min(knobs.fault_after, n) if fault != "none" else n
        stats = self.stats
        engine = self.engine
        if knobs.itl == 0 and not engine.batching and not knobs.event_writes:
            conn.write(self._stream_bytes(req, conn, reply, 0, stop, fault))
            stats.generation_tokens += stop
        else:
            # The head, the role chunk and the first token leave together.
            first = min(1, stop)
            conn.write(self._stream_bytes(req, conn, reply, 0, first,
                                          fault if first == stop else "none"))
            stats.generation_tokens += first
            for i in range(first, stop):
                await engine.decode(knobs.itl)
                engine.grow(seq, i)
                conn.write(self._stream_bytes(req, conn, reply, i, i + 1,
                                              fault if i + 1 == stop else "none"))
                stats.generation_tokens += 1
                if conn.paused:
                    await conn.drain()
        self._end(conn, reply, fault)

    async def _whole(self, req: Request, conn: Connection, reply: Reply, seq: Seq,
                     knobs: Knobs) -> None:
        n = reply.out.n
        engine = self.engine
        if knobs.itl or engine.batching:
            # Wake at every KV block the reply fills: the blocks it holds, and the
            # tokens counted, grow while it is generated, as vLLM's do.
            size = engine.kv.block_size
            done = 0
            while done < n:
                step = min(n - done, size - (seq.prompt + done) % size)
                await engine.decode(knobs.itl, step)
                done += step
                engine.grow(seq, done - 1)  # the last token's KV is computed next step
                self.stats.generation_tokens += step
        else:
            self.stats.generation_tokens += n
        fault = knobs.fault
        if fault == "error-event":
            # Without a stream there is no in-band channel: vLLM answers 500.
            conn.respond(500, req, error_body(
                "simulated engine failure", "InternalServerError", 500))
            self.stats.finished["error"] += 1
            return
        body = reply.body()
        if fault == "die-after":
            conn.write(conn.head(200, req, JSON, len(body)) + body[: len(body) // 2])
        elif fault == "bad-framing":
            conn.write(conn.head(200, req, JSON) + b"zz\r\n")
        else:
            engine.finish(seq)  # done before the answer leaves: its blocks are free
            conn.respond(200, req, body, before=self.load_header(req))
        self._end(conn, reply, fault)

    def _end(self, conn: Connection, reply: Reply, fault: str) -> None:
        if fault == "die-after":
            conn.die()
        elif fault == "bad-framing":
            conn.close()
        else:
            key = "error" if fault == "error-event" else reply.finish
            self.stats.finished[key] += 1

