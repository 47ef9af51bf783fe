"""A request body's routing fields in one walk over its bytes, without a decoder: ``walk`` reads
every field routing uses, ``scan`` the model, stream and n. Compiled, the walk is C through a
pointer, and strings are checked 16 bytes a step.

The messages are not built. Each message's role and texts stay where they lie in the body
(``Walked.spans``), and ``walked_prompt`` writes the prompt's bytes from there, once. Whatever
the walk is not sure of it leaves to msgspec (``fields.decode``); the tests hold the two to one
another.
"""

from typing import Optional, Union

import msgspec


class _Part(msgspec.Struct):
    text: Optional[str] = None  # {"type": "text", "text": ...}; other part types carry none


class _Message(msgspec.Struct):
    role: Optional[str] = None
    content: Union[str, list[_Part], None] = None


class _Messages(msgspec.Struct):
    """The messages as fields.RoutingFields holds them: what ``Walked.messages`` decodes when
    something other than ``prompt_of`` asks for them."""

    messages: Optional[list[_Message]] = None


_decode_messages = msgspec.json.Decoder(_Messages).decode
_decode_str = msgspec.json.Decoder(str).decode
_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (bodywalk.pxd)


class Prompt:
    """The prompt as the cache sees it: ``text`` (bytes, in the order vLLM prefills them),
    ``opening`` (how many bytes of it are the conversation's opening: the messages up to the
    end of the first user message; 0 for completions) and ``later`` (a later turn: messages
    follow the opening)."""

    __slots__ = ("text", "opening", "later")

    def __init__(self, text, opening, later):
        self.text = text
        self.opening = opening
        self.later = later


_DEEPEST = 32  # nesting the walk follows; deeper bodies are msgspec's


def scan(body):
    """The model-only fields of a JSON object body (``decode(body, True)``: the model, stream
    and n) as ``walk`` reads them, or None where it is not sure of the body. The last answer
    serves again for the same fields: it is read-only once made, and a fleet's bodies name a
    few models, so most bodies cost no string and no object. Compiled: the whole walk in C
    (``fleetproxy_scan``, bodywalk.pxd), by ``_walk``'s rules, which are the pure build's."""
    if _COMPILED:
        n = len(body)
        buf = body  # compiled: its bytes through a pointer
        if fleetproxy_scan(buf, n, _DEEPEST) < 0:  # noqa: F821 (bodywalk.pxd)
            return None
        code = fleetproxy_scanned.stream  # noqa: F821
        return _scanned(buf, n, fleetproxy_scanned.model_at, fleetproxy_scanned.model_end,  # noqa: F821
                        None if code < 0 else code == 1, 1 if fleetproxy_scanned.count else None)  # noqa: F821
    return _walk(body, False)


_last = None  # scan's last answer
_model_raw = None  # the last model's name as the body spelled it, and as the str made of it
_model_text = None


def _key(buf, pos, n):
    """Where the key whose opening quote is at ``pos`` ends (its closing quote), or -1: no key
    there, or one with an escape (``_key_end``)."""
    if pos >= n or buf[pos] != 34:
        return -1
    return _key_end(buf, pos + 1, n)


def _value(buf, end, n):
    """Where the value of the member whose key ends at ``end`` starts (white space, a colon,
    white space), or -1: no key (``end`` -1), no colon, or the body ends there."""
    if end < 0:
        return -1
    pos = _space(buf, end + 1, n)
    if pos >= n or buf[pos] != 58:  # ":"
        return -1
    pos = _space(buf, pos + 1, n)
    return pos if pos < n else -1


def _space(buf, pos, n):
    """The first offset from ``pos`` that is not JSON white space (``n`` if none). Compiled: this,
    in C (bodywalk.pxd), which ``fleetproxy_skip`` shares."""
    if _COMPILED:
        return fleetproxy_space(buf, pos, n)  # noqa: F821 (bodywalk.pxd)
    while pos < n and buf[pos] <= 32 and (buf[pos] == 32 or buf[pos] == 10 or buf[pos] == 13 or buf[pos] == 9):
        pos += 1
    return pos


