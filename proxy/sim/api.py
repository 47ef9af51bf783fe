"""Routes: which handler answers which method and path, and the small endpoints."""

from __future__ import annotations

import time
from typing import Any, Callable, Coroutine

import orjson

from .config import MAX_MODEL_LEN, VERSION, SimConfig
from .engine import Output, Scheduler, Stats, chat_words, prompt_words
from .generate import BadRequest, Generator, parse_body
from .metrics import render_metrics
from .render import error_body
from .server import Connection, Request

PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
NOT_FOUND = b'{"detail":"Not Found"}'  # FastAPI's words, as vLLM answers them
NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'

Handler = Callable[[Request, Connection], "Coroutine[Any, Any, None] | None"]


class Api:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.scheduler = Scheduler(self.stats, cfg.max_concurrency)
        self.generator = Generator(cfg, self.stats, self.scheduler)
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
            body = parse_body(req.body)
            messages, prompt = body.get("messages"), body.get("prompt")
            if isinstance(messages, list):
                words = chat_words(messages)
            elif prompt is not None:
                words = prompt_words(prompt)
            else:
                raise BadRequest("either `prompt` or `messages` is required")
        except BadRequest as e:
            conn.respond(400, req, error_body(str(e), "BadRequestError", 400))
            return
        # One pseudo token id per word, so counts agree with usage.prompt_tokens.
        tokens = [Output(w.encode(), 0).seed % 32000 for w in words]
        conn.respond(200, req, orjson.dumps({
            "count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens,
            "token_strs": None,
        }))

    def chat(self, req: Request, conn: Connection) -> Coroutine[Any, Any, None] | None:
        return self.generator.handle(req, conn, chat=True)

    def completions(self, req: Request, conn: Connection) -> Coroutine[Any, Any, None] | None:
        return self.generator.handle(req, conn, chat=False)
