"""Routes and the life of one generation request, faults included.

Timing model: a request is admitted to a running slot (or queues), waits `ttft`
seconds, then emits one token every `itl` seconds. Streaming sends the head and
the role chunk with the first token, as vLLM does after prefill; non-streaming
answers once after ttft + tokens * itl. With ttft = itl = 0 and a free slot the
whole reply is rendered and written at once without a task: the benchmark path.

Knobs, most specific first: body `max_tokens` (or `max_completion_tokens`),
then header `x-sim-tokens`, then `--tokens`; headers `x-sim-fault`,
`x-sim-fault-after`, `x-sim-ttft`, `x-sim-itl` override the matching flags.
Like the recorded tiny model every reply runs to its token count and ends with
finish_reason "length"; there is no stop-string matching and no context cap.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Coroutine

import orjson

from .config import FAULTS, MAX_MODEL_LEN, VERSION, SimConfig
from .engine import Output, Scheduler, Stats, prompt_words
from .metrics import render_metrics
from .render import DONE, ERROR_EVENT, LAST_CHUNK, Reply, chunk, error_body
from .server import JSON, Connection, Request

SSE = b"text/event-stream; charset=utf-8"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
NOT_FOUND = b'{"detail":"Not Found"}'
NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'
IN_STREAM_FAULTS = frozenset({"die-after", "error-event", "bad-framing"})

Handler = Callable[[Request, Connection], "Coroutine[Any, Any, None] | None"]


class BadRequest(Exception):
    """The client's fault: rendered as vLLM's 400 error body."""


class Knobs:
    """The effective timing and fault settings of one request."""

    __slots__ = ("fault", "fault_after", "ttft", "itl", "tokens")

    def __init__(self, cfg: SimConfig, headers: dict[bytes, bytes]) -> None:
        self.fault = cfg.fault
        self.fault_after = cfg.fault_after
        self.ttft = cfg.ttft
        self.itl = cfg.itl
        self.tokens = cfg.tokens
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
            if (v := headers.get(b"x-sim-tokens")) is not None:
                self.tokens = int(v)
                if self.tokens < 1:
                    raise ValueError("x-sim-tokens must be >= 1")
        except ValueError as e:
            raise BadRequest(f"bad x-sim-* header: {e}") from None


class Api:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.scheduler = Scheduler(self.stats, cfg.max_concurrency)
        self.started = int(time.time())
        self.routes: dict[bytes, dict[bytes, Handler]] = {
            b"/v1/chat/completions": {b"POST": self.chat},
            b"/v1/completions": {b"POST": self.completions},
            b"/v1/models": {b"GET": self.models},
            b"/health": {b"GET": self.health},
            b"/version": {b"GET": self.version},
            b"/tokenize": {b"POST": self.tokenize},
            b"/metrics": {b"GET": self.metrics},
        }

    def handle(self, req: Request, conn: Connection) -> Coroutine[Any, Any, None] | None:
        self.stats.http_requests += 1
        methods = self.routes.get(req.path)
        if methods is None:
            conn.respond(404, req, NOT_FOUND)
            return None
        handler = methods.get(req.method)
        if handler is None:
            conn.respond(405, req, NOT_ALLOWED)
            return None
        return handler(req, conn)

    # -- small endpoints -------------------------------------------------------

    def health(self, req: Request, conn: Connection) -> None:
        conn.respond(200, req, b"")

    def version(self, req: Request, conn: Connection) -> None:
        conn.respond(200, req, b'{"version":"%b"}' % VERSION.encode())

    def metrics(self, req: Request, conn: Connection) -> None:
        conn.respond(200, req, render_metrics(self.stats, self.cfg), PROMETHEUS)

    def models(self, req: Request, conn: Connection) -> None:
        model = self.cfg.model
        conn.respond(200, req, orjson.dumps({"object": "list", "data": [{
            "id": model, "object": "model", "created": self.started, "owned_by": "vllm",
            "root": model, "parent": None, "max_model_len": MAX_MODEL_LEN,
            "permission": [{
                "id": "modelperm-" + Output(model.encode(), 0).hex_id,
                "object": "model_permission", "created": self.started,
                "allow_create_engine": False, "allow_sampling": True,
                "allow_logprobs": True, "allow_search_indices": False,
                "allow_view": True, "allow_fine_tuning": False, "organization": "*",
                "group": None, "is_blocking": False,
            }],
        }]}))

    def tokenize(self, req: Request, conn: Connection) -> None:
        try:
            body = self._parse(req.body)
            source = body.get("messages", body.get("prompt"))
            if source is None:
                raise BadRequest("either `prompt` or `messages` is required")
        except BadRequest as e:
            conn.respond(400, req, error_body(str(e), "BadRequestError", 400))
            return
        # One pseudo token id per word, so counts agree with usage.prompt_tokens.
        words = prompt_words(source)
        tokens = [Output(w.encode(), 0).seed % 32000 for w in words]
        conn.respond(200, req, orjson.dumps({
            "count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens,
            "token_strs": None,
        }))

    # -- generation ----------------------------------------------------------------

    def chat(self, req: Request, conn: Connection) -> Coroutine[Any, Any, None] | None:
        return self._generate(req, conn, chat=True)

    def completions(self, req: Request, conn: Connection) -> Coroutine[Any, Any, None] | None:
        return self._generate(req, conn, chat=False)

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"JSON decode error: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            raise BadRequest("`model` is required")
        return body

    def _generate(self, req: Request, conn: Connection, chat: bool
                  ) -> Coroutine[Any, Any, None] | None:
        stats = self.stats
        stats.requests += 1
        try:
            body = self._parse(req.body)
            model = body["model"]
            if model != self.cfg.model:
                conn.respond(404, req, error_body(
                    f"The model `{model}` does not exist.", "NotFoundError", 404, "model"))
                return None
            if chat:
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise BadRequest("`messages` must be a non-empty list")
                prompt_tokens = len(prompt_words(messages))
            else:
                prompt = body.get("prompt")
                if prompt is None:
                    raise BadRequest("`prompt` is required")
                prompt_tokens = len(prompt_words(prompt))
            knobs = Knobs(self.cfg, req.headers)
            n = body.get("max_tokens")
            if n is None:
                n = body.get("max_completion_tokens")
            if n is None:
                n = knobs.tokens
            elif type(n) is not int or n < 1:
                raise BadRequest("max_tokens must be an integer >= 1")
        except BadRequest as e:
            conn.respond(400, req, error_body(str(e), "BadRequestError", 400))
            return None

        fault = knobs.fault
        if fault in ("500", "503"):
            code = int(fault)
            kind = "InternalServerError" if code == 500 else "ServiceUnavailableError"
            conn.respond(code, req, error_body(f"simulated {code}", kind, code))
            return None

        stream = body.get("stream") is True
        options = body.get("stream_options")
        usage = stream and isinstance(options, dict) and options.get("include_usage") is True
        reply = Reply(Output(req.body, n), chat, model, prompt_tokens)
        stats.prompt_tokens += prompt_tokens
        if (fault == "none" and knobs.ttft == 0 and knobs.itl == 0
                and self.scheduler.try_admit()):
            try:
                if stream:
                    conn.write(self._stream_bytes(req, conn, reply, usage, 0, n, "none"))
                else:
                    conn.respond(200, req, reply.body())
                stats.generation_tokens += n
                stats.finished["length"] += 1
            finally:
                self.scheduler.release()
            return None
        return self._run(req, conn, reply, stream, usage, knobs)

    async def _run(self, req: Request, conn: Connection, reply: Reply, stream: bool,
                   usage: bool, knobs: Knobs) -> None:
        """One admitted generation; a cancel here is the client's abort."""
        admitted = finished = False
        try:
            await self.scheduler.admit()
            admitted = True
            if knobs.fault == "hang":
                await asyncio.get_running_loop().create_future()  # until the client leaves
            if knobs.ttft:
                await asyncio.sleep(knobs.ttft)
            if stream:
                await self._stream(req, conn, reply, usage, knobs)
            else:
                await self._whole(req, conn, reply, knobs)
            finished = True
        except asyncio.CancelledError:
            if not finished:
                self.stats.aborted += 1
            raise
        finally:
            if admitted:
                self.scheduler.release()

    def _stream_bytes(self, req: Request, conn: Connection, reply: Reply, usage: bool,
                      start: int, stop: int, fault: str) -> bytes:
        """Tokens start..stop-1 as chunks, with the head first and the end last."""
        parts = []
        if start == 0:
            parts.append(conn.head(200, req, SSE))
            if reply.chat:  # completions streams start with text at once
                parts.append(chunk(reply.role_event()))
        for i in range(start, stop):
            parts.append(chunk(reply.token_event(i)))
        if stop == reply.out.n or fault != "none":
            parts.append(self._stream_end(reply, usage, fault))
        return b"".join(parts)

    def _stream_end(self, reply: Reply, usage: bool, fault: str) -> bytes:
        if fault == "error-event":
            return chunk(ERROR_EVENT) + chunk(DONE) + LAST_CHUNK
        if fault == "bad-framing":
            return b"zz\r\n"  # not a hex chunk size: the client's parser must fail
        if fault == "die-after":
            return b""
        return (chunk(reply.usage_event()) if usage else b"") + chunk(DONE) + LAST_CHUNK

    async def _stream(self, req: Request, conn: Connection, reply: Reply, usage: bool,
                      knobs: Knobs) -> None:
        n = reply.out.n
        fault = knobs.fault if knobs.fault in IN_STREAM_FAULTS else "none"
        stop = min(knobs.fault_after, n) if fault != "none" else n
        stats = self.stats
        if knobs.itl == 0:
            conn.write(self._stream_bytes(req, conn, reply, usage, 0, stop, fault))
            stats.generation_tokens += stop
        else:
            # The head, the role chunk and the first token leave together.
            first = min(1, stop)
            conn.write(self._stream_bytes(req, conn, reply, usage, 0, first,
                                          fault if first == stop else "none"))
            stats.generation_tokens += first
            for i in range(first, stop):
                await asyncio.sleep(knobs.itl)
                conn.write(self._stream_bytes(req, conn, reply, usage, i, i + 1,
                                              fault if i + 1 == stop else "none"))
                stats.generation_tokens += 1
                if conn.paused:
                    await conn.drain()
        self._end(conn, fault)

    async def _whole(self, req: Request, conn: Connection, reply: Reply, knobs: Knobs) -> None:
        n = reply.out.n
        if knobs.itl:
            await asyncio.sleep(n * knobs.itl)
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
            conn.respond(200, req, body)
        self._end(conn, fault)

    def _end(self, conn: Connection, fault: str) -> None:
        if fault == "die-after":
            conn.die()
        elif fault == "bad-framing":
            conn.close()
        else:
            key = "error" if fault == "error-event" else "length"
            self.stats.finished[key] += 1