def _string_end(buf, pos, n):
    """Where the string whose first byte is at ``pos`` ends (its closing quote), or -1: no
    end, a control byte, a ``\\u`` or a malformed escape. Compiled: this, in C (bodywalk.pxd)."""
    if _COMPILED:
        return fleetproxy_string_end(buf, pos, n, 0)  # noqa: F821 (bodywalk.pxd)
    while True:
        while pos < n and (buf[pos] >= 35 and buf[pos] != 92 or buf[pos] == 32 or buf[pos] == 33):
            pos += 1
        if pos >= n:
            return -1
        c = buf[pos]
        if c == 34:
            return pos
        if c != 92 or pos + 1 >= n:
            return -1  # a control byte, or a backslash at the end
        c = buf[pos + 1]  # a backslash: one of "\\/bfnrt
        if not (c == 34 or c == 92 or c == 47 or c == 98 or c == 102 or c == 110 or c == 114 or c == 116):
            return -1
        pos += 2


def _key_end(buf, pos, n):
    """Where the key whose first byte is at ``pos`` ends (its closing quote), or -1: no end, a
    control byte or any backslash (a key with an escape is msgspec's to read). One walk: the
    string's end and the absence of an escape found together."""
    if _COMPILED:
        return fleetproxy_string_end(buf, pos, n, 1)  # noqa: F821 (bodywalk.pxd)
    while pos < n and (buf[pos] >= 35 and buf[pos] != 92 or buf[pos] == 32 or buf[pos] == 33):
        pos += 1
    return pos if pos < n and buf[pos] == 34 else -1


def _printable(buf, pos, end):
    """Whether ``buf[pos:end]`` is printable ASCII without a backslash: its text as it is."""
    while pos < end:
        if not 32 <= buf[pos] < 127 or buf[pos] == 92:
            return False
        pos += 1
    return True


def _same(buf, pos, n, word, size):
    """Whether ``buf[pos:pos + size]`` is ``word``."""
    if pos + size > n:
        return False
    for i in range(size):
        if buf[pos + i] != word[i]:
            return False
    return True


def _skip(buf, pos, n, depth, texts=False):
    """The offset after the JSON value at ``pos`` (strict, within ``scan``'s subset; with
    ``texts``, its strings any ``walk`` reads), or -1."""
    if pos >= n:
        return -1
    c = buf[pos]
    if c == 34:
        return _after_string(buf, pos + 1, n, texts)
    if c == 45 or 48 <= c <= 57:
        return _number_end(buf, pos, n)
    if c == 116:
        return pos + 4 if _same(buf, pos, n, b"true", 4) else -1
    if c == 102:
        return pos + 5 if _same(buf, pos, n, b"false", 5) else -1
    if c == 110:
        return pos + 4 if _same(buf, pos, n, b"null", 4) else -1
    if depth >= _DEEPEST or not (c == 91 or c == 123):
        return -1
    close = c + 2  # "]" or "}"
    pos = _space(buf, pos + 1, n)
    if pos < n and buf[pos] == close:
        return pos + 1
    while True:
        if c == 123:  # an object's member: a key, ":", the value
            if pos >= n or buf[pos] != 34:
                return -1
            pos = _after_string(buf, pos + 1, n, texts)
            if pos < 0:
                return -1
            pos = _space(buf, pos, n)
            if pos >= n or buf[pos] != 58:
                return -1
            pos = _space(buf, pos + 1, n)
        pos = _skip(buf, pos, n, depth + 1, texts)
        if pos < 0:
            return -1
        pos = _space(buf, pos, n)
        if pos >= n:
            return -1
        if buf[pos] == close:
            return pos + 1
        if buf[pos] != 44:
            return -1
        pos = _space(buf, pos + 1, n)


def _after_string(buf, pos, n, texts):
    """The offset after the string whose first byte is at ``pos`` (after its opening quote):
    one ``scan`` is sure of, or with ``texts`` one ``_text_end`` is (any escape); or -1."""
    if texts:
        pos = _text_end(buf, pos, n)
    else:
        pos = _string_end(buf, pos, n)
    return pos + 1 if pos >= 0 else -1


