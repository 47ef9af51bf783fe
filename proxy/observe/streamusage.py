"""Token counts for streams whose client did not ask for them, invisible to that client.

vLLM reports a stream's tokens only in a final usage event, sent when the request says
``"stream_options": {"include_usage": true}``. When observing, the proxy adds that option to a
streamed chat or completions request that has no ``stream_options`` (``wants_usage``, ``usage_body``) and takes
back out of the response what the option changed, so the client reads the bytes vLLM would
have sent it without the option. What the option changes (vLLM 0.32, ``serving.py`` of chat and
completions, and the recordings in tests/realvllm/recorded/details/chat_stream*.http):

- one more event before ``data: [DONE]``: ``{"id":...,"choices":[],"usage":{...},
  "system_fingerprint":"..."}`` (fields set only, no ``"usage": null`` on other events);
- ``"system_fingerprint"`` leaves the event that carries ``finish_reason`` (where vLLM puts it
  without the option, as the last field) for that usage event.

Every other event is the same byte for byte. So the relay forwards events as they come until
one carries a ``finish_reason`` (``FINISH``, one search per read from its end, ``finish_at``: a
finish reason in generated text is escaped, ``\\"finish_reason\\"``, and cannot match); from there to the end of
the body (the usage event and ``[DONE]`` follow within the same engine step) it holds the bytes
and ``strip`` rewrites them once: the usage event dropped (and kept for the token counts), its
fingerprint put back at the end of the finish event. Only requests with ``n`` absent or 1 are
rewritten: with several choices a finish event may come long before the others end.
"""

from ..routing.bodywalk import Walked

FINISH = b'"finish_reason":"'
_REASON = FINISH[:-1]  # and then null, or the reason's string
OPTION = b'"stream_options":{"include_usage":true},'
_CHAT, _COMPLETIONS = b"/v1/chat/completions", b"/v1/completions"  # the routes include_usage is added on
_FINGERPRINT = b',"system_fingerprint":'
_DONE = b"data: [DONE]"
_VLLM_END = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"  # vLLM's [DONE] chunk, then the last chunk
_CHOICES = b'"choices":[]'
_USAGE = b'"usage":{'
_CHOICES_USAGE = b'"choices":[],"usage":{'  # how vLLM writes them in its usage event
_EVENT_START = b"data: {"
_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (streamusage.pxd)


def finish_at(data):
    """Where the finish event's ``"finish_reason":"`` is in ``data`` (whole units of a stream
    the relay watches), or -1: the last ``"finish_reason":`` of the read, when a string follows
    it. The last one decides: with one choice (``wants_usage``) no choice event follows the
    finish event, and every event before it says ``null``. Searched from the end (``rfind``),
    where a token event has it a few dozen bytes in, so the content and ids before it are not
    read at all. Asked once per read of a watched stream, so compiled it is the search itself,
    no call through ``rfind``'s optional arguments."""
    n = len(data)
    if _COMPILED:
        i = fleetproxy_back(data, 0, n, _REASON, len(_REASON), _REASON_SKIP)  # noqa: F821 (streamusage.pxd)
    else:
        i = data.rfind(_REASON)
    if i < 0 or i + 16 >= n or data[i + 16] != 34:
        return -1
    return i


def quiet_end(data):
    """The end of ``data`` from its last ``"finish_reason":`` on, when that key says null (no
    finish event is in ``data``), or None (no such key near the end). Every token event of a
    stream ends the same way after its finish reason (vLLM writes its fields in one order), so
    a later read that ends with it (``quiet``) has no finish event either: one compare per
    read instead of ``finish_at``'s search. The last few ends learned are shared, one object
    each, by the streams that end so (compared in place: no copy, no hash)."""
    n = len(data)
    buf = data
    i = rfind(data, _REASON, _REASON_SKIP, n - _QUIET_MAX if n > _QUIET_MAX else 0)
    if i < 0 or i + 16 >= n or buf[i + 16] == 34:
        return None
    ends = _quiet_ends
    for k in range(len(ends)):
        end = ends[k]
        if len(end) == n - i and after(data, i, end) == n:
            return end
    end = data[i:]
    global _quiet_next
    ends[_quiet_next] = end
    _quiet_next = (_quiet_next + 1) % len(ends)
    return end


