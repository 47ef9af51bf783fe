"""``bodywalk.walk``: all of a body's routing fields in one walk over its bytes (compiled: C), the
messages' strings kept where they are in the body, so ``prompt_of`` writes a long prompt once
instead of msgspec's str per message, join and encode. Held to msgspec on generated bodies,
valid and broken: whatever walk answers, msgspec reads the same, and the prompt, its opening,
``later`` and ``prompt_prefix`` come out byte for byte the same; whatever walk is not sure of,
it leaves to msgspec. The same tests run on both builds (interpreted, ``walk`` is the .py)."""

import json
import random

import msgspec
import pytest

from proxy.routing.bodywalk import Walked, walk
from proxy.routing.fields import RoutingFields, _ModelOnly, decode, prompt_of, prompt_prefix

_decode_fields = msgspec.json.Decoder(RoutingFields).decode
_decode_model = msgspec.json.Decoder(_ModelOnly).decode
LIMITS = [(0, 0), (1, 0), (7, 0), (16, 16), (64, 16), (256, 64), (100000, 0)]


def msgspec_reads(body):
    """What ``decode(body)`` was before walk: msgspec's struct, the model alone where the other
    fields have types it refuses, or False."""
    try:
        return _decode_fields(body)
    except msgspec.DecodeError:
        try:
            return RoutingFields(model=_decode_model(body).model)
        except msgspec.DecodeError:
            return False


def seen(fields):
    """Everything the proxy reads of a body's fields: routing (model, user, the prompt cache_aware
    hashes, the prefix a consistent hash keys on), the usage ask (stream, n, stream_options)."""
    if not fields:
        return False
    prompts = []
    for limit, least in LIMITS:
        prompt = prompt_of(fields, limit, least)
        prompts.append(None if prompt is None else (prompt.text, prompt.opening, prompt.later))
    prefixes = [prompt_prefix(fields, size) for size in (1, 16, 300)]
    return (fields.model, fields.user, fields.stream, fields.n, bool(fields.stream_options),
            bytes(fields.prompt), prompts, prefixes)


TEXT = ["hello", "fleet", "", " ", "line\nbreak", 'quote"d', "back\\slash", "tab\t", "\x01", "/", "é", "日本語",
        "🙂", "\u2028", "\x7f", "\x00", "x" * 40, "\x1e"]
KEYS = ["model", "max_tokens", "temperature", "stream", "n", "user", "tools", "x", "prompt", "stream_options"]


def text(rng):
    return "".join(rng.choice(TEXT) for _ in range(rng.randrange(0, 12)))


def part(rng):
    shape = rng.random()
    if shape < 0.6:
        return {"type": "text", "text": text(rng)}
    if shape < 0.75:
        return {"type": "image_url", "image_url": {"url": "http://x/" + text(rng)}}
    if shape < 0.85:
        return {"text": None, "type": "text"}
    return rng.choice(["a part that is a string", None, 3, {"text": 5}, {}])


def message(rng):
    fields = []
    if rng.random() < 0.9:
        roles = ["system", "user", "user", "assistant", None, "tool"]
        fields.append(("role", rng.choice(roles) if rng.random() < 0.95 else rng.choice(["usér", 3])))
    shape = rng.random()
    if shape < 0.55:
        fields.append(("content", text(rng)))
    elif shape < 0.85:
        fields.append(("content", [part(rng) for _ in range(rng.randrange(0, 4))]))
    elif shape < 0.92:
        fields.append(("content", None))
    elif shape < 0.96:
        fields.append(("content", rng.choice([{}, 5, True])))
    if rng.random() < 0.2:
        fields.append(("name", text(rng)))
    if rng.random() < 0.05:
        fields.append(rng.choice([("role", "user"), ("content", "again")]))  # a key twice
    rng.shuffle(fields)
    return fields