def _number_end(buf, pos, n):
    """The offset after the number at ``pos``: -?(0|[1-9][0-9]*)(.[0-9]+)?, at most 32 bytes
    (no exponent: those are msgspec's), or -1. Compiled: this, in C (bodywalk.pxd), which
    ``fleetproxy_skip`` shares."""
    if _COMPILED:
        return fleetproxy_number_end(buf, pos, n)  # noqa: F821 (bodywalk.pxd)
    at = pos
    if buf[pos] == 45:
        pos += 1
    if pos >= n or not 48 <= buf[pos] <= 57:
        return -1
    if buf[pos] == 48:
        pos += 1
    else:
        while pos < n and 48 <= buf[pos] <= 57:
            pos += 1
    if pos < n and buf[pos] == 46:
        pos += 1
        if pos >= n or not 48 <= buf[pos] <= 57:
            return -1
        while pos < n and 48 <= buf[pos] <= 57:
            pos += 1
    if pos < n and (buf[pos] == 101 or buf[pos] == 69) or pos - at > 32:
        return -1
    return pos


class Walked:
    """``decode(body)`` of a body ``walk`` read (``decode(body, True)``: ``scan``): what
    msgspec's RoutingFields (``_ModelOnly``) holds for it, field for field (tests hold the two
    to one another on generated bodies), without a decoder's call, and without the messages
    built. Their strings stay where they are in the body (``spans``), and ``prompt_of`` writes
    the prompt's bytes from there in one pass. msgspec would make a str of every message, then
    the prompt a join and an encode: three copies of a long prompt, and its decode the largest
    part of a long request's cost. ``messages`` and ``prompt``, read anywhere else
    (``prompt_prefix``), are msgspec's, made when first asked for."""

    __slots__ = (
        "model", "user", "stream", "n", "body", "spans", "prompt_at", "prompt_end", "prompt_span", "_messages",
    )
    stream_options = b""  # a body with stream_options is msgspec's to read

    @property
    def messages(self):
        if not self.spans:
            return None if self.spans is None else []
        if self._messages is None:
            self._messages = _decode_messages(self.body).messages
        return self._messages

    @property
    def prompt(self):
        if self.prompt_at < 0:
            return msgspec.Raw()
        return msgspec.Raw(self.body[self.prompt_at:self.prompt_end])


# spans: four integers per item, in the order of the messages: its kind, where its bytes start
# and end in the body, how many bytes it writes into the prompt. A message opens with its role
# (_ROLE; -1: none), then its texts (_PLAIN: bytes as they are; _ESCAPED: a JSON string's
# inside, its escapes to decode), and closes with _END (its start 1 where the role is "user").
_ROLE, _PLAIN, _ESCAPED, _END = 0, 1, 2, 3
# Past this many integers (some 1,000 messages or parts) the body is msgspec's to read: a span
# costs more than its struct, and a body of tiny messages (8 MiB of "{}," is 2.8 million) must
# not cost more than msgspec would.
_MOST_SPANS = 8192


def walk(body):
    """All of ``decode(body)``'s fields in one walk over the body's bytes (compiled: C, no
    object but the model's and user's strings and the spans' integers), or None where the walk
    is not sure of the body: then msgspec decodes it, and says whether it is JSON at all.

    Sure means: strict JSON (RFC 8259), so msgspec reads it too; ``model`` and ``user`` strings
    of printable ASCII without escapes, or null; ``stream`` true, false or null; ``n`` 1 or
    null; no ``stream_options``; none of the top level's keys twice (msgspec keeps the last);
    no key with an escape (``"mod\\u0065l"`` is ``model``); numbers without exponents, at most
    32 bytes; nesting at most 32 deep. ``messages``: a list (of some 1,000 texts at most:
    ``_MOST_SPANS``) of objects whose ``role`` is printable ASCII without escapes (or null) and
    whose ``content`` is a string, null or a list of objects whose ``text`` is a string or null,
    none of those keys twice in one object.
    Strings may hold any escape and any UTF-8, both checked as msgspec checks them
    (``_text_end``). ``prompt`` is kept as its JSON, as msgspec's Raw keeps it. What falls
    outside is rarer than a mistake in a bigger walk would be costly: the body is forwarded
    either way, and its fields decide its route, its model's metrics and the usage ask."""
    return _walk(body, True)


