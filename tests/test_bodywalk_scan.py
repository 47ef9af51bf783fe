"""``bodywalk.scan``: a body's model-only fields in one walk over its bytes (compiled: C), in place
of msgspec's decode wherever the walk is sure of the body. Held to msgspec on generated bodies,
valid and broken: whatever scan answers, msgspec reads the same; whatever scan is not sure of,
it leaves to msgspec. The same tests run on both builds (interpreted, ``scan`` is the .py)."""

import importlib.util
import json
import os
import random

import msgspec
import pytest

from proxy.routing.bodywalk import scan, walk
from proxy.routing.fields import _ModelOnly, decode

_decode_model = msgspec.json.Decoder(_ModelOnly).decode
CHAT = b'{"model":"tiny","messages":[{"role":"user","content":"Say hello to the fleet"}],"max_tokens":16}'


def msgspec_reads(body):
    """What ``decode(body, True)`` was before scan: the struct, or False (not a JSON object
    msgspec can read into the fields)."""
    try:
        return _decode_model(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False


def seen(fields):
    """What anything reads of model-only fields (observing, model routing, tenants)."""
    if not fields:
        return False
    return fields.model, fields.stream, fields.n, bool(fields.stream_options), fields.user, fields.messages


KEYS = ["model", "stream", "n", "stream_options", "messages", "max_tokens", "user", "temperature", "x"]
TEXT = ["tiny", "", "a b", "é", "日本", "line\nbreak", 'quote"d', "back\\slash", "tab\t", "\x01", "/", "🙂"]


def value(rng, depth=0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice(TEXT)
    if kind == 1:
        return rng.choice([0, 1, -1, 2, 16, 10**20, 1.5, -0.25, 1.0, 1e300])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind in (3, 4, 5):
        return rng.choice(["tiny", "m-2", None, 1, True, [], {}])
    if kind in (6, 7):
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS + TEXT): value(rng, depth + 1) for _ in range(rng.randrange(4))}


def body(rng):
    pairs = [(rng.choice(KEYS), value(rng)) for _ in range(rng.randrange(6))]
    if rng.random() < 0.5:
        pairs.append(("model", rng.choice(["tiny", "org/model-7b", "", "é", "a\\b", 3, None])))
    rng.shuffle(pairs)
    spaces = rng.choice([(",", ":"), (", ", ": "), (" ,\n", " :\t")])
    parts = [json.dumps(k, ensure_ascii=rng.random() < 0.5) + spaces[1]
             + json.dumps(v, ensure_ascii=rng.random() < 0.5, separators=spaces) for k, v in pairs]
    text = "{" + spaces[0].join(parts) + "}"
    if rng.random() < 0.3:
        text = rng.choice([" ", "\n", ""]) + text + rng.choice([" ", "\r\n", ""])
    data = text.encode()
    if rng.random() < 0.4:  # broken: a byte gone, one more, a cut
        at = rng.randrange(len(data) + 1)
        cut = rng.randrange(3)
        if cut == 0:
            data = data[:at] + data[at + 1:]
        elif cut == 1:
            data = data[:at] + rng.choice([b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"0", b"e", b"\x00"]) + data[at:]
        else:
            data = data[:at]
    return data


def test_what_scan_answers_msgspec_reads_the_same():
    rng = random.Random(20261205)
    answered = valid = 0
    for _ in range(30000):
        data = body(rng)
        expected = msgspec_reads(data)
        valid += expected is not False
        fields = scan(data)
        if fields is not None:
            answered += 1
            assert expected is not False, data
            assert seen(fields) == seen(expected), data
        assert seen(decode(data, True)) == seen(expected), data
    # Many of the bodies msgspec reads are scan's (the generator favours what scan leaves:
    # escapes, exponents, repeated keys): the test would pass vacuously if scan gave up on all.
    assert answered > valid * 0.3, (answered, valid)


@pytest.mark.parametrize("data, model, stream, n", [
    (CHAT, "tiny", None, None),
    (b' {"stream": true, "model": "org/m-7b", "n": 1 }\n', "org/m-7b", True, 1),
    (b'{"model":null,"stream":false,"n":null}', None, False, None),
    (b'{}', None, None, None),
    ('{"model":"m","messages":[{"role":"user","content":"h\u00e9 日本 \\n \\" \\\\ \\/"}]}'.encode(), "m", None, None),
    (b'{"model":"m","a":[[1,-0.5,0,true,false,null,{}],[]],"b":{"c":{"d":"e"}}}', "m", None, None),
])
def test_scan_reads_plain_bodies(data, model, stream, n):
    fields = scan(data)
    assert fields is not None
    assert (fields.model, fields.stream, fields.n) == (model, stream, n)
    assert seen(fields) == seen(msgspec_reads(data))