def value(rng, key):
    if key == "model":
        return rng.choice(["tiny", "org/m-7b", "", "é", None, 3])
    if key == "stream":
        return rng.choice([True, False, None, 1])
    if key == "n":
        return rng.choice([1, 2, None, 1.0])
    if key == "user":
        return rng.choice(["u-1", "é", None, 4])
    if key == "prompt":
        return rng.choice([text(rng), [1, 2, 3], [text(rng)], None])
    if key == "stream_options":
        return {"include_usage": True}
    return rng.choice([16, 0.5, -1, 1e-3, True, None, "x", [1, {"a": text(rng)}], {"b": [text(rng)]}])


def dumps(rng, obj, spaces, ascii_only):
    """JSON of ``obj``, where an object is a list of pairs (so keys may repeat)."""
    if isinstance(obj, list) and obj and isinstance(obj[0], tuple):
        return "{" + spaces[0].join(json.dumps(k) + spaces[1] + dumps(rng, v, spaces, ascii_only) for k, v in obj) + "}"
    if isinstance(obj, list):
        return "[" + spaces[0].join(dumps(rng, v, spaces, ascii_only) for v in obj) + "]"
    return json.dumps(obj, ensure_ascii=ascii_only, separators=spaces)


def body(rng):
    pairs = [(rng.choice(KEYS), None) for _ in range(rng.randrange(4))]
    pairs = [(k, value(rng, k)) for k, _ in pairs]
    if rng.random() < 0.85:
        pairs.append(("messages", [message(rng) for _ in range(rng.randrange(0, 5))]))
    elif rng.random() < 0.5:
        pairs.append(("messages", rng.choice([None, [], "not a list", [3]])))
    rng.shuffle(pairs)
    spaces = rng.choice([(",", ":"), (", ", ": "), (" ,\n", " :\t")])
    data = dumps(rng, pairs or [("x", 1)], spaces, rng.random() < 0.5).encode()
    if data.startswith(b"{}"):
        data = b"{}"
    cut = rng.random()
    if cut < 0.15:  # broken JSON: a byte gone, one more, a cut
        at = rng.randrange(len(data) + 1)
        how = rng.randrange(3)
        if how == 0:
            data = data[:at] + data[at + 1:]
        elif how == 1:
            data = data[:at] + rng.choice([b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"0", b"\x00"]) + data[at:]
        else:
            data = data[:at]
    elif cut < 0.3:  # bytes that are not UTF-8, or escapes msgspec refuses, somewhere in a string
        at = data.find(b'"', rng.randrange(len(data)))
        if at > 0:
            bad = rng.choice([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe6\x97", b"\\ud800",
                              b"\\udc00", b"\\ud800\\u0041", b"\\u12", b"\\x", b"\xc3\xa9", b"\\ud83d\\ude42"])
            data = data[:at + 1] + bad + data[at + 1:]
    return data


def test_what_walk_answers_msgspec_reads_the_same():
    rng = random.Random(20261206)
    answered = chats = 0
    for _ in range(12000):
        data = body(rng)
        expected = msgspec_reads(data)
        fields = walk(data)
        if fields is not None:
            answered += 1
            chats += bool(fields.spans)
            assert expected is not False, data
            assert seen(fields) == seen(expected), data
        assert seen(decode(data)) == seen(expected), data
    # The generator favours what walk leaves to msgspec (types msgspec refuses, keys twice,
    # exponents, broken bytes); a third of all bodies is still walk's, most with a prompt.
    assert answered > 4000 and chats > 2500, (answered, chats)