def known(data):
    """The end learned by ``quiet_end`` (from any stream) that ``data`` ends with, or None:
    asked where a read does not end as its stream's last quiet read did, before ``finish_at``'s
    search. Whichever stream taught an end, a read that ends with it has no finish event. vLLM's
    role event ends otherwise than its token events, so each stream's first two reads differ
    from the one before them; with the ends known, each costs a few compares, not a search and
    ``quiet_end``'s."""
    ends = _quiet_ends
    n = len(data)
    for k in range(len(ends)):
        end = ends[k]
        m = len(end)
        if not m:
            continue
        if _COMPILED:  # quiet's compare inline: a few C compares per end, no call
            if fleetproxy_ends_with(data, n, end, m):  # noqa: F821 (streamusage.pxd)
                return end
        elif data.endswith(end):
            return end
    return None


def quiet(data, end):
    """Whether ``data`` ends with ``end`` (a ``quiet_end``): its last ``"finish_reason":`` is
    then that null one (``end`` holds no other after it), so ``finish_at(data)`` is -1."""
    if not _COMPILED:
        return data.endswith(end)
    return fleetproxy_ends_with(data, len(data), end, len(end))  # noqa: F821 (streamusage.pxd; the relay inlines it)


def skips(needle):
    """``rfind``'s table for ``needle`` (up to 255 bytes): for each byte, how far a window that
    starts on it and does not match moves back: to where the needle next has that byte after
    its start (its first index there), or past it (its length) where it has none. No place in
    between can start a match (Horspool's search, backwards)."""
    m = len(needle)
    return bytes(next((j for j in range(1, m) if needle[j] == c), m) for c in range(256))


def rfind(data, needle, skip, lo=0, hi=-1):
    """``data.rfind(needle, lo, hi)`` for ``lo`` >= 0 (``hi`` -1: the end of ``data``), ``skip``
    being ``skips(needle)``. Compiled, a window moved back from ``hi`` by ``skip`` of the byte it
    starts on (``fleetproxy_back``, streamusage.pxd): where the needle is near the end and most
    bytes after it are not in it (a key of a JSON event or body read from its end), a few reads
    of C and no method call, where ``bytes.rfind`` parses its arguments and reads backwards byte
    by byte."""
    n = len(data)
    if hi < 0 or hi > n:
        hi = n
    if not _COMPILED:
        return data.rfind(needle, lo, hi)
    return fleetproxy_back(data, lo, hi, needle, len(needle), skip)  # noqa: F821 (streamusage.pxd)


def rfind_open(data, key, lo=0, hi=-1):
    """``data.rfind(key, lo, hi)`` for a ``key`` that ends with ``{`` (a JSON key and the
    brace that opens its object: ``"usage":{``). Compiled, the braces are found from the end by
    ``memrchr`` (vectorized: a few instructions per 32 bytes) and the key compared before each:
    a JSON text has few braces, where ``rfind``'s window stops on every letter of the key."""
    n = len(data)
    if hi < 0 or hi > n:
        hi = n
    if not _COMPILED:
        return data.rfind(key, lo, hi)
    return fleetproxy_rfind_open(data, lo, hi, key, len(key))  # noqa: F821 (streamusage.pxd)


_EVENT_LINE = b"\n" + _EVENT_START


def rfind_event_open(data, key, lo=0):
    """``rfind_open(data, key, lo)`` that reads back no further than the start of the last SSE
    data event (``data: {`` at ``lo`` or after a line feed): where the key is when it is there,
    -1 when neither is in ``data[lo:]``, and ``-2 - start`` when the last event starts at
    ``start`` and holds no key. A stream's usage is in its last data event, so a stream that
    carries none is given up on at that event, not searched to its first byte. A JSON body
    never stops it: a line feed in a JSON string is escaped, and ``data: {`` is no JSON
    outside one."""
    if _COMPILED:
        return fleetproxy_rfind_event_open(data, lo, len(data), key, len(key))  # noqa: F821 (streamusage.pxd)
    opened = data.rfind(key, lo)
    event = data.rfind(_EVENT_LINE, lo) + 1
    if event == 0:
        event = lo if data.startswith(_EVENT_START, lo) else -1
    if opened >= 0 and opened > event:
        return opened
    return -1 if event < 0 else -2 - event