def _walk(body, full):
    """``walk`` (``full``), or ``scan``: the model, stream and n only, every other key skipped
    as msgspec's ``_ModelOnly`` skips it, its strings by the cheaper test of ``_string_end``
    (no ``\\u`` escape: a short body's strings are short, and a call per string would cost
    more than the rare escape saves)."""
    n = len(body)
    buf = body  # compiled: its bytes through a pointer (bodywalk.pxd)
    seen = 0  # bits: model 1, stream 2, n 4, user 8, messages 16, prompt 32
    model_at = model_end = user_at = user_end = prompt_at = prompt_end = -1
    stream = None
    count = None
    spans = None  # where the messages are: None, or a list (empty: no message)
    prompt_span = None  # where a prompt that is a string is
    pos = _space(buf, 0, n)
    if pos >= n or buf[pos] != 123:  # "{"
        return None
    pos = _space(buf, pos + 1, n)
    if pos < n and buf[pos] == 125:  # "}"
        pos += 1
    else:
        while True:
            at = pos + 1
            end = _key(buf, pos, n)
            pos = _value(buf, end, n)
            if pos < 0:
                return None
            size = end - at
            first = buf[pos]
            if full and size == 8 and _same(buf, at, n, b"messages", 8):
                if seen & 16:
                    return None
                seen |= 16
                if first == 91:  # "["
                    spans = []
                    pos = _messages(buf, pos, n, spans)
                    if pos < 0:
                        return None
                elif _same(buf, pos, n, b"null", 4):
                    pos += 4
                else:
                    return None
            elif (size == 5 and _same(buf, at, n, b"model", 5)) or (full and size == 4 and _same(buf, at, n, b"user", 4)):
                bit = 1 if size == 5 else 8
                if seen & bit:
                    return None
                seen |= bit
                if first == 34:
                    at = pos + 1
                    pos = _string_end(buf, at, n)
                    if pos < 0 or not _printable(buf, at, pos):
                        return None
                    if bit == 1:
                        model_at, model_end = at, pos
                    else:
                        user_at, user_end = at, pos
                    pos += 1
                elif _same(buf, pos, n, b"null", 4):
                    pos += 4
                else:
                    return None
            elif size == 6 and _same(buf, at, n, b"stream", 6):
                if seen & 2:
                    return None
                seen |= 2
                if _same(buf, pos, n, b"true", 4):
                    stream = True
                    pos += 4
                elif _same(buf, pos, n, b"false", 5):
                    stream = False
                    pos += 5
                elif _same(buf, pos, n, b"null", 4):
                    pos += 4
                else:
                    return None
            elif full and size == 6 and _same(buf, at, n, b"prompt", 6):
                if seen & 32:
                    return None
                seen |= 32
                prompt_at = pos
                if first == 34:  # a string: its span, as a message's text (empty: none)
                    prompt_span = []
                    pos = _text(buf, pos, n, prompt_span)
                else:
                    pos = _skip(buf, pos, n, 1, True)
                if pos < 0:
                    return None
                prompt_end = pos
            elif size == 1 and buf[at] == 110:  # "n"
                if seen & 4:
                    return None
                seen |= 4
                if first == 49 and pos + 1 < n and not 48 <= buf[pos + 1] <= 57 and buf[pos + 1] != 46:  # 1
                    count = 1
                    pos += 1
                elif _same(buf, pos, n, b"null", 4):
                    pos += 4
                else:
                    return None
            elif size == 14 and _same(buf, at, n, b"stream_options", 14):
                return None
            else:
                if _COMPILED and not full:  # _skip's rules without its recursion, in C (bodywalk.pxd)
                    pos = fleetproxy_skip(buf, pos, n, 1, _DEEPEST)  # noqa: F821
                else:
                    pos = _skip(buf, pos, n, 1, full)
                if pos < 0:
                    return None
            pos = _space(buf, pos, n)
            if pos >= n:
                return None
            if buf[pos] == 44:  # ","
                pos = _space(buf, pos + 1, n)
            elif buf[pos] == 125:  # "}"
                pos += 1
                break
            else:
                return None
    if _space(buf, pos, n) != n:
        return None
    if not full:
        return _scanned(buf, n, model_at, model_end, stream, count)
    model = _model(buf, model_at, model_end, n) if model_at >= 0 else None
    user = buf[user_at:user_end].decode("ascii") if user_at >= 0 else None
    return _walked(model, user, stream, count, body, spans, prompt_at, prompt_end, prompt_span)