def test_a_long_prompt_is_cut_where_msgspec_cuts_it():
    """A prompt past the limit, cut inside an escape, a multi-byte character and the record
    separator, with the conversation's opening inside and past the cut."""
    rng = random.Random(3)
    for _ in range(300):
        system = "".join(rng.choice(["ab", "\n", "é", "🙂", '"', "\\", "日"]) for _ in range(rng.randrange(1, 200)))
        user = "".join(rng.choice(["cd", "\t", "ß", "\u2028"]) for _ in range(rng.randrange(1, 200)))
        messages = [{"role": "system", "content": system}, {"role": "user", "content": [{"type": "text", "text": user}]}]
        if rng.random() < 0.5:
            messages.append({"role": "assistant", "content": "ok"})
        data = json.dumps({"model": "m", "messages": messages}, ensure_ascii=rng.random() < 0.5).encode()
        fields = walk(data)
        assert type(fields) is Walked
        expected = _decode_fields(data)
        for limit in range(0, 1200, 7):
            got, want = prompt_of(fields, limit, 0), prompt_of(expected, limit, 0)
            assert (got is None) == (want is None)
            if got is not None:
                assert (got.text, got.opening, got.later) == (want.text, want.opening, want.later), limit


def test_a_long_completions_prompt_is_cut_where_msgspec_cuts_it():
    rng = random.Random(5)
    for _ in range(100):
        prompt = "".join(rng.choice(["ab", "\n", "é", "🙂", '"', "日"]) for _ in range(rng.randrange(0, 300)))
        data = json.dumps({"model": "m", "prompt": prompt}, ensure_ascii=rng.random() < 0.5).encode()
        fields = walk(data)
        assert type(fields) is Walked
        expected = _decode_fields(data)
        for limit in range(0, 1000, 11):
            for least in (0, 64):
                got, want = prompt_of(fields, limit, least), prompt_of(expected, limit, least)
                assert (got is None) == (want is None)
                if got is not None:
                    assert (got.text, got.opening, got.later) == (want.text, 0, False), limit


@pytest.mark.parametrize("data", [
    b'{"messages":[{"role":"user","content":"\\ud800"}]}',  # half a surrogate pair
    b'{"messages":[{"role":"user","content":"\\udc00\\ud800"}]}',
    b'{"messages":[{"role":"user","content":"\\u00g0"}]}',
    b'{"messages":[{"role":"user","content":"\xff"}]}',  # not UTF-8
    b'{"messages":[{"role":"user","content":"\xc0\x80"}]}',  # overlong
    b'{"messages":[{"role":"user","content":"\xed\xa0\x80"}]}',  # a surrogate in UTF-8
    b'{"messages":[{"role":"user","content":"\xf4\x90\x80\x80"}]}',  # past U+10FFFF
    b'{"messages":[{"role":"user","content":"a\x01b"}]}',  # a control byte
    b'{"messages":[{"role":"user","content":"' + b"x" * 40 + b'\x1f"}]}',  # after 16-byte steps
    b'{"messages":[{"role":"user","content":"' + b"x" * 40 + b'\x80"}]}',
    b'{"messages":[{"role":"user","role":"system","content":"x"}]}',  # a key twice: msgspec keeps the last
    b'{"messages":[{"role":"user","content":[{"text":"a","text":"b"}]}]}',
    b'{"messages":[{"role":"us\\u0065r","content":"x"}]}',  # an escaped role
    b'{"messages":[{"role":"user","content":{"text":"x"}}]}',  # types msgspec refuses
    b'{"messages":[{"role":"user","content":["x"]}]}',
    b'{"messages":[3]}', b'{"messages":"x"}', b'{"messages":[{"role":3}]}',
    b'{"messages":[],"messages":[]}', b'{"prompt":1,"prompt":2}', b'{"user":"a","user":"b"}',
    b'{"messages":[{"role":"user","content":"x"}],"stream_options":{}}',
    b'{"messages":[{"role":"user","content":"x"}],"temperature":1e-3}',  # exponents: msgspec's
    b'{"messages":[{"role":"user","content":"x"}]', b'{"messages":[{"role":"user","content":"x}]}',
])
def test_walk_leaves_what_it_is_not_sure_of_to_msgspec(data):
    assert walk(data) is None
    assert seen(decode(data)) == seen(msgspec_reads(data))


