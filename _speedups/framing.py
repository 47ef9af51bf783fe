"""Upstream response framing: where a response's head ends, where its body ends, and which
prefix of the bytes received so far may go to the client.

How this works. The relay forwards the upstream's bytes as received (no re-chunking, no SSE
re-encoding). This framer only *tracks* the message while the bytes pass through:

- the head is buffered until CRLFCRLF, then parsed into a status and a header list
  (RFC 9112 section 4 and 5);
- the body is framed by Content-Length, chunked coding (section 7.1), or the connection's
  close (section 6.3 rule 8); the framer walks chunk-size lines and skips chunk data without
  copying it;
- for ``text/event-stream`` bodies, a *safe boundary* is an offset just after a complete SSE
  event (a blank line) that also ends a whole chunk. The relay forwards bytes up to the last
  safe boundary and holds the rest, so that if the upstream dies mid-event, the error event the
  proxy injects starts on an event boundary and the client never sees half an event. vLLM sends
  one event per chunk, so in practice every read ends on a boundary and nothing is held.

``feed(data)`` returns flags (HEAD, DONE, ERROR, EVENT) and leaves offsets into *this* ``data`` in
``head_end``, ``safe_end`` and ``msg_end``. The state carries over between calls, so ``data``
may be split at any byte: the results do not depend on where it was split (every limit below is
on the message, never on a read).

This module is the specification. ``setup.py`` copies it to ``framing_c.py`` and compiles that
with Cython, typed by ``framing_c.pxd`` (aiohttp's "augmenting .pxd"): the same source, with
C ints for the state and direct byte access through a ``const unsigned char *``. That is why the
per-byte work below is written as index loops over ``buf`` rather than ``find``/slices: compiled,
they read the transport's bytes in place and the streaming path (chunk-size line, chunk data,
the CRLF after it, SSE boundary tracking) creates no Python object; run as Python, they touch
only the few bytes of each chunk-size line. Both builds must behave identically
(tests/test_speedups_equivalence.py).

The head is the one place where the two builds run different code, as a Python loop over each
of its bytes would cost several times what bytes methods do: compiled, ``_scan_head`` walks it
once through the pointer; interpreted, ``_parse_head`` splits it with bytes methods. Both sit
here, so the tests run each of them as Python, and the compiled walk, and compare
(tests/test_framing_heads.py).
"""

HEAD = 1
DONE = 2
ERROR = 4
EVENT = 8  # an SSE event ended in this read: safe_end is just after the last one that did
# The flags again, as the framer sets them: C ints where compiled (framing_c.pxd), so that a read
# is not flagged through Python ints; the names above stay what importers read.
_HEAD, _DONE, _ERROR, _EVENT = HEAD, DONE, ERROR, EVENT

# Body framing kinds.
NONE = 0  # no body (1xx, 204, 304, HEAD request)
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3

# Parser states.
S_HEAD = 0
S_LENGTH = 1
S_SIZE = 2  # reading a chunk-size line
S_DATA = 3  # inside chunk data
S_DATA_CRLF = 4  # the CRLF after chunk data
S_TRAILER = 5  # trailer section after the last chunk
S_CLOSE = 6
S_DONE = 7
S_ERROR = 8

MAX_HEAD = 64 * 1024  # bytes, CRLFCRLF included: a larger response head is an upstream fault
MAX_SIZE_LINE = 4096  # bytes: chunk-size line incl. extensions and CR, excl. LF
MAX_TRAILER = 64 * 1024  # bytes: the whole trailer section
MAX_INTERIM = 8  # interim (1xx) responses before the final one; more is a backend stalling in the head
MAX_LENGTH_DIGITS = 18  # significant digits of Content-Length: below 10**18 bytes, fits 63 bits

# RFC 9110 5.6.2 tchar, as a 256-entry table (1 = allowed in a field name).
_TCHAR = bytes(
    1 if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or chr(c) in "!#$%&'*+-.^_`|~") else 0
    for c in range(256)
)
_TCHARS = bytes(c for c in range(256) if _TCHAR[c])  # the same set, for bytes.translate
_HEXDIG = bytes(c in b"0123456789abcdefABCDEF" for c in range(256))  # 1 for a chunk size's digits