def after(data, pos, literal):
    """The offset after ``literal`` when it is at ``data[pos]``, else -1."""
    n = len(data)
    size = len(literal)
    if pos < 0 or pos + size > n:
        return -1
    buf = data
    lit = literal
    if _COMPILED:  # one memcmp, not a loop of byte compares
        return pos + size if memcmp(buf + pos, lit, size) == 0 else -1  # noqa: F821 (streamusage.pxd)
    for i in range(size):
        if buf[pos + i] != lit[i]:
            return -1
    return pos + size


_REASON_SKIP = skips(_REASON)
_QUIET_MAX = 128  # bytes after the key: a token event's end is a few dozen (vLLM 0.32: 39)
_quiet_ends = [b"", b"", b"", b""]  # the last ends learned (a chat's role event, its token events)
_quiet_next = 0
_FINISH_SKIP = skips(FINISH)
_FINGERPRINT_SKIP = skips(_FINGERPRINT)


def find(data, needle, start=0, end=-1):
    """``data.find(needle, start, end)`` for ``start`` >= 0 (``end`` -1: the end of ``data``). Asked a
    few times per observed stream (its held end, the in-band error search over its last reads),
    so compiled it is glibc's memmem through a pointer: a quarter of ``bytes.find``'s time on a
    token event (a JSON needle ends in a quote, which defeats find's skip table), and no method
    call."""
    n = len(data)
    if end < 0 or end > n:
        end = n
    if not _COMPILED:
        return data.find(needle, start, end)
    if start >= end:
        return start if start == end and not needle else -1
    buf = data
    lit = needle
    hit = memmem(buf + start, end - start, lit, len(needle))  # noqa: F821 (streamusage.pxd)
    return hit - buf if hit else -1


def _index(data, byte):
    """Where the first ``byte`` is in ``data``, or -1: ``find`` of one byte, asked once or twice
    per request, so compiled it is memchr inline (no call through ``find``'s arguments)."""
    if not _COMPILED:
        return data.find(byte)
    buf = data
    hit = memchr(buf, byte, len(data))  # noqa: F821 (streamusage.pxd)
    return hit - buf if hit else -1


def wants_usage(method, target, fields):
    """Whether to add include_usage to this request, from its body's fields as routing
    decoded them (``routing.fields.decode``: False when the body is not a JSON object): a
    streamed chat/completions POST with no ``stream_options`` (the client chose otherwise; a
    ``continuous_usage_stats`` without ``include_usage`` must stay off) and ``n`` absent or 1."""
    if type(fields) is Walked:  # the body walk's answer: no stream_options, n 1 or None
        walked = fields
        if walked.stream is not True or method != b"POST":
            return False
    else:
        if not fields or fields.stream is not True or method != b"POST":
            return False
        # Present, even null, it stays: a second "stream_options" key would not be read first.
        n = fields.n
        if fields.stream_options or not (n is None or n == 1):
            return False
    query = _index(target, 63)  # "?"
    path = target if query < 0 else target[:query]
    return path == _CHAT or path == _COMPLETIONS


def unit_start(data, at, chunked):
    """Where the unit that holds ``data[at]`` starts: its chunk (``chunked``), or its event.
    ``data`` starts at a unit boundary (the relay cuts reads there), so the whole units before
    the finish event can go to the client at once, and only the end of the stream is held and
    rewritten, even when a burst of events arrived in one read."""
    if not chunked:
        blank = data.rfind(b"\n\n", 0, at)
        return blank + 2 if blank >= 0 else 0
    n = len(data)
    pos = 0
    while True:  # by the chunks' sizes: a few hex digits read per chunk (C reads compiled)
        end = _chunk_end(data, n, pos)
        if end <= 0 or end > at:  # ``at``'s chunk, the last one, or one that cannot be read
            return pos
        pos = end