def _scanned(buf, n, model_at, model_end, stream, count):
    """scan's answer: the last one again where it holds the same fields (read-only once made,
    so it serves again: no object made), else a new one, which holds no body alive."""
    global _last
    model = _model(buf, model_at, model_end, n) if model_at >= 0 else None
    fields = _last
    if fields is not None and fields.stream is stream and fields.n is count and fields.model is model:
        return fields
    _last = _walked(model, None, stream, count, None, None, -1, -1, None)
    return _last


def _walked(model, user, stream, count, body, spans, prompt_at, prompt_end, prompt_span):
    """A walk's answer (its messages decoded only if something asks for them)."""
    fields = Walked.__new__(Walked)
    fields.model = model
    fields.user = user
    fields.stream = stream
    fields.n = count
    fields.body = body
    fields.spans = spans
    fields.prompt_at = prompt_at
    fields.prompt_end = prompt_end
    fields.prompt_span = prompt_span
    fields._messages = None
    return fields


def _model(buf, at, end, n):
    """The model's name at ``buf[at:end]`` as a str: the last one again where the body names
    the same model (a fleet's bodies name a few), so most requests make no string for it, and
    the metrics' lookups by model find its hash already computed."""
    global _model_raw, _model_text
    size = end - at
    if _model_raw is not None and len(_model_raw) == size and _same(buf, at, n, _model_raw, size):
        return _model_text
    _model_raw = buf[at:end]
    _model_text = _model_raw.decode("ascii")
    return _model_text


def _messages(buf, pos, n, spans):
    """The offset after the list of messages at ``pos`` (its "["), their spans appended, or -1
    (not one ``walk`` is sure of)."""
    pos = _space(buf, pos + 1, n)
    if pos < n and buf[pos] == 93:  # "]"
        return pos + 1
    while True:
        if pos >= n or buf[pos] != 123:
            return -1
        pos = _message(buf, pos, n, spans)
        if pos < 0 or len(spans) > _MOST_SPANS:
            return -1
        pos = _space(buf, pos, n)
        if pos >= n:
            return -1
        if buf[pos] == 93:
            return pos + 1
        if buf[pos] != 44:
            return -1
        pos = _space(buf, pos + 1, n)


def _message(buf, pos, n, spans):
    """The offset after the message object at ``pos``, its spans appended (its role's first,
    whichever of its keys comes first), or -1."""
    mark = len(spans)
    _span(spans, _ROLE, -1, -1, 0)
    seen = 0  # role 1, content 2
    user = 0
    pos = _space(buf, pos + 1, n)
    if pos < n and buf[pos] == 125:
        _span(spans, _END, 0, 0, 0)
        return pos + 1
    while True:
        at = pos + 1
        end = _key(buf, pos, n)
        pos = _value(buf, end, n)
        if pos < 0:
            return -1
        size = end - at
        first = buf[pos]
        if size == 4 and _same(buf, at, n, b"role", 4):
            if seen & 1:
                return -1
            seen |= 1
            if first == 34:
                at = pos + 1
                pos = _string_end(buf, at, n)
                if pos < 0 or not _printable(buf, at, pos):
                    return -1
                spans[mark + 1] = at
                spans[mark + 2] = pos
                spans[mark + 3] = pos - at
                user = 1 if pos - at == 4 and _same(buf, at, n, b"user", 4) else 0
                pos += 1
            elif _same(buf, pos, n, b"null", 4):
                pos += 4
            else:
                return -1
        elif size == 7 and _same(buf, at, n, b"content", 7):
            if seen & 2:
                return -1
            seen |= 2
            if first == 34:
                pos = _text(buf, pos, n, spans)
            elif first == 91:
                pos = _parts(buf, pos, n, spans)
            elif _same(buf, pos, n, b"null", 4):
                pos += 4
            else:
                return -1
            if pos < 0:
                return -1
        else:
            pos = _skip(buf, pos, n, 3, True)
            if pos < 0:
                return -1
        pos = _space(buf, pos, n)
        if pos >= n:
            return -1
        if buf[pos] == 44:
            pos = _space(buf, pos + 1, n)
        elif buf[pos] == 125:
            _span(spans, _END, user, 0, 0)
            return pos + 1
        else:
            return -1


