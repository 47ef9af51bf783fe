"""Request checks, refused with the status, words and shape real vLLM uses.

vLLM refuses in two layers, and both are mirrored here: FastAPI/pydantic first
(malformed JSON, missing or mistyped fields: `"type": "Bad Request"`, `param` =
the field's location such as `body.messages`, the message a repr of pydantic's
error list), then vLLM's own checks (`"type": "BadRequestError"`, `param` = the
field, the message ending in `(parameter=..., value=...)`). The texts were read
off vLLM 0.32's CPU build answering the same requests.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


class BadRequest(Exception):
    """The client's fault: rendered as vLLM's 400 error body."""

    type_ = "BadRequestError"

    def __init__(self, message: str, param: str | None = None, type_: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if type_ is not None:
            self.type_ = type_


class Invalid(BadRequest):
    """pydantic's refusal: one or more (kind, location, message, input) errors."""

    type_ = "Bad Request"

    def __init__(self, *errors: dict[str, Any]) -> None:
        count = f"{len(errors)} validation error{'s' if len(errors) > 1 else ''}:"
        super().__init__("\n  ".join([count] + [repr(e) for e in errors]), errors[0]["loc"])


def _error(kind: str, field: str, msg: str, value: Any) -> dict[str, Any]:
    shown = f"<dict of {len(value)} items>" if isinstance(value, dict) else str(value)
    return {"type": kind, "loc": f"body.{field}", "msg": msg, "input": shown}


def missing(field: str, body: dict[str, Any]) -> dict[str, Any]:
    return _error("missing", field, "Field required", body)


def check_content_type(headers: dict[bytes, bytes]) -> None:
    """vLLM reads a POST body only when it is declared JSON (any case, any parameters)."""
    value = headers.get(b"content-type", b"")
    if value.split(b";", 1)[0].strip().lower() != b"application/json":
        raise BadRequest("1 validation error:\n  Unsupported Media Type: Only 'application/json' "
                         "is allowed", None, "Bad Request")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body (orjson; stdlib json only words a failure)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            json.loads(raw)
            pos, why = 0, "Invalid JSON"
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            pos, why = getattr(e, "pos", 0), getattr(e, "msg", str(e))
        err = _error("json_invalid", str(pos), "JSON decode error", {})
        err["ctx"] = {"error": why}
        raise Invalid(err) from None
    if not isinstance(body, dict):
        raise Invalid({"type": "model_attributes_type", "loc": "body",
                       "msg": "Input should be a valid dictionary or object to extract fields from",
                       "input": str(body)})
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise Invalid(_error("string_type", "model", "Input should be a valid string", model))
    return body


def messages_of(body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if messages is None:
        raise Invalid(missing("messages", body))
    if not isinstance(messages, list):
        raise Invalid(_error("list_type", "messages", "Input should be a valid list", messages))
    if not messages:
        raise BadRequest("Cannot apply chat template to an empty conversation. "
                         "Provide at least one message.")
    return messages


def prompt_of(body: dict[str, Any]) -> Any:
    prompt = body.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise BadRequest("Either prompt or prompt_embeds must be provided and non-empty. "
                         "(parameter=prompt)", "prompt")
    return prompt


def max_tokens_of(body: dict[str, Any]) -> int | None:
    """`max_tokens` (or `max_completion_tokens`) as pydantic's lax int, checked >= 1."""
    field = "max_tokens"
    n = body.get(field)
    if n is None:
        field = "max_completion_tokens"
        n = body.get(field)
        if n is None:
            return None
    if type(n) is not int:
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        elif isinstance(n, float):
            raise Invalid(_error("int_from_float", field, "Input should be a valid integer, "
                                 "got a number with a fractional part", n))
        elif isinstance(n, str):
            try:
                n = int(n.strip())
            except ValueError:
                raise Invalid(_error("int_parsing", field, "Input should be a valid integer, "
                                     "unable to parse string as an integer", n)) from None
        else:
            raise Invalid(_error("int_type", field, "Input should be a valid integer", n))
    if n < 1:
        raise BadRequest(f"{field} must be at least 1, got {n}. (parameter={field}, value={n})",
                         field)
    return n


def check_context(prompt_tokens: int, max_tokens: int | None, max_model_len: int) -> None:
    """vLLM's context checks: the prompt must leave room, max_tokens <= max_model_len."""
    if prompt_tokens >= max_model_len:
        seen = min(prompt_tokens, max_model_len + 1)  # vLLM stops counting there
        raise BadRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains at least {seen} input tokens, which exceeds this limit even "
            f"without any output tokens. Please reduce the length of the input prompt. "
            f"(parameter=input_tokens, value={seen})", "input_tokens")
    if max_tokens is not None and max_tokens > max_model_len:
        raise BadRequest(
            f"max_tokens={max_tokens} cannot be greater than max_model_len={max_model_len}. "
            f"Please request fewer output tokens. (parameter=max_tokens, value={max_tokens})",
            "max_tokens")


def stop_strings(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list):
        return tuple(s for s in stop if isinstance(s, str) and s)
    return ()