def _chunk_end(buf, n, pos):
    """Where the chunk whose size line starts at ``buf[pos]`` ends (after its payload's CRLF);
    0 for the last chunk (size 0); -1 where no chunk starts there (hex digits, no extensions,
    CRLF, the payload, CRLF). Compiled: this, in C (streamusage.pxd)."""
    if _COMPILED:
        return fleetproxy_chunk_end(buf, n, pos)  # noqa: F821 (streamusage.pxd)
    size = 0
    i = pos
    while i < n:
        c = buf[i]
        if 48 <= c <= 57:
            c -= 48
        elif 97 <= c <= 102:
            c -= 87
        elif 65 <= c <= 70:
            c -= 55
        else:
            break
        size = size * 16 + c
        if size > n:
            return -1
        i += 1
    if i == pos or i + 1 >= n or buf[i] != 13 or buf[i + 1] != 10:
        return -1
    if size == 0:
        return 0
    stop = i + 2 + size
    if stop + 2 > n or buf[stop] != 13 or buf[stop + 1] != 10:
        return -1
    return stop + 2


def usage_body(body):
    """``body`` (a JSON object, ``wants_usage`` said so) with include_usage as its first field
    (compiled: one allocation, no slices)."""
    at = _index(body, 123) + 1  # after the "{"
    if _COMPILED:
        return fleetproxy_insert(body, len(body), at, OPTION, len(OPTION))  # noqa: F821 (streamusage.pxd)
    return body[:at] + OPTION + body[at:]


def strip(data, chunked, start=0):
    """(bytes for the client, the usage event or None) from ``data``, whose end from ``start``
    on is the end of a stream from the unit that carried its finish event, in the upstream's
    framing (``chunked``, or plain SSE), whole events only; ``data[:start]`` (units before the
    finish event that came in the same read) passes first as it came. Anything it cannot read
    is passed on unchanged."""
    if chunked:
        done = _strip_vllm(data, start)
        if done is not None:
            return done
    if start:
        out, usage = _strip(data[start:], chunked)
        return data[:start] + out, usage
    return _strip(data, chunked)


def _strip_vllm(tail, start=0):
    """``strip`` of vLLM's own end of a chunked stream, or None for ``_strip`` to read: the
    finish event, the usage event and [DONE], one chunk each, then the last chunk. Only the
    usage chunk goes and the finish chunk is rewritten; the rest passes as it came, with no
    de-chunking (the same result as ``_strip``, which a test holds it to), in one allocation
    where compiled. The chunks are walked by their sizes from ``start`` (the relay holds from
    a chunk's start), a few hex digits read per chunk; the keys are looked for from the ends of
    their events (``rfind``), where vLLM writes them, and C reads in the compiled build
    (streamusage.pxd)."""
    n = len(tail)
    buf = tail
    if _COMPILED:  # the walk below, in C (streamusage.pxd), into where[]
        kind = fleetproxy_vllm_end(  # noqa: F821 (streamusage.pxd)
            buf, n, start, _VLLM_END, len(_VLLM_END), _EVENT_START, len(_EVENT_START), _FINGERPRINT,
            len(_FINGERPRINT), _FINGERPRINT_SKIP, _CHOICES_USAGE, len(_CHOICES_USAGE), FINISH, len(FINISH),
            _FINISH_SKIP, where)  # noqa: F821 (a C array: streamusage.pxd)
        if kind == 0:
            return None
        event = buf[where[6]:where[7]]
        if kind == 2:
            return tail[:where[2]] + tail[where[3]:], event
        finish, at, usage, done, found, stop = where[0], where[1], where[2], where[3], where[4], where[5]
        return fleetproxy_refinish(buf, n, finish, at, usage, found, stop, done), event  # noqa: F821 (.pxd)
    if n - start < 40 or after(tail, n - len(_VLLM_END), _VLLM_END) < 0:
        return None
    finish = usage = done = -1  # where the last three data chunks start (their size lines)
    pos = start
    while True:
        end = _chunk_end(buf, n, pos)
        if end < 0:
            return None  # (chunk extensions too: _strip's to read)
        if end == 0:
            break
        finish, usage, done = usage, done, pos
        pos = end
    # The last chunk is where _VLLM_END put it; [DONE] came in the chunk before (the same).
    if finish < 0 or pos != n - 5 or done != n - len(_VLLM_END) or buf[done - 3] != 10 or buf[done - 4] != 10:
        return None
    at = _payload(buf, usage)
    end = done - 2  # the usage event's payload ends there (its "\n\n" included)
    if after(tail, at, _EVENT_START) < 0:
        return None
    # vLLM's usage event: "choices":[],"usage":{...}, then the fingerprint, its last field.
    found = rfind(tail, _FINGERPRINT, _FINGERPRINT_SKIP, at, end)
    if rfind_open(tail, _CHOICES_USAGE, at, found if found >= 0 else end) < 0:
        return None
    event = buf[at:end - 2]  # (compiled: read through the pointer, no slice object)
    if found < 0:
        return tail[:usage] + tail[done:], event
    stop = _string_end(tail, found + len(_FINGERPRINT), end)
    at = _payload(buf, finish)
    if (buf[usage - 5] != 125 or buf[usage - 4] != 10 or buf[usage - 3] != 10 or after(tail, at, _EVENT_START) < 0
            or rfind(tail, FINISH, _FINISH_SKIP, at, usage) < 0
            or (finish > start and find(tail, FINISH, start, finish) >= 0)):
        return None  # (another finish event before it: _strip's to rewrite)
    # The finish chunk again, its event closed after the fingerprint.
    size = usage - 5 - at + stop - found + 3
    return b"".join((tail[:finish], b"%x\r\n" % size, tail[at:usage - 5], tail[found:stop], b"}\n\n\r\n",
                     tail[done:])), event