def _parts(buf, pos, n, spans):
    """The offset after a content's list of parts at ``pos``, the spans of their texts
    appended, or -1."""
    pos = _space(buf, pos + 1, n)
    if pos < n and buf[pos] == 93:
        return pos + 1
    while True:
        if pos >= n or buf[pos] != 123:
            return -1
        pos = _space(buf, pos + 1, n)
        if pos < n and buf[pos] == 125:
            pos += 1
        else:
            seen = False
            while True:
                at = pos + 1
                end = _key(buf, pos, n)
                pos = _value(buf, end, n)
                if pos < 0:
                    return -1
                size = end - at
                if size == 4 and _same(buf, at, n, b"text", 4):
                    if seen:
                        return -1
                    seen = True
                    if buf[pos] == 34:
                        pos = _text(buf, pos, n, spans)
                    elif _same(buf, pos, n, b"null", 4):
                        pos += 4
                    else:
                        return -1
                else:
                    pos = _skip(buf, pos, n, 5, True)
                if pos < 0:
                    return -1
                pos = _space(buf, pos, n)
                if pos >= n:
                    return -1
                if buf[pos] == 44:
                    pos = _space(buf, pos + 1, n)
                elif buf[pos] == 125:
                    pos += 1
                    break
                else:
                    return -1
        pos = _space(buf, pos, n)
        if pos >= n or len(spans) > _MOST_SPANS:
            return -1
        if buf[pos] == 93:
            return pos + 1
        if buf[pos] != 44:
            return -1
        pos = _space(buf, pos + 1, n)


def _text(buf, pos, n, spans):
    """The offset after the text string at ``pos`` (its opening quote), its span appended
    (none for an empty one), or -1. Compiled: this, in C (bodywalk.pxd)."""
    if _COMPILED:
        return fleetproxy_walk_text(spans, buf, pos, n)  # noqa: F821 (bodywalk.pxd)
    at = pos + 1
    end = _text_end(buf, at, n)
    if end < 0:
        return -1
    raw = bytes(buf[at:end])
    if b"\\" in raw:
        _span(spans, _ESCAPED, at, end, len(_decode_str(b'"' + raw + b'"').encode()))
    elif raw:
        _span(spans, _PLAIN, at, end, end - at)
    return end + 1


def _span(spans, kind, at, end, size):
    """Append an item to ``spans``. Compiled: its integers appended in C, no list made for them."""
    if _COMPILED:
        return fleetproxy_span(spans, kind, at, end, size)  # noqa: F821 (bodywalk.pxd)
    spans += [kind, at, end, size]
    return 0


