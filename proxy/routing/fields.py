"""The request-body fields routing reads, decoded once and only as far as needed.

A chat or completions body can be megabytes of JSON; routing needs at most the model, the
OpenAI ``user`` field and the opening of the prompt. msgspec decodes a Struct that declares
just those fields and skips the rest unbuilt; the body itself is forwarded untouched. In the
native build ``bodywalk`` reads them first, in one walk over the body's bytes, and msgspec
decodes only the bodies that walk is not sure of. ``prompt_of`` and ``prompt_prefix`` take
either answer.
"""

from typing import Optional

import msgspec

from .bodywalk import Prompt, Walked, _Message, scan, walk, walked_prompt


class RoutingFields(msgspec.Struct):
    """What routing may read from a JSON body; msgspec skips every other field unbuilt."""

    model: Optional[str] = None
    user: Optional[str] = None
    messages: Optional[list[_Message]] = None
    prompt: msgspec.Raw = msgspec.Raw()  # str, list of str or token ids: kept raw
    # Not routing's, but read in the same pass: whether the proxy may ask for a stream's usage
    # (observe/streamusage.py) would otherwise cost a second decode of the body.
    stream: object = None
    stream_options: msgspec.Raw = msgspec.Raw()
    n: object = None


class _ModelOnly(msgspec.Struct):
    model: Optional[str] = None
    stream: object = None
    stream_options: msgspec.Raw = msgspec.Raw()
    n: object = None
    user = None  # read as absent if a pool ever asks
    messages = None
    prompt = b""


_decode_fields = msgspec.json.Decoder(RoutingFields).decode
_decode_model = msgspec.json.Decoder(_ModelOnly).decode
_decode_str = msgspec.json.Decoder(str).decode
_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (fields.pxd)


def decode(body, model_only=False):
    """The RoutingFields of a request body; False when it has none (empty, not JSON).
    ``model_only`` (no cluster keys on user or prefix) skips building the messages: a 20 KB
    chat body then costs about 4 us instead of 6. Compiled, a body ``scan`` (model only) or
    ``walk`` reads costs one walk over its bytes and no decoder."""
    if not body:
        return False
    if _COMPILED and type(body) is bytes:
        fields = scan(body) if model_only else walk(body)
        if fields is not None:
            return fields
    try:
        return _decode_model(body) if model_only else _decode_fields(body)
    except msgspec.DecodeError:
        try:  # odd types in fields routing does not need must not hide the model
            return RoutingFields(model=_decode_model(body).model)
        except msgspec.DecodeError:
            return False


def prompt_prefix(fields, size):
    """The cache-affinity key: the first ``size`` characters of the prompt, as bytes.

    Chat: the message contents joined by a record separator, up to the end of the first user
    message: a conversation's opening (system prompt and first question), which every later
    turn repeats, so all turns of one conversation share the key while a longer prefix would
    change it from turn to turn. Completions: the prompt (token-id lists as raw JSON)."""
    messages = fields.messages
    if messages:
        parts = []
        n = 0
        for message in messages:
            content = message.content
            if content is None:
                continue
            if type(content) is str:
                parts.append(content)
                n += len(content)
            else:
                for part in content:
                    if part.text:
                        parts.append(part.text)
                        n += len(part.text)
            if n >= size or message.role == "user":
                break
        if not parts:
            return None
        return "\x1e".join(parts)[:size].encode()
    raw = fields.prompt
    if raw:
        raw = bytes(raw)
        if raw[:1] == b'"':
            try:
                return _decode_str(raw)[:size].encode()
            except msgspec.DecodeError:
                return None
        if raw != b"null":
            return raw[: size * 4]
    return None


def prompt_of(fields, limit, least=0):
    """The first ``limit`` bytes of the request's prompt as a Prompt, or None without one or when
    it has fewer than ``least`` bytes (cache_aware: not one full block, nothing to cache).

    Chat: each message as its role, a newline, its text parts and a record separator, in
    order: messages that share a system prompt share the first bytes, as vLLM's prompts share
    their first blocks once the chat template is applied. Completions: the prompt string, or
    a token-id list as its raw JSON."""
    if not fields:
        return None
    if type(fields) is Walked:
        walked = fields
        if walked.spans:
            return walked_prompt(walked.body, walked.spans, limit, least)
        if walked.prompt_span is not None:  # completions: one text, no role, no opening
            return walked_prompt(walked.body, walked.prompt_span, limit, least)
    messages = fields.messages
    if messages:
        parts = []
        opening = -1  # characters up to the end of the first user message; -1: none yet
        later = False
        size = 0  # characters in parts
        for message in messages:
            if opening >= 0:
                later = True
                if size >= limit:
                    break
            role = message.role or ""
            parts.append(role)
            parts.append("\n")
            content = message.content
            if type(content) is str:
                parts.append(content)
                size += len(content)
            elif content is not None:
                for part in content:
                    if part.text:
                        parts.append(part.text)
                        size += len(part.text)
            parts.append("\x1e")
            size += len(role) + 2
            if opening < 0 and role == "user":
                opening = size
        # One join and one encode per request. An ASCII prompt (the usual one; isascii() reads a
        # flag) has as many bytes as characters: a short one is turned away before it is
        # encoded, and its opening is where the characters put it. Any other is measured in bytes.
        joined = "".join(parts)
        if joined.isascii():
            if size < least:
                return None
        elif opening > 0:
            opening = len(joined[:opening].encode())
        text = joined.encode()[:limit]
        if not text or len(text) < least:
            return None
        return Prompt(text, min(opening, len(text)) if opening > 0 else 0, later)
    raw = fields.prompt
    if not raw:
        return None
    raw = bytes(raw)
    if raw[:1] == b'"':
        try:
            text = _decode_str(raw).encode()[:limit]
        except msgspec.DecodeError:
            return None
    elif raw != b"null":
        text = raw[:limit]
    else:
        return None
    return Prompt(text, 0, False) if text and len(text) >= least else None
