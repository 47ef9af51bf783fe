"""OpenAI/vLLM response bodies as bytes, key for key as recorded from vLLM 0.32.

Streams are built from per-request byte prefixes and pre-escaped words, so a
token costs a few concatenations instead of a JSON encode. The key order and
the null fields per chunk kind follow tests/data/vllm/stream_raw.http
and what a live vLLM 0.32 answered (tests/test_sim_fidelity.py holds both):
the role chunk carries prompt_token_ids/prompt_text, content chunks carry
token_ids (completions chunks also prompt_token_ids), the finish chunk adds
stop_reason, the usage chunk has "choices": [], and `system_fingerprint` rides
on the last chunk before [DONE]: the usage chunk, else the finish chunk.
"""

from __future__ import annotations

import time

import orjson

from .config import VERSION
from .engine import WORDS, WORDS_JSON, Output

FINGERPRINT = b',"system_fingerprint":"vllm-' + VERSION.encode() + b'"'
DONE = b"data: [DONE]\n\n"
LAST_CHUNK = b"0\r\n\r\n"  # the terminating zero-size chunk, empty trailers
# What vLLM streams when the engine fails after the response started (HTTP 200).
ERROR_EVENT = (
    b'data: {"error": {"object":"error","message":"simulated engine failure",'
    b'"type":"InternalServerError","param":null,"code":500}}\n\n'
)


def seed_of(body: dict) -> bytes:
    """The bytes a reply's ids and tokens are drawn from. vLLM's tokens do not depend on
    stream_options (nor on the body's spacing), and a proxy may add include_usage to count
    tokens: the same request with or without it must say the same words."""
    return orjson.dumps({k: v for k, v in body.items() if k != "stream_options"})


def chunk(event: bytes) -> bytes:
    """One HTTP/1.1 chunk (RFC 9112 section 7.1) holding one SSE event."""
    return b"%x\r\n%b\r\n" % (len(event), event)