@pytest.mark.parametrize("data, text", [
    (b'{"messages":[{"role":"user","content":"a\\"b\\\\c\\/d\\be\\ff\\ng\\rh\\ti"}]}', b'user\na"b\\c/d\x08e\x0cf\ng\rh\ti\x1e'),
    (b'{"messages":[{"role":"user","content":"\\u0041\\u00e9\\u65e5\\ud83d\\ude42\\u0000"}]}',
     "user\nAé日🙂\x00\x1e".encode()),
    ('{"messages":[{"content":"é日🙂"},{"role":"user","content":[{"type":"image_url"},{"text":"x"},{"text":""}]}]}'.encode(),
     "\né日🙂\x1euser\nx\x1e".encode()),
])
def test_walk_writes_each_escape_and_character_as_msgspec_decodes_it(data, text):
    fields = walk(data)
    assert type(fields) is Walked
    assert prompt_of(fields, 1000).text == text == prompt_of(_decode_fields(data), 1000).text


def test_decode_walks_a_full_body_where_compiled():
    data = b'{"model":"m","messages":[{"role":"user","content":"hello"}],"user":"u"}'
    from proxy.routing import bodywalk as module

    assert (type(decode(data)) is Walked) == (not module.__file__.endswith(".py"))
    assert decode(data).user == "u" and decode(data).messages[0].content == "hello"


def chat_with(content):
    return b'{"messages":[{"role":"user","content":"' + content + b'"}]}'


def test_walk_reads_utf8_as_msgspec_does():
    """Every lead byte with continuations at the edges of each range: walk answers exactly where
    the bytes are UTF-8 (overlong forms, surrogates and code points past U+10FFFF are not), and
    leaves the rest to msgspec, which refuses them."""
    edges = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF]
    for lead in range(0x80, 0x100):
        for second in edges:
            for rest in (b"", b"\x80", b"\xbf", b"\x80\x80", b"\xbf\xbf", b"A"):
                raw = bytes([lead, second]) + rest
                try:
                    raw.decode("utf-8")
                    valid = True
                except UnicodeDecodeError:
                    valid = False
                data = chat_with(raw)
                fields = walk(data)
                assert (fields is not None) == valid, raw
                if valid:
                    assert prompt_of(fields, 100).text == prompt_of(_decode_fields(data), 100).text == b"user\n" + raw + b"\x1e"


def test_walk_reads_unicode_escapes_as_msgspec_does():
    units = [0x0000, 0x001F, 0x007F, 0x0080, 0x07FF, 0x0800, 0xD7FF, 0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0xE000, 0xFFFF]
    for first in units:
        for second in units + [None]:
            escape = b"\\u%04x" % first + (b"\\u%04X" % second if second is not None else b"")
            data = chat_with(escape)
            try:
                expected = _decode_fields(data)
            except msgspec.DecodeError:
                expected = None
            fields = walk(data)
            assert (fields is None) == (expected is None), escape
            if fields is not None:
                assert prompt_of(fields, 100).text == prompt_of(expected, 100).text, escape


def many(count, parts):
    """A chat of ``count`` empty messages, or of one message of ``count`` parts (``parts``)."""
    if parts:
        return b'{"messages":[{"role":"user","content":[' + b",".join([b'{"text":"x"}'] * count) + b"]}]}"
    return b'{"messages":[' + b",".join([b"{}"] * count) + b"]}"


@pytest.mark.parametrize("parts", [False, True])
def test_a_body_of_thousands_of_messages_or_parts_is_msgspecs(parts):
    """Their spans would cost more than msgspec's structs, and a body of tiny ones would hold
    millions: past ``_MOST_SPANS`` the walk leaves the body to msgspec. Hundreds stay its."""
    assert walk(many(3000, parts)) is None
    assert seen(decode(many(3000, parts))) == seen(msgspec_reads(many(3000, parts)))
    assert type(walk(many(500, parts))) is Walked
