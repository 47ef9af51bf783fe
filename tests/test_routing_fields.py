"""The prompt cache_aware reads (proxy/routing/fields.py ``prompt_of``): one join and one encode
per request, short ASCII prompts turned away before the encode. Held here to what the walk
did before it was made cheap (``reference``: two joins and two encodes), byte for byte, on
ASCII and on any other text."""

import random

import msgspec
import pytest

from _speedups import PrefixTable, block_hashes
from proxy.routing.cache_aware import CacheAware
from proxy.routing.fields import decode, prompt_of

WORDS = ["hello", "fleet", "é", "日本語", "🙂", "x" * 40, "\x1e", "", "a\nb", "ß" * 7]


def reference(fields, limit):
    """prompt_of as it was: (text, opening, later) or None."""
    if not fields:
        return None
    messages = fields.messages
    if messages:
        parts = []
        opening = 0
        later = False
        size = 0
        for message in messages:
            if opening:
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
            if not opening and role == "user":
                opening = len("".join(parts).encode())
        text = "".join(parts).encode()[:limit]
        return (text, min(opening, len(text)), later) if text else None
    raw = fields.prompt
    if not raw:
        return None
    raw = bytes(raw)
    if raw[:1] == b'"':
        try:
            text = msgspec.json.decode(raw, type=str).encode()[:limit]
        except msgspec.DecodeError:
            return None
    elif raw != b"null":
        text = raw[:limit]
    else:
        return None
    return (text, 0, False) if text else None


def text(rng, ascii_only):
    words = WORDS[:2] + WORDS[5:6] if ascii_only else WORDS
    return " ".join(rng.choice(words) for _ in range(rng.randrange(0, 30)))


def body(rng):
    ascii_only = rng.random() < 0.5
    if rng.random() < 0.2:
        prompt = rng.choice([text(rng, ascii_only), [1, 2, 3], [text(rng, ascii_only)], None])
        return {"model": "m", "prompt": prompt}
    messages = []
    for _ in range(rng.randrange(0, 6)):
        role = rng.choice(["system", "user", "assistant", None, "tool"])
        shape = rng.random()
        if shape < 0.6:
            content = text(rng, ascii_only)
        elif shape < 0.9:
            content = [{"type": "text", "text": text(rng, ascii_only)} for _ in range(rng.randrange(0, 3))]
            content.append({"type": "image_url"})
        else:
            content = None
        messages.append({"role": role, "content": content})
    return {"model": "m", "messages": messages}


def expected(fields, limit, least):
    old = reference(fields, limit)
    return None if old is None or len(old[0]) < least else old


def got(fields, limit, least):
    prompt = prompt_of(fields, limit, least)
    return None if prompt is None else (prompt.text, prompt.opening, prompt.later)


def test_prompt_of_is_what_it_was_byte_for_byte():
    rng = random.Random(7)
    for _ in range(3000):
        fields = decode(msgspec.json.encode(body(rng)))
        limit = rng.choice([0, 1, 16, 64, 256, 4096])
        for least in (0, 16, 64, 256):
            assert got(fields, limit, least) == expected(fields, limit, least), (fields, limit, least)


@pytest.mark.parametrize("fields", [False, None])
def test_no_fields_no_prompt(fields):
    assert prompt_of(fields, 100, 0) is None


def test_cache_aware_blocks_are_what_they_were():
    """A prompt under one block has nothing to cache either way; one over it is cut the same."""
    rng = random.Random(11)
    policy = CacheAware(PrefixTable.local(2, 64), block_chars=64, depth=8)
    for _ in range(2000):
        fields = decode(msgspec.json.encode(body(rng)))
        old = reference(fields, 64 * 8)
        hashes = block_hashes(old[0], 64, 8) if old is not None else []
        blocks = policy.blocks(fields)
        if not hashes:
            assert blocks is None
            continue
        key = block_hashes(old[0][: old[1]] + b"\x00", old[1] + 1, 1)[0] if old[1] >= 16 else 0
        assert (list(blocks[0]), blocks[1], blocks[2]) == (hashes, key, old[2])


@pytest.mark.parametrize("ensure_ascii", [False, True])  # raw UTF-8, or every non-ASCII character escaped
def test_a_body_is_never_shorter_than_its_prompt(ensure_ascii):
    """The router decodes a body shorter than one block without its messages (``short_body``):
    it may only because no prompt_of text is ever longer than the body it came from."""
    import json

    rng = random.Random(13)
    for _ in range(3000):
        raw = json.dumps(body(rng), ensure_ascii=ensure_ascii, separators=(",", ":")).encode()
        prompt = prompt_of(decode(raw), 1 << 20)
        if prompt is not None:
            assert len(prompt.text) <= len(raw), raw


def test_a_short_body_skips_the_messages_only_where_nothing_reads_them():
    from proxy.config import build
    from proxy.routing.router import Router

    short = msgspec.json.encode({"model": "m", "user": "u", "messages": [{"role": "user", "content": "hi"}]})
    long = msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": "x" * 300}]})
    cached = Router(build({"backends": ["http://a:1", "http://b:1"], "balance": {"policy": "cache_aware"}}), None)
    assert cached.short_body == 256  # the default block
    decoded = cached.prepare([], short).fields()
    assert decoded.model == "m" and decoded.messages is None and decoded.user is None
    assert cached.prepare([], short).blocks(cached.clusters["default"].policy) is None  # nothing to cache
    assert cached.prepare([], long).fields().messages  # a block or more: decoded, cut and cached
    assert cached.prepare([], long).blocks(cached.clusters["default"].policy) is not None
    on_user = {"policy": "consistent_hash", "hash_keys": ["user"]}
    hashed = Router(build({"backends": ["http://a:1", "http://b:1"], "balance": on_user}), None)
    assert hashed.short_body == 0
    assert hashed.prepare([], short).fields().user == "u"