# Which way the head is parsed (see the top): setup.py compiles this file as framing_c.
_COMPILED = __name__.endswith("_c")
# Whether this is the extension itself, where C calls exist: the tests set _COMPILED on the
# Python module to run the compiled walk as Python, and that walk then reads byte by byte.
_NATIVE = not __file__.endswith(".py")

_BARE = "bare CR, bare LF or NUL in the response head from upstream"
_OK = b"OK"
_SWITCH = "unexpected 101 Switching Protocols from upstream"
_UNSUPPORTED_TE = "unsupported Transfer-Encoding from upstream"


def _sse_tail_is_boundary(tail):
    # tail holds the last four body bytes, most recent lowest. An SSE event ends with a blank
    # line, and the spec accepts LF, CR or CRLF as line ends.
    return (tail & 0xFFFF) == 0x0A0A or (tail & 0xFFFF) == 0x0D0D or tail == 0x0D0A0D0A


def _tail_after(tail, buf, end, take):
    """``tail`` advanced over buf[end - take:end] (only the last four bytes matter)."""
    if take >= 4:
        return (buf[end - 4] << 24) | (buf[end - 3] << 16) | (buf[end - 2] << 8) | buf[end - 1]
    i = end - take
    while i < end:
        tail = ((tail << 8) | buf[i]) & 0xFFFFFFFF
        i += 1
    return tail


def _matches(buf, at, literal, n, fold):
    """buf[at:at + n] == literal (its first n bytes), ASCII letters folded to lower case first
    if ``fold`` (the caller knows n bytes are there)."""
    i = 0
    while i < n:
        c = buf[at + i]
        if fold and 65 <= c <= 90:
            c += 32
        if c != literal[i]:
            return False
        i += 1
    return True


def _name_is(buf, at, literal, n):
    """Whether the field name ``buf[at:at + n]`` is ``literal`` (lower-case letters and "-",
    ``n`` >= 8) ignoring case. The walk has checked that the name's bytes are tchars. Compiled,
    eight bytes a step with 0x20 OR-ed into each: of the bytes that land on a letter or "-"
    that way only the capitals are tchars (the other, CR, lands on "-"), so on a name it
    folds case exactly as ``_matches`` does."""
    if _NATIVE:
        return fleetproxy_name_is(buf + at, literal, n)  # noqa: F821 (framing_c.pxd)
    return _matches(buf, at, literal, n, True)


def _blank_line(buf, start, end):
    """The offset of the first CRLFCRLF in buf[start:end], or -1: ``bytes.find`` for the compiled
    build, without a method call. It reads about one byte in three of a head: a byte that is
    neither CR nor LF cannot be one of the four, so the next match ends four bytes further.
    Compiled, a vector search for each line's LF instead: a head is a few lines of dozens of
    bytes, and the blank line is the one whose LF follows CR LF CR."""
    if _NATIVE:
        i = start + 3
        while i < end:
            found = memchr(buf + i, 10, end - i)  # noqa: F821 (framing_c.pxd)
            if not found:
                return -1
            i = found - buf
            if buf[i - 1] == 13 and buf[i - 2] == 10 and buf[i - 3] == 13:
                return i - 3
            i += 2  # this LF could be the first one of a match
        return -1
    i = start + 3  # where the LF that ends a match would be
    while i < end:
        c = buf[i]
        if c == 10:
            if buf[i - 1] == 13 and buf[i - 2] == 10 and buf[i - 3] == 13:
                return i - 3
            i += 2  # this LF could be the first one of a match
        elif c == 13:
            i += 1
        else:
            i += 4
    return -1


def _line_end(buf, i, end):
    """The offset of the CRLF that ends the line going on at buf[i] (end if none does), or -1
    if a bare CR, a bare LF or a NUL comes first."""
    if _NATIVE:  # eight bytes a step (framing_c.pxd)
        return fleetproxy_line_end(buf, i, end)  # noqa: F821
    while i < end:
        c = buf[i]
        if c <= 13:
            if c == 13:
                return i if i + 1 < end and buf[i + 1] == 10 else -1
            if c == 10 or c == 0:
                return -1
        i += 1
    return end