def error_body(message: str, type_: str, code: int, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


class Reply:
    """Renders one request's reply, streamed or whole, from its Output.

    `usage` is stream_options.include_usage, `continuous` its continuous_usage_stats
    (vLLM honours the second only with the first). `stops` are the request's stop
    strings: the first one the text reaches ends the reply there with
    finish_reason "stop"; the tokens up to the one that completed it still count.
    """

    __slots__ = ("out", "chat", "model", "prompt_tokens", "cached", "created_cache",
                 "details", "usage", "continuous", "finish", "stop", "stop_reason", "pieces",
                 "id", "created", "_head")

    def __init__(self, out: Output, chat: bool, model: str, prompt_tokens: int,
                 details: bool = False, request_id: str | None = None,
                 stops: tuple[str, ...] = (), usage: bool = False,
                 continuous: bool = False) -> None:
        self.out = out
        self.chat = chat
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.cached = 0  # prompt tokens found in the prefix cache, set at admission
        self.created_cache = 0  # prompt tokens newly cached, set at admission
        self.details = details  # report them, like vLLM's --enable-prompt-tokens-details
        self.usage = usage
        self.continuous = usage and continuous
        self.finish = "length"
        self.stop: str | None = None  # the stop string that ended the reply
        self.stop_reason = b"null"  # the same as JSON
        self.pieces: list[bytes] | None = None  # JSON text per token when a stop cut it
        if stops:
            self._apply_stop(stops)
        self.created = int(time.time())
        # vLLM names the request after a client's X-Request-Id when there is one.
        self.id = ("chatcmpl-" if chat else "cmpl-") + (
            out.hex_id if request_id is None else request_id)
        kind = b"chat.completion.chunk" if chat else b"text_completion"
        self._head = b'data: {"id":%b,"object":"%b","created":%d,"model":%b,"choices":[' % (
            orjson.dumps(self.id), kind, self.created, orjson.dumps(model)
        )

    def _apply_stop(self, stops: tuple[str, ...]) -> None:
        text = ""
        bounds = []
        for i in range(self.out.n):
            start = len(text)
            text += WORDS[self.out.token(i)]
            bounds.append(start)
            hit: tuple[int, str] | None = None
            for s in stops:  # vLLM searches the new text and the tail a match may span
                j = text.find(s, max(0, start - len(s) + 1))
                if j >= 0 and (hit is None or j < hit[0]):
                    hit = (j, s)
            if hit is not None:
                cut, s = hit
                bounds.append(len(text))
                self.pieces = [orjson.dumps(text[min(a, cut):min(b, cut)])
                               for a, b in zip(bounds, bounds[1:])]
                self.out.n = i + 1
                self.finish = "stop"
                self.stop = s
                self.stop_reason = orjson.dumps(s)
                return

    def _word(self, i: int) -> bytes:
        return WORDS_JSON[self.out.token(i)] if self.pieces is None else self.pieces[i]

    def text(self) -> str:
        if self.pieces is None:
            return "".join([WORDS[t] for t in self.out.tokens()])
        return "".join([orjson.loads(p) for p in self.pieces])

    # -- streaming -----------------------------------------------------------

    def _running_usage(self, done: int) -> bytes:
        total = self.prompt_tokens + done
        if self.chat:
            return b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d,' \
                   b'"completion_tokens_details":null}' % (self.prompt_tokens, total, done)
        return b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
            self.prompt_tokens, total, done)

    def role_event(self) -> bytes:
        return self._head + (
            b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
            b'"finish_reason":null}]'
        ) + (self._running_usage(0) if self.continuous else b"") + (
            b',"prompt_token_ids":null,"prompt_text":null}\n\n')

    def token_event(self, i: int) -> bytes:
        """Token i; the last one rides in the finish chunk, as vLLM sends it."""
        word = self._word(i)
        last = i == self.out.n - 1
        if self.chat:
            body = self._head + b'{"index":0,"delta":{"content":' + word + (
                b'},"logprobs":null,"finish_reason":"%b","stop_reason":%b,"token_ids":null}]'
                % (self.finish.encode(), self.stop_reason)
                if last else b'},"logprobs":null,"finish_reason":null,"token_ids":null}]'
            )
        else:
            body = self._head + b'{"index":0,"text":%b,"logprobs":null,"finish_reason":%b,' \
                b'"stop_reason":%b,"prompt_token_ids":null,"token_ids":null}]' % (
                    word, b'"%b"' % self.finish.encode() if last else b"null",
                    self.stop_reason if last else b"null")
        if self.continuous:
            body += self._running_usage(i + 1)
        if last and not self.usage:
            body += FINGERPRINT
        return body + b"}\n\n"

    def usage_event(self) -> bytes:
        n = self.out.n
        usage = b'],"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d' % (
            self.prompt_tokens, self.prompt_tokens + n, n
        )
        if self.details:  # vLLM leaves out what is None here: completions' created count
            usage += b',"prompt_tokens_details":{"cached_tokens":%d' % self.cached
            usage += b',"created_cache_tokens":%d}' % self.created_cache if self.chat else b"}"
        return self._head + usage + b"}" + FINGERPRINT + b"}\n\n"

    # -- whole body ------------------------------------------------------------

    def body(self) -> bytes:
        n = self.out.n
        details = None
        if self.details:
            details = {"cached_tokens": self.cached,
                       "created_cache_tokens": self.created_cache if self.chat else None,
                       "multimodal_tokens": None}
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + n,
            "completion_tokens": n,
            "prompt_tokens_details": details,
            "completion_tokens_details": None,
        }
        stop_reason = self.stop
        if not self.chat:
            return orjson.dumps({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0, "text": self.text(), "logprobs": None,
                    "finish_reason": self.finish, "stop_reason": stop_reason, "token_ids": None,
                    "prompt_logprobs": None, "prompt_token_ids": None, "routed_experts": None,
                }],
                "service_tier": None, "system_fingerprint": "vllm-" + VERSION, "usage": usage,
                "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
            })
        return orjson.dumps({
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant", "content": self.text(), "refusal": None,
                    "annotations": None, "audio": None, "function_call": None,
                    "reasoning": None,
                },
                "logprobs": None, "finish_reason": self.finish, "stop_reason": stop_reason,
                "token_ids": None, "routed_experts": None,
            }],
            "service_tier": None, "system_fingerprint": "vllm-" + VERSION, "usage": usage,
            "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None,
            "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
        })