def _text_end(buf, pos, n):
    """Where the string whose first byte is at ``pos`` ends (its closing quote), or -1 where
    msgspec might not read it as a str: no end, a control byte, a malformed escape, a \\u
    escape of half a surrogate pair, or bytes that are not UTF-8 (overlong forms and surrogates
    included). Compiled: this, in C (bodywalk.pxd), 16 bytes a step between escapes and
    non-ASCII."""
    if _COMPILED:
        return fleetproxy_text_close(buf, pos, n)  # noqa: F821 (bodywalk.pxd)
    while pos < n:
        c = buf[pos]
        if c == 34:
            return pos
        if c < 32:
            return -1
        if c == 92:
            if pos + 1 >= n:
                return -1
            c = buf[pos + 1]
            if c == 117:  # "u"
                unit = _hex4(buf, pos + 2, n)
                pos += 6
                if 0xDC00 <= unit <= 0xDFFF or unit < 0:
                    return -1
                if 0xD800 <= unit <= 0xDBFF:
                    if not _same(buf, pos, n, b"\\u", 2) or not 0xDC00 <= _hex4(buf, pos + 2, n) <= 0xDFFF:
                        return -1
                    pos += 6
            elif c in b'"\\/bfnrt':
                pos += 2
            else:
                return -1
        elif c >= 128:
            size = _utf8(buf, pos, n)
            if not size:
                return -1
            pos += size
        else:
            pos += 1
    return -1


def _hex4(buf, pos, n):
    """The four hex digits at ``pos`` as a number, or -1."""
    digits = bytes(buf[pos:pos + 4])
    if len(digits) != 4 or digits.strip(b"0123456789abcdefABCDEF"):
        return -1
    return int(digits, 16)


def _utf8(buf, pos, n):
    """How many bytes the UTF-8 character at ``pos`` takes (well formed: no overlong form, no
    surrogate, none past U+10FFFF), or 0."""
    for size in (2, 3, 4):
        if pos + size <= n:
            try:
                bytes(buf[pos:pos + size]).decode("utf-8")
                return size
            except UnicodeDecodeError:
                pass
    return 0


def walked_prompt(body, spans, limit, least):
    """``prompt_of`` of a Walked: the same Prompt, its text written from the body's bytes (the
    messages' ``spans``, or a completions prompt's one text). The sizes first (the spans hold
    them), then one bytes object of the prompt's size, written once."""
    m = len(spans)
    size = 0  # bytes so far
    opening = -1
    later = False
    i = 0
    while i < m:
        kind = spans[i]
        if kind == _ROLE:
            if opening >= 0:
                later = True
                if size >= limit:
                    break
            size += 1  # and "\n"
        elif kind == _END:
            size += 1  # "\x1e"
            if opening < 0 and spans[i + 1]:
                opening = size
        more = spans[i + 3]  # the item's bytes; compiled, a C integer: the sum makes no int object
        size += more
        i += 4
    total = size if size < limit else limit
    if total <= 0 or total < least:
        return None
    return Prompt(_write(body, spans, total), (opening if opening < total else total) if opening > 0 else 0, later)


def _write(buf, spans, total):
    """The first ``total`` bytes of the messages' prompt, as ``prompt_of`` writes it: each
    message's role, a newline, its texts and a record separator."""
    if not _COMPILED:
        parts = []
        for i in range(0, len(spans), 4):
            kind, at, end = spans[i], spans[i + 1], spans[i + 2]
            if kind == _ROLE:
                parts.append((bytes(buf[at:end]) if at >= 0 else b"") + b"\n")
            elif kind == _END:
                parts.append(b"\x1e")
            elif kind == _PLAIN:
                parts.append(bytes(buf[at:end]))
            else:
                parts.append(_decode_str(bytes(buf[at - 1:end + 1])).encode())
        return b"".join(parts)[:total]
    text = fleetproxy_new_bytes(total)  # noqa: F821 (bodywalk.pxd)
    out = text
    written = 0
    i = 0
    while written < total:
        kind = spans[i]
        at = spans[i + 1]
        end = spans[i + 2]
        i += 4
        if kind == _ROLE:
            if at >= 0:
                written = fleetproxy_put_upto(out, written, total, buf + at, end - at)  # noqa: F821 (bodywalk.pxd)
            if written < total:
                out[written] = 10
                written += 1
        elif kind == _END:
            out[written] = 30
            written += 1
        elif kind == _PLAIN:
            written = fleetproxy_put_upto(out, written, total, buf + at, end - at)  # noqa: F821 (bodywalk.pxd)
        else:
            written += fleetproxy_unescape(buf, at, end, out + written, total - written)  # noqa: F821 (bodywalk.pxd)
    return text