def _bare_byte(buf, start, end):
    """Whether buf[start:end] holds a CR or LF that is not part of a CRLF, or a NUL."""
    i = start
    while i < end:
        i = _line_end(buf, i, end)
        if i < 0:
            return True
        i += 2
    return False


def _fields(data, pos, stop, out):
    """Append to ``out`` (name, value) for each field line of ``data[pos:stop]`` (each ends
    with CRLF; a head the framer accepted): the name as sent, the value without the OWS
    around it."""
    while pos < stop:
        colon = data.find(b":", pos, stop)
        eol = data.find(b"\r\n", colon, stop)
        i = _ows_after(data, colon + 1, eol)
        out.append((data[pos:colon], data[i:_ows_before(data, i, eol)]))
        pos = eol + 2


def _ows_after(buf, i, j):
    """``i`` moved on over the OWS (SP, HTAB) that starts ``buf[i:j]``."""
    while i < j and (buf[i] == 32 or buf[i] == 9):
        i += 1
    return i


def _ows_before(buf, i, j):
    """``j`` moved back over the OWS that ends ``buf[i:j]``."""
    while j > i and (buf[j - 1] == 32 or buf[j - 1] == 9):
        j -= 1
    return j


def _one_final_chunked(value):
    """A Transfer-Encoding value whose codings end in the only "chunked" (RFC 9112 6.3: else
    the length is unknowable)."""
    codings = [c.strip().lower() for c in value.split(b",")]
    return codings[len(codings) - 1] == b"chunked" and codings.count(b"chunked") == 1


def _keep_alive_after(value, keep_alive, http10):
    """``keep_alive`` after a Connection field with this value (RFC 9112 9.3)."""
    tokens = [t.strip().lower() for t in value.split(b",")]
    if b"close" in tokens:
        return False
    if b"keep-alive" in tokens and http10:
        return True
    return keep_alive


def _chunk_size(buf, start, end):
    """RFC 9112 7.1: chunk-size = 1*HEXDIG, then optional BWS and ";" chunk-ext, in
    buf[start:end] (the line without its CRLF). Return the size, or -1 if the line is invalid."""
    size = 0
    i = start
    while i < end:
        c = buf[i]
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            break
        if i - start == 15:
            return -1  # 16 hex digits or more: no body is that large
        size = size * 16 + d
        i += 1
    if i == start:
        return -1
    while i < end and (buf[i] == 32 or buf[i] == 9):
        i += 1
    if i < end and buf[i] != 59:  # ";"
        return -1
    return size


