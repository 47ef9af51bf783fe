"""Routes: which handler answers which method and path, and the small endpoints."""

from __future__ import annotations

import time
from typing import Any, Callable, Coroutine

import orjson

from .config import VERSION, SimConfig
from .engine import WORDS, Engine, KVCache, Output, Stats, chat_words, prompt_words
from .generate import Generator
from .metrics import render_metrics
from .render import error_body
from .server import Connection, Request
from .validate import BadRequest, Invalid, check_content_type, missing, parse_body

# prometheus_client's text format as vLLM 0.32 labels it (the body is text 0.0.4).
PROMETHEUS = b"text/plain; version=1.0.0; charset=utf-8"
NOT_FOUND = b'{"detail":"Not Found"}'  # FastAPI's words, as vLLM answers them
NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'

Handler = Callable[[Request, Connection], "Coroutine[Any, Any, None] | None"]


def token_id(word: str) -> int:
    """A word's pseudo token id: stable, below a Llama-sized vocabulary."""
    return Output(word.encode(), 0).seed % 32000


class Api:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.stats = Stats()
        # One block is vLLM's reserved null block: num_gpu_blocks - 1 hold KV.
        kv = KVCache(cfg.block_size, max(0, cfg.cache_blocks - 1))
        self.engine = Engine(self.stats, cfg.max_concurrency, kv, cfg.itl_per_seq,
                             cfg.shared_prefill)
        self.generator = Generator(cfg, self.stats, self.engine)
        self.started = int(time.time())
        self.routes: dict[bytes, dict[bytes, Handler]] = {
            b"/v1/chat/completions": {b"POST": self.chat},
            b"/v1/completions": {b"POST": self.completions},
            b"/v1/models": {b"GET": self.models},
            b"/health": {b"GET": self.health},
            b"/version": {b"GET": self.version},
            b"/tokenize": {b"POST": self.tokenize},
            b"/detokenize": {b"POST": self.detokenize},
            b"/metrics": {b"GET": self.metrics},
        }
        # FastAPI's 405 names the allowed methods.
        self.allow = {path: b"allow: " + b", ".join(sorted(m)) + b"\r\n"
                      for path, m in self.routes.items()}

    def handle(self, req: Request, conn: Connection) -> Coroutine[Any, Any, None] | None:
        self.stats.http_requests += 1
        methods = self.routes.get(req.path)
        if methods is None:
            conn.respond(404, req, NOT_FOUND)
            return None
        handler = methods.get(req.method)
        if handler is None:
            conn.respond(405, req, NOT_ALLOWED, before=self.allow[req.path])
            return None
        return handler(req, conn)

    # -- small endpoints -------------------------------------------------------

    def health(self, req: Request, conn: Connection) -> None:
        conn.respond(200, req, b"", None)  # vLLM's /health has no content-type

    def version(self, req: Request, conn: Connection) -> None:
        conn.respond(200, req, b'{"version":"%b"}' % VERSION.encode())

    def metrics(self, req: Request, conn: Connection) -> None:
        conn.respond(200, req, render_metrics(self.stats, self.cfg, self.engine.kv.usage()),
                     PROMETHEUS)

    def models(self, req: Request, conn: Connection) -> None:
        model = self.cfg.model
        conn.respond(200, req, orjson.dumps({"object": "list", "data": [{
            "id": model, "object": "model", "created": self.started, "owned_by": "vllm",
            "root": model, "parent": None, "max_model_len": self.cfg.max_model_len,
            "permission": [{
                "id": "modelperm-" + Output(model.encode(), 0).hex_id,
                "object": "model_permission", "created": self.started,
                "allow_create_engine": False, "allow_sampling": True,
                "allow_logprobs": True, "allow_search_indices": False,
                "allow_view": True, "allow_fine_tuning": False, "organization": "*",
                "group": None, "is_blocking": False,
            }],
        }]}))

    def _json(self, req: Request) -> dict:
        if self.cfg.strict_content_type:
            check_content_type(req.headers)
        return parse_body(req.body)

    def tokenize(self, req: Request, conn: Connection) -> None:
        try:
            body = self._json(req)
            messages, prompt = body.get("messages"), body.get("prompt")
            if isinstance(messages, list):
                words = chat_words(messages)
            elif prompt is not None:
                words = prompt_words(prompt)
            else:
                raise Invalid(missing("prompt", body), missing("messages", body))
        except BadRequest as e:
            conn.respond(400, req, error_body(str(e), e.type_, 400, e.param))
            return
        # One pseudo token id per word, so counts agree with usage.prompt_tokens.
        tokens = [token_id(w) for w in words]
        conn.respond(200, req, orjson.dumps({
            "count": len(tokens), "max_model_len": self.cfg.max_model_len, "tokens": tokens,
            "token_strs": words if body.get("return_token_strs") is True else None,
        }))

    def detokenize(self, req: Request, conn: Connection) -> None:
        try:
            body = self._json(req)
            tokens = body.get("tokens")
            if tokens is None:
                raise Invalid(missing("tokens", body))
            if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
                raise BadRequest("`tokens` must be a list of token ids", "tokens")
        except BadRequest as e:
            conn.respond(400, req, error_body(str(e), e.type_, 400, e.param))
            return
        # Ids are not reversible hashes here: any id reads as one of the output words.
        text = "".join([WORDS[t % len(WORDS)] for t in tokens])
        conn.respond(200, req, orjson.dumps({"prompt": text}))

    def chat(self, req: Request, conn: Connection) -> Coroutine[Any, Any, None] | None:
        return self.generator.handle(req, conn, chat=True)

    def completions(self, req: Request, conn: Connection) -> Coroutine[Any, Any, None] | None:
        return self.generator.handle(req, conn, chat=False)
