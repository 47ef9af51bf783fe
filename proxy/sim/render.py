"""OpenAI/vLLM response bodies as bytes, key for key as recorded from vLLM 0.32.

Streams are built from per-request byte prefixes and pre-escaped words, so a
token costs a few concatenations instead of a JSON encode. The key order and
the null fields per chunk kind follow shared/realvllm/recorded/stream_raw.http:
the role chunk carries prompt_token_ids/prompt_text, content chunks carry
token_ids, the finish chunk adds stop_reason, the usage chunk has "choices": [].
"""

from __future__ import annotations

import time

import orjson

from .config import VERSION
from .engine import WORDS, WORDS_JSON, Output

FINGERPRINT = "vllm-" + VERSION
DONE = b"data: [DONE]\n\n"
LAST_CHUNK = b"0\r\n\r\n"  # the terminating zero-size chunk, empty trailers
# What vLLM streams when the engine fails after the response started (HTTP 200).
ERROR_EVENT = (
    b'data: {"error": {"object":"error","message":"simulated engine failure",'
    b'"type":"InternalServerError","param":null,"code":500}}\n\n'
)


def chunk(event: bytes) -> bytes:
    """One HTTP/1.1 chunk (RFC 9112 section 7.1) holding one SSE event."""
    return b"%x\r\n%b\r\n" % (len(event), event)


def error_body(message: str, type_: str, code: int, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


class Reply:
    """Renders one request's reply, streamed or whole, from its Output."""

    __slots__ = ("out", "chat", "model", "prompt_tokens", "created", "_head")

    def __init__(self, out: Output, chat: bool, model: str, prompt_tokens: int) -> None:
        self.out = out
        self.chat = chat
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.created = int(time.time())
        kind = b'"chatcmpl-%b","object":"chat.completion.chunk"' if chat else (
            b'"cmpl-%b","object":"text_completion"'
        )
        self._head = b'data: {"id":%b,"created":%d,"model":%b,"choices":[' % (
            kind % out.hex_id.encode(), self.created, orjson.dumps(model)
        )

    @property
    def id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.out.hex_id

    # -- streaming -----------------------------------------------------------

    def role_event(self) -> bytes:
        return self._head + (
            b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
            b'"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'
        )

    def token_event(self, i: int) -> bytes:
        """Token i; the last one rides in the finish chunk, as vLLM sends it."""
        word = WORDS_JSON[self.out.token(i)]
        last = i == self.out.n - 1
        if self.chat:
            tail = (
                b'},"logprobs":null,"finish_reason":"length","stop_reason":null,'
                b'"token_ids":null}]}\n\n'
                if last
                else b'},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
            )
            return self._head + b'{"index":0,"delta":{"content":' + word + tail
        reason = b'"length"' if last else b"null"
        return self._head + (
            b'{"index":0,"text":%b,"logprobs":null,"finish_reason":%b,'
            b'"stop_reason":null}]}\n\n' % (word, reason)
        )

    def usage_event(self) -> bytes:
        n = self.out.n
        usage = b'],"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
            self.prompt_tokens, self.prompt_tokens + n, n
        )
        if self.chat:
            return self._head + usage + b',"system_fingerprint":"%b"}\n\n' % FINGERPRINT.encode()
        return self._head + usage + b"}\n\n"

    # -- whole body ------------------------------------------------------------

    def body(self) -> bytes:
        n = self.out.n
        text = "".join([WORDS[t] for t in self.out.tokens()])
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + n,
            "completion_tokens": n,
            "prompt_tokens_details": None,
        }
        if not self.chat:
            return orjson.dumps({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                    "stop_reason": None, "token_ids": None, "prompt_logprobs": None,
                    "prompt_token_ids": None,
                }],
                "service_tier": None, "system_fingerprint": FINGERPRINT, "usage": usage,
                "kv_transfer_params": None,
            })
        usage["completion_tokens_details"] = None
        return orjson.dumps({
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant", "content": text, "refusal": None,
                    "annotations": None, "audio": None, "function_call": None,
                    "reasoning": None,
                },
                "logprobs": None, "finish_reason": "length", "stop_reason": None,
                "token_ids": None, "routed_experts": None,
            }],
            "service_tier": None, "system_fingerprint": FINGERPRINT, "usage": usage,
            "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None,
            "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
        })