class ResponseFramer:
    """Incremental HTTP/1.1 response framing over raw bytes. One per upstream response."""

    def __init__(self, head_request=False):
        self._setup(head_request)

    def _setup(self, head_request):
        """The state before a response's first byte (``__init__``'s, and ``new_framer``'s in C)."""
        self.head_request = bool(head_request)
        self.state = S_HEAD
        self._head_buf = None  # bytearray while a head spans reads
        self.status = 0
        self.version = b""
        self.reason = b""
        self._headers = None  # ``headers``, a list made on first use (``_field_list``)
        self._lazy = False  # ``headers`` are still only in raw_head (the compiled walk's)
        self._walk_from = self._walked = 0  # the walk's fields so far, for a head it refuses
        # The head as received (status line and fields, each with its CRLF), where it is
        # written just as these fields would be: "HTTP/1.1", a reason after the code, each
        # field "name: value" with one SP and nothing around the value. Else None. What the
        # client gets is mostly this head, so heads.client_head copies runs of it.
        self.raw_head = None
        self.kind = NONE
        self.keep_alive = True
        self.event_stream = False
        self.content_length = -1
        self.error = ""
        self.head_end = 0
        self.safe_end = 0
        self.msg_end = 0
        self.body_bytes = 0
        self._remaining = 0  # bytes left in the body (LENGTH) or in the chunk (S_DATA)
        self._line = b""  # the start of a line (chunk size, CRLF, trailer) that spans reads
        self._trailer = 0  # bytes of trailer section so far
        self._tail = 0  # last four body bytes (SSE boundary detection)
        self._hold = False  # safe_end marks boundaries (event streams, de-chunking)
        self._interim = 0  # interim (1xx) responses read before the final head
        # Where the last four chunks that started in the last read of an event stream start
        # (their size lines; a ring): the relay asks which holds an offset (``unit_of``), where
        # it would walk the chunks from the read's start again.
        self._units = 0
        self._unit = [0, 0, 0, 0]

    @property
    def headers(self):
        """[(name, value)] as received, names not lower-cased. Where the head was written
        verbatim (``raw_head``), the compiled walk makes no object per field: they are cut
        from raw_head here, the first time they are asked for (a relay that only forwards the
        head never asks: heads.client_head walks raw_head itself)."""
        if self._lazy:
            self._lazy = False
            raw = self.raw_head
            _fields(raw, len(self.reason) + 15, len(raw), self._field_list())
        return self._field_list()

    def _field_list(self):
        """``_headers``, made the first time one is needed: a head the walk kept whole
        (``raw_head``) and nobody asks about needs none."""
        if self._headers is None:
            self._headers = []
        return self._headers

    def forget_head(self):
        """The head is in the client's hands now: hold none of it for the body's life."""
        self._lazy = False
        if self._headers:  # (lazy, the usual case: none were cut)
            del self._headers[:]
        self.raw_head = None

    # -- body -----------------------------------------------------------------------------

    def feed(self, data):
        """Advance over ``data``; return HEAD|DONE|ERROR flags. See the module docstring."""
        if type(data) is not bytes:
            data = bytes(data)
        chunk = data  # compiled: typed bytes, so the pointer and the size are read, not asked for
        buf = chunk  # compiled: a pointer to data's bytes (framing_c.pxd)
        n = len(chunk)
        flags = 0
        pos = 0
        self.head_end = 0
        self.safe_end = 0
        self.msg_end = 0
        state = self.state
        if state == S_ERROR:
            return _ERROR
        if state == S_HEAD:
            pos = self._head(data, n)
            if pos <= 0:
                return _ERROR if pos < 0 else 0
            flags = _HEAD
            state = self.state
            if state == S_DONE:
                flags |= _DONE

        sse = self.event_stream
        self._units = 0
        if sse and state == S_SIZE and not self._line:  # a chunk starts at the read's first body byte
            self._unit[0] = pos
            self._units = 1
        while pos < n and state != S_DONE:
            if state == S_SIZE and sse and not self._line:
                # An event stream's usual chunk, whole in this read (hex digits, CRLF, its data,
                # CRLF: vLLM's one event per chunk) in one step, not three turns of the state
                # machine. Anything else (an extension, a chunk the read cuts, the last chunk, a
                # line that is wrong) goes the general way below, which says what is wrong.
                hexdig = _HEXDIG
                i = pos
                while i < n and hexdig[buf[i]]:
                    i += 1
                size = _chunk_size(buf, pos, i) if i + 1 < n and buf[i] == 13 else -1
                stop = i + 2 + size
                if size > 0 and stop + 2 <= n and buf[i + 1] == 10 and buf[stop] == 13 and buf[stop + 1] == 10:
                    self.body_bytes += size
                    self._tail = _tail_after(self._tail, buf, stop, size)
                    pos = stop + 2
                    self._unit[self._units & 3] = pos
                    self._units += 1
                    if _sse_tail_is_boundary(self._tail):
                        self.safe_end = pos
                        flags |= _EVENT
                    continue
            if state == S_DATA:
                take = n - pos
                if take > self._remaining:
                    take = self._remaining
                pos += take
                self._remaining -= take
                self.body_bytes += take
                if sse:
                    self._tail = _tail_after(self._tail, buf, pos, take)
                if self._remaining == 0:
                    state = S_DATA_CRLF
            elif state == S_SIZE or state == S_DATA_CRLF or state == S_TRAILER:
                # One line, ended by LF. Look for the LF no further than the line's limit, so
                # that a line too long fails the same whether or not it spans reads.
                have = len(self._line)
                if state == S_SIZE:
                    limit = MAX_SIZE_LINE
                elif state == S_DATA_CRLF:
                    limit = 1  # the CR
                else:
                    limit = MAX_TRAILER - self._trailer
                stop = pos + limit - have + 1
                if stop > n:
                    stop = n
                nl = pos
                while nl < stop and buf[nl] != 10:
                    nl += 1
                if nl == stop:
                    if stop == n and n - pos <= limit - have:
                        self._line += data[pos:n]  # the line continues in the next read
                        pos = n
                        break
                    if state == S_SIZE:
                        return flags | self._fail("chunk-size line too long from upstream")
                    if state == S_DATA_CRLF:
                        return flags | self._fail("missing CRLF after chunk data from upstream")
                    return flags | self._fail("trailer section too large from upstream")
                if have:
                    line = self._line + data[pos:nl]
                    self._line = b""
                    lbuf = line
                    start = 0
                    end = have + nl - pos
                else:
                    lbuf = buf
                    start = pos
                    end = nl
                pos = nl + 1
                if end == start or lbuf[end - 1] != 13:
                    return flags | self._fail("bare LF in chunked framing from upstream")
                end -= 1
                if state == S_SIZE:
                    size = _chunk_size(lbuf, start, end)
                    if size < 0:
                        return flags | self._fail("invalid chunk size from upstream")
                    if size == 0:
                        state = S_TRAILER
                    else:
                        self._remaining = size
                        state = S_DATA
                elif state == S_DATA_CRLF:
                    if end != start:
                        return flags | self._fail("missing CRLF after chunk data from upstream")
                    state = S_SIZE
                    if sse:
                        self._unit[self._units & 3] = pos
                        self._units += 1
                        if _sse_tail_is_boundary(self._tail):
                            self.safe_end = pos
                            flags |= _EVENT
                else:  # trailer section: ends at an empty line
                    self._trailer += end - start + 2
                    if end == start:
                        state = S_DONE
                        self.safe_end = pos
                        self.msg_end = pos
                        flags |= _DONE
            elif state == S_LENGTH:
                take = n - pos
                if take > self._remaining:
                    take = self._remaining
                start = pos
                pos += take
                self._remaining -= take
                self.body_bytes += take
                if sse and self._sse_plain(data, start, pos):
                    flags |= _EVENT
                if self._remaining == 0:
                    state = S_DONE
                    self.safe_end = pos
                    self.msg_end = pos
                    flags |= _DONE
            else:  # S_CLOSE
                self.body_bytes += n - pos
                if sse and self._sse_plain(data, pos, n):
                    flags |= _EVENT
                pos = n
        self.state = state
        if not self._hold:
            # Only event streams (and de-chunking) need holding back; the rest goes as it came.
            self.safe_end = pos
        if state == S_DONE and pos < n:
            return flags | self._fail("upstream sent bytes after the end of the response")
        return flags

    def unit_of(self, at):
        """Where the chunk that holds ``data[at]`` starts, ``data`` the last read fed (an event
        stream's, chunked), when that chunk is one of the last four that started in that read;
        else -1."""
        k = self._units
        i = k - 1
        while i >= 0 and i >= k - 4:
            start = self._unit[i & 3]
            if start <= at:
                return start
            i -= 1
        return -1

    def eof(self):
        """The upstream closed. Return True if that ends the message cleanly."""
        if self.state == S_CLOSE:
            self.state = S_DONE
            return True
        return self.state == S_DONE

    @property
    def done(self):
        return self.state == S_DONE

    @property
    def started(self):
        return self.state != S_HEAD

    # -- head -----------------------------------------------------------------------------

    def _head(self, data, n):
        """Buffer the head until its blank line, then parse it. Return the offset of the body
        in ``data``, 0 while the head is incomplete, -1 on error. Interim responses (100, 102,
        103) before the final head are read and dropped: this proxy sent the request whole, so
        nothing waits on them, and the client's own ``Expect`` was answered by the proxy."""
        skip = 0  # where this head starts in data: after the interim heads already read
        while True:
            acc = self._head_buf
            if acc is None:
                prior = 0
                end = _blank_line(data, skip, n) if _COMPILED else data.find(b"\r\n\r\n", skip)
            else:
                prior = len(acc)
                acc += data
                end = acc.find(b"\r\n\r\n", prior - 3 if prior > 3 else 0)
            if end < 0:
                if prior + n - skip >= MAX_HEAD:
                    self._fail("upstream response head too large")
                    return -1
                if acc is None:
                    self._head_buf = bytearray(data[skip:] if skip else data)
                return 0
            if end + 4 - skip > MAX_HEAD:
                self._fail("upstream response head too large")
                return -1
            if acc is None:
                head = data
                start = skip
            else:
                head = bytes(acc[: end + 2])  # with the CRLF that ends its last line (raw_head)
                start = 0
            self._head_buf = None
            err = self._scan_head(head, start, end) if _COMPILED else self._parse_head(head, start, end)
            if err is not None:
                self._fail(err)
                return -1
            pos = end + 4 - prior
            if self.status >= 200:
                break
            self._interim += 1
            if self._interim > MAX_INTERIM:
                self._fail("too many interim responses from upstream")
                return -1
            self.status = 0
            del self.headers[:]
            if pos >= n:
                return 0
            skip = pos
        kind = self.kind
        if kind == NONE:
            state = S_DONE
        elif kind == LENGTH:
            self._remaining = self.content_length
            state = S_LENGTH if self.content_length else S_DONE
        elif kind == CHUNKED:
            state = S_SIZE
        else:
            state = S_CLOSE
        self.state = state
        self._hold = self.event_stream
        self.head_end = pos
        self.safe_end = pos
        if state == S_DONE:
            self.msg_end = pos
        return pos

    def _parse_head(self, data, start, end):
        """Status line and fields (RFC 9112 4, 5) of the head in data[start:end] (its blank
        line excluded). Return None, or what is wrong. ``_scan_head`` is the same rules walked
        byte by byte, for the compiled build."""
        head = data[start:end] if start or end != len(data) else data
        lines = head.split(b"\r\n")
        count = len(lines) - 1
        # RFC 9112 2.2: CR and LF appear only as the CRLF ending each line; NUL nowhere. A bare
        # one in the reason or a value would split the head we send the client.
        if head.count(b"\r") != count or head.count(b"\n") != count or b"\x00" in head:
            return _BARE
        parts = lines[0].split(b" ", 2)
        version = parts[0]
        if len(parts) < 2 or (version != b"HTTP/1.1" and version != b"HTTP/1.0"):
            return "invalid status line from upstream"
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or code[0] == 48:
            return "invalid status code from upstream"
        self.version = version
        self.status = int(code)
        self.reason = parts[2] if len(parts) == 3 else b""
        if self.status < 200:
            # 101 would switch to a protocol this proxy never asked for; the other 1xx are
            # interim responses, dropped by _head before the final one.
            return _SWITCH if self.status == 101 else None
        keep_alive = version == b"HTTP/1.1"
        verbatim = keep_alive and len(parts) == 3  # raw_head's status line
        chunked = False
        length = -1
        headers = self.headers
        for i in range(1, len(lines)):
            line = lines[i]
            colon = line.find(b":")
            if colon <= 0:
                return "invalid header line from upstream"
            name = line[:colon]
            if name.translate(None, _TCHARS):  # a byte left that is not a tchar
                return "invalid header name from upstream"
            value = line[colon + 1 :].strip(b" \t")
            headers.append((name, value))
            # One byte stripped, the SP before the value: "name: value" exactly.
            verbatim = verbatim and len(line) == colon + 2 + len(value) and line[colon + 1] == 32
            # Only four names matter here: lower-case just the ones of their lengths.
            if colon != 14 and colon != 12 and colon != 17 and colon != 10:
                continue
            lname = name.lower()
            if lname == b"content-length":
                digits = value.lstrip(b"0")
                if not value.isdigit() or len(digits) > MAX_LENGTH_DIGITS:
                    return "invalid Content-Length from upstream"
                size = int(digits) if digits else 0
                if length != -1 and size != length:
                    return "conflicting Content-Length from upstream"
                length = size
            elif lname == b"transfer-encoding":
                if chunked or not _one_final_chunked(value):
                    return _UNSUPPORTED_TE
                chunked = True
            elif lname == b"connection":
                keep_alive = _keep_alive_after(value, keep_alive, version == b"HTTP/1.0")
            elif lname == b"content-type":
                self.event_stream = value[:17].lower() == b"text/event-stream"
        self.raw_head = data[start : end + 2] if verbatim else None
        return self._framing(keep_alive, chunked, length)

    def _scan_head(self, data, start, end):
        """``_parse_head`` for the compiled build: the same rules, results and errors, from one
        walk over the head through a pointer (``_walk_head``). Interpreted, that walk would
        cost several times _parse_head: the module runs it only where it is compiled
        (``_COMPILED``), and the tests run both and compare."""
        version = self.version
        reason = self.reason
        stream = self.event_stream
        err = self._walk_head(data, start, end)
        if err is not None and err is not _BARE and self.status >= 200 and not self._lazy and not self._headers:
            # A head refused after its status line: its fields up to the fault, as _parse_head
            # leaves them (the walk makes no object per field).
            _fields(data, self._walk_from, self._walked, self._field_list())
        # The walk meets a bare CR, a bare LF or a NUL (RFC 9112 2.2) only where it reads. That
        # is every byte of a head it accepts; else the rule is checked over the whole head here,
        # as it comes first in _parse_head, and what the walk set before it stopped is undone
        # (status and headers: as _head leaves them before a head).
        if err is _BARE or ((err is not None or self.status < 200) and _bare_byte(data, start, end)):
            self.version = version
            self.reason = reason
            self.event_stream = stream
            self.status = 0
            del self.headers[:]
            return _BARE
        return err

    def _walk_head(self, data, start, end):
        """The walk of ``_scan_head``, through ``buf``. Only the values kept become objects (the
        reason, each field's name and value, and its tuple); the four names that matter are
        recognized by their length, then compared ignoring case, in place. A bare CR or LF or a
        NUL in the bytes it reads returns _BARE; it returns early, without reading the rest, on
        any other fault and on a 1xx status."""
        buf = data
        # Status line: HTTP-version SP 3DIGIT [SP reason-phrase].
        eol = _line_end(buf, start, end)
        if eol < 0:
            return _BARE
        n = eol - start
        if n < 9 or buf[start + 8] != 32 or not _matches(buf, start, b"HTTP/1.", 7, False):
            return "invalid status line from upstream"
        c = buf[start + 7]
        if c != 49 and c != 48:
            return "invalid status line from upstream"
        http10 = c == 48
        i = start + 9  # three digits, the first not 0, then SP or the line's end
        if n < 12 or (n > 12 and buf[start + 12] != 32):
            return "invalid status code from upstream"
        if not (49 <= buf[i] <= 57 and 48 <= buf[i + 1] <= 57 and 48 <= buf[i + 2] <= 57):
            return "invalid status code from upstream"
        self.version = b"HTTP/1.0" if http10 else b"HTTP/1.1"
        self.status = (buf[i] - 48) * 100 + (buf[i + 1] - 48) * 10 + (buf[i + 2] - 48)
        if n == 15 and buf[start + 13] == 79 and buf[start + 14] == 75:
            self.reason = _OK  # the usual reason: one object, not one per response
        else:
            self.reason = buf[start + 13 : eol] if n > 12 else b""
        if self.status < 200:
            return _SWITCH if self.status == 101 else None
        keep_alive = not http10
        verbatim = keep_alive and n > 12  # raw_head's status line
        chunked = False
        length = -1
        tchar = _TCHAR
        pos = first = self._walk_from = self._walked = eol + 2
        while pos < end:
            # field-name = token, then ":" right after it (RFC 9112 5.1: no space before it).
            # buf[end] is the blank line's CR, not a tchar: the name's walk stops by then.
            colon = pos
            while tchar[buf[colon]]:
                colon += 1
            if colon == end or buf[colon] != 58:
                # A byte that is not a tchar: a bad name if a colon follows on this line.
                while colon < end and buf[colon] != 13 and buf[colon] != 58:
                    colon += 1
                if colon < end and buf[colon] == 58:
                    return "invalid header name from upstream"
                return "invalid header line from upstream"
            if colon == pos:
                return "invalid header line from upstream"
            eol = _line_end(buf, colon + 1, end)
            if eol < 0:
                return _BARE
            # The value without its leading and trailing OWS (SP, HTAB).
            i = _ows_after(buf, colon + 1, eol)
            j = _ows_before(buf, i, eol)
            self._walked = eol + 2  # this field is one of ``headers`` even if its value is refused
            verbatim = verbatim and i == colon + 2 and j == eol and buf[colon + 1] == 32  # "name: value"
            n = colon - pos
            if n == 14 and _name_is(buf, pos, b"content-length", 14):
                if i == j:
                    return "invalid Content-Length from upstream"
                while i < j and buf[i] == 48:
                    i += 1
                if j - i > MAX_LENGTH_DIGITS:
                    return "invalid Content-Length from upstream"
                size = 0
                while i < j:
                    c = buf[i]
                    if c < 48 or c > 57:
                        return "invalid Content-Length from upstream"
                    size = size * 10 + (c - 48)
                    i += 1
                if length != -1 and size != length:
                    return "conflicting Content-Length from upstream"
                length = size
            elif n == 17 and _name_is(buf, pos, b"transfer-encoding", 17):
                # "chunked" alone, the usual value, needs no list of codings.
                plain = j - i == 7 and _matches(buf, i, b"chunked", 7, True)
                if chunked or not (plain or _one_final_chunked(data[i:j])):
                    return _UNSUPPORTED_TE
                chunked = True
            elif n == 10 and _name_is(buf, pos, b"connection", 10):
                keep_alive = _keep_alive_after(data[i:j], keep_alive, http10)
            elif n == 12 and _name_is(buf, pos, b"content-type", 12):
                self.event_stream = j - i >= 17 and _matches(buf, i, b"text/event-stream", 17, True)
            pos = eol + 2
        if verbatim:  # the fields are cut from it when asked for (``headers``)
            self.raw_head = buf[start : end + 2]
            self._lazy = True
        else:
            self.raw_head = None
            _fields(data, first, end + 2, self._field_list())
        return self._framing(keep_alive, chunked, length)

    def _framing(self, keep_alive, chunked, length):
        """The body's framing (RFC 9112 6.3), from the fields read. Return None, or what is wrong."""
        if chunked and length != -1:
            return "upstream sent both Content-Length and Transfer-Encoding"
        self.content_length = length
        status = self.status
        if self.head_request or status == 204 or status == 304:
            self.kind = NONE
        elif chunked:
            self.kind = CHUNKED
        elif length >= 0:
            self.kind = LENGTH
        else:
            self.kind = UNTIL_CLOSE
            keep_alive = False
        self.keep_alive = keep_alive
        return None

    # -- helpers --------------------------------------------------------------------------

    def _fail(self, message):
        self.state = S_ERROR
        self.error = message
        return _ERROR

    def _sse_plain(self, data, start, end):
        """Not chunked: safe_end := the last event boundary in data[start:end], if any.
        Return 1 when there was one, else 0."""
        buf = data
        tail = self._tail
        best = 0
        # A blank line that ends in the first three bytes may have begun in an earlier read:
        # walk those with the tail. Any later one lies wholly in data: let find() see it.
        i = start
        stop = start + 3 if end - start > 3 else end
        while i < stop:
            tail = ((tail << 8) | buf[i]) & 0xFFFFFFFF
            i += 1
            if _sse_tail_is_boundary(tail):
                best = i
        if end - start > 3:
            cut = data.rfind(b"\n\n", start, end)
            if cut >= 0 and cut + 2 > best:
                best = cut + 2
            cut = data.rfind(b"\r\r", start, end)
            if cut >= 0 and cut + 2 > best:
                best = cut + 2
            cut = data.rfind(b"\r\n\r\n", start, end)
            if cut >= 0 and cut + 4 > best:
                best = cut + 4
            tail = _tail_after(tail, buf, end, 4)
        self._tail = tail
        if best:
            self.safe_end = best
            return 1
        return 0


def new_framer(head_request):
    """``ResponseFramer(head_request)``; compiled, allocated and set up in C, with no call
    through ``__init__`` (one per upstream response)."""
    if not _NATIVE:
        return ResponseFramer(head_request)
    framer = ResponseFramer.__new__(ResponseFramer)
    framer._setup(head_request)
    return framer