@pytest.mark.parametrize("data", [
    b'{"model":"m\\u0065"}',  # an escape in the model
    b'{"mod\\u0065l":"m"}',  # a key with an escape: it may be "model"
    b'{"model":"a","model":"b"}',  # twice: msgspec keeps the last
    b'{"model":"m","stream_options":{"include_usage":true}}',
    b'{"model":"m","n":2}', b'{"model":"m","n":1.0}', b'{"model":"m","stream":1}',
    b'{"model":"m","x":"\\u00e9"}',  # \u: msgspec's
    b'{"model":"m","x":1e5}',  # exponents: msgspec's
    b'{"model":"' + "é".encode() + b'"}',  # a model that is not printable ASCII
    b'{"model":3}',  # msgspec refuses it
    b'{"model":"m"} x', b'{"model":"m",}', b'{"model" "m"}', b'["model"]', b'', b'{"model":"m"',
    b'{"x":01}', b'{"x":"\x01"}', b'{"x":tru}', b'{"x":-}', b'{"x":1.}',
    b'{"x":' + b"[" * 40 + b"]" * 40 + b'}',  # deeper than scan follows
])
def test_scan_leaves_what_it_is_not_sure_of_to_msgspec(data):
    assert scan(data) is None
    assert seen(decode(data, True)) == seen(msgspec_reads(data))


def test_the_last_fields_serve_again_for_the_same_model():
    first = scan(CHAT)
    again = scan(CHAT.replace(b"hello", b"howdy"))
    assert again is first
    other = scan(CHAT.replace(b'"tiny"', b'"tinz"'))
    assert other is not first and other.model == "tinz"
    streamed = scan(CHAT.replace(b"{", b'{"stream":true,', 1))
    assert streamed is not other and streamed.stream is True and streamed.model == "tiny"
    assert scan(b'{"model":null}').model is None
    assert scan(CHAT).model == "tiny"


def test_a_model_named_again_is_the_same_string():
    """Full walks and scans share the model's last string: a body naming the same model makes
    none, and one naming another gets its own, in either order."""
    tiny = walk(CHAT).model
    assert walk(CHAT.replace(b"hello", b"howdy")).model is tiny
    assert scan(CHAT).model is tiny
    other = walk(CHAT.replace(b'"tiny"', b'"tinz"'))
    assert other.model == "tinz" and scan(CHAT.replace(b'"tiny"', b'"tinz"')).model is other.model
    first = scan(CHAT)
    assert first.model == "tiny" and first.model is not tiny  # made again: "tinz" came between
    walk(CHAT.replace(b'"tiny"', b'"tinz"'))
    again = scan(CHAT)
    assert again.model == "tiny" and again.stream is None and again.n is None
    assert walk(b'{"model":"tin","messages":[]}').model == "tin"  # a prefix of the last name is another name


def nested(rng):
    """A body whose skipped value nests 20-40 deep (the walk's limit is 32) around an edge case
    of a number, a string or a literal, then broken as ``body`` breaks bodies."""
    inner = rng.choice([b"1", b"-0", b"0.5", b"-12.25", b'"s\\"t"', b'"\\u00e9"', b'"\\q"', b"true", b"null", b"fals",
                        b"[]", b"{}", b"[ ]", b"1e3", b"1E3", b"2.5E-1", b"01", b"-", b"1.", b"1" * 33, b"1" * 32, b'{"a":1,}', b"[1,]"])
    text = inner
    for _ in range(rng.randrange(20, 41)):
        if rng.random() < 0.5:
            text = b"[" + text + rng.choice([b"", b",2", b' , "x"']) + b"]"
        else:
            text = b'{"k":' + text + rng.choice([b"", b',"j":null', b' ,\n"m" : []']) + b"}"
    data = b'{"model":"tiny","x":' + text + b',"stream":true}'
    if rng.random() < 0.4:
        at = rng.randrange(len(data) + 1)
        data = data[:at] + rng.choice([b"", b"]", b"}", b",", b'"', b" "]) + data[at + 1:]
    return data


def test_scan_answers_as_its_interpreted_twin():
    # The compiled scan skips what it does not read in C (fleetproxy_skip, bodywalk.pxd), the
    # interpreted one by _skip: the same answer for every body, sure or not. Interpreted, both
    # sides are the .py (this run's module and the file loaded again).
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "proxy", "routing", "bodywalk.py")
    spec = importlib.util.spec_from_file_location("bodywalk_interpreted", path)
    twin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(twin)
    rng = random.Random(20261207)
    sure = 0
    for _ in range(20000):
        data = body(rng) if rng.random() < 0.5 else nested(rng)
        got = scan(data)
        assert seen(got) == seen(twin.scan(data)), data
        sure += got is not None
    assert 3000 < sure < 17000  # both kinds of answer, many times