def _payload(buf, chunk):
    """Where the payload of the chunk whose size line starts at ``chunk`` starts (the walk of
    ``_strip_vllm`` checked that line)."""
    while buf[chunk] != 13:
        chunk += 1
    return chunk + 2


def _strip(tail, chunked):
    if chunked:
        payload, rest = _dechunk(tail)
        if payload is None:
            return tail, None
    else:
        payload, rest = tail, b""
    if b"\r" in payload:
        return tail, None  # vLLM ends lines with LF only; another backend's events pass as they are
    events = payload.split(b"\n\n")
    if events[-1]:
        return tail, None  # not whole events
    events.pop()
    used = None
    for i in range(len(events) - 1, -1, -1):
        event = events[i]
        if event.startswith(_EVENT_START) and _CHOICES in event and _USAGE in event:
            used = i
            break
        if event != _DONE:
            return tail, None  # the usage event is the last before [DONE]
    if used is None:
        return tail, None
    usage = events.pop(used)
    at = usage.find(_FINGERPRINT)
    if at >= 0:
        fingerprint = usage[at:_string_end(usage, at + len(_FINGERPRINT))]
        for i in range(used):
            event = events[i]
            if FINISH in event and event.endswith(b"}"):
                events[i] = event[:-1] + fingerprint + b"}"
    if chunked:
        # One event per chunk, as vLLM sends them.
        out = b"".join(b"%x\r\n%b\n\n\r\n" % (len(e) + 2, e) for e in events) + rest
    else:
        out = b"".join(e + b"\n\n" for e in events)
    return out, usage


def _string_end(data, at, n=-1):
    """The offset after the JSON string starting at ``data[at]`` (its opening quote), in
    ``data[:n]`` (``n`` -1: all of it). Compiled: this, in C (streamusage.pxd)."""
    if n < 0:
        n = len(data)
    if _COMPILED:
        return fleetproxy_string_close(data, at, n)  # noqa: F821 (streamusage.pxd)
    i = at + 1
    while i < n:
        c = data[i]
        if c == 92:  # backslash: skip the escaped byte
            i += 2
            continue
        if c == 34:
            return i + 1
        i += 1
    return n


def _dechunk(data):
    """(payload of the data chunks, the last chunk and trailers as they came), or (None, b"")
    when ``data`` is not whole chunks."""
    out = []
    pos = 0
    n = len(data)
    while pos < n:
        nl = data.find(b"\r\n", pos)
        if nl < 0:
            return None, b""
        line = data[pos:nl].split(b";", 1)[0].strip()
        try:
            size = int(line, 16)
        except ValueError:
            return None, b""
        if size == 0:
            return b"".join(out), data[pos:]
        start = nl + 2
        if data[start + size:start + size + 2] != b"\r\n":
            return None, b""
        out.append(data[start:start + size])
        pos = start + size + 2
    return b"".join(out), b""
