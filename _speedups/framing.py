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

``feed(data)`` returns flags (HEAD, DONE, ERROR) and leaves offsets into *this* ``data`` in
``head_end``, ``safe_end`` and ``msg_end``. The state carries over between calls, so ``data``
may be split at any byte.

This module is the specification: ``_speedups/setup`` compiles it with Cython (the ``.pxd``
beside it types the state); the pure-Python import runs it as is. Both must behave identically.
"""

HEAD = 1
DONE = 2
ERROR = 4

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

MAX_HEAD = 64 * 1024  # bytes: a response head larger than this is an upstream fault
MAX_SIZE_LINE = 4096  # bytes: chunk-size line incl. extensions
MAX_TRAILER = 64 * 1024  # bytes

_HEX = {c: i for i, c in enumerate(b"0123456789abcdef")}
_HEX.update({c: i for i, c in enumerate(b"ABCDEF", 10)})
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class FramingError(Exception):
    """The upstream broke HTTP/1.1 framing; the connection must be discarded."""


def _sse_tail_is_boundary(tail):
    # tail holds the last four body bytes, most recent lowest. An SSE event ends with a blank
    # line, and the spec accepts LF, CR or CRLF as line ends.
    return (tail & 0xFFFF) == 0x0A0A or (tail & 0xFFFF) == 0x0D0D or tail == 0x0D0A0D0A


class ResponseFramer:
    """Incremental HTTP/1.1 response framing over raw bytes. One per upstream response."""

    def __init__(self, head_request=False, whole_chunks=False):
        self.head_request = head_request
        # whole_chunks: make every chunk end a boundary and hold partial chunks, so that what
        # passes can be de-chunked on its own (HTTP/1.0 clients).
        self.whole_chunks = whole_chunks
        self.state = S_HEAD
        self._head_buf = b""
        self.status = 0
        self.version = b""
        self.reason = b""
        self.headers = []  # [(name, value)] as received, names not lower-cased
        self.kind = NONE
        self.keep_alive = True
        self.event_stream = False
        self.content_length = -1
        self.error = ""
        self.head_end = 0
        self.safe_end = 0
        self.msg_end = 0
        self.body_bytes = 0
        self._remaining = 0
        self._line = b""
        self._tail = 0  # last four body bytes (SSE boundary detection)

    # -- head -----------------------------------------------------------------------------

    def _parse_head(self, head):
        lines = head.split(b"\r\n")
        status_line = lines[0]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise FramingError("invalid status line from upstream")
        code = parts[1]
        if len(code) != 3 or not code.isdigit():
            raise FramingError("invalid status code from upstream")
        self.version = parts[0]
        self.status = int(code)
        self.reason = parts[2] if len(parts) == 3 else b""
        keep_alive = parts[0] == b"HTTP/1.1"
        chunked = False
        length = -1
        headers = self.headers
        for i in range(1, len(lines)):
            line = lines[i]
            colon = line.find(b":")
            if colon <= 0:
                raise FramingError("invalid header line from upstream")
            name = line[:colon]
            for c in name:
                if c not in _TOKEN:
                    raise FramingError("invalid header name from upstream")
            value = line[colon + 1 :].strip(b" \t")
            if b"\r" in value or b"\n" in value or b"\x00" in value:
                raise FramingError("invalid header value from upstream")
            headers.append((name, value))
            lname = name.lower()
            if lname == b"content-length":
                if not value.isdigit():
                    raise FramingError("invalid Content-Length from upstream")
                n = int(value)
                if length != -1 and n != length:
                    raise FramingError("conflicting Content-Length from upstream")
                length = n
            elif lname == b"transfer-encoding":
                codings = [c.strip().lower() for c in value.split(b",")]
                if chunked or codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
                    # Anything but one final "chunked" leaves the length unknowable.
                    raise FramingError("unsupported Transfer-Encoding from upstream")
                chunked = True
            elif lname == b"connection":
                tokens = [t.strip().lower() for t in value.split(b",")]
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens and parts[0] == b"HTTP/1.0":
                    keep_alive = True
            elif lname == b"content-type":
                self.event_stream = value[:17].lower() == b"text/event-stream"
        if chunked and length != -1:
            raise FramingError("upstream sent both Content-Length and Transfer-Encoding")
        self.content_length = length
        status = self.status
        if self.head_request or status < 200 or status == 204 or status == 304:
            if 100 <= status < 200:
                # Interim responses (100 Continue) are not forwarded by this proxy; the
                # upstream has no business sending them for requests we sent whole.
                raise FramingError("unexpected interim response from upstream")
            self.kind = NONE
        elif chunked:
            self.kind = CHUNKED
        elif length >= 0:
            self.kind = LENGTH
        else:
            self.kind = UNTIL_CLOSE
            keep_alive = False
        self.keep_alive = keep_alive

    # -- body -----------------------------------------------------------------------------

    def feed(self, data):
        """Advance over ``data``; return HEAD|DONE|ERROR flags. See the module docstring."""
        flags = 0
        pos = 0
        n = len(data)
        self.head_end = 0
        self.safe_end = 0
        self.msg_end = 0
        state = self.state
        if state == S_HEAD:
            buf = self._head_buf + data if self._head_buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    return self._fail("upstream response head too large")
                self._head_buf = bytes(buf)
                return 0
            prior = len(buf) - n
            try:
                self._parse_head(bytes(buf[:end]))
            except FramingError as exc:
                return self._fail(str(exc))
            self._head_buf = b""
            pos = end + 4 - prior
            self.head_end = pos
            self.safe_end = pos
            flags = HEAD
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
            if state == S_DONE:
                self.state = S_DONE
                self.msg_end = pos
                return flags | DONE

        sse = self.event_stream
        while pos < n:
            if state == S_DATA:
                take = n - pos
                if take > self._remaining:
                    take = self._remaining
                pos += take
                self._remaining -= take
                self.body_bytes += take
                if sse:
                    self._tail = self._tail_after(data, pos, take)
                if self._remaining == 0:
                    state = S_DATA_CRLF
                    self._line = b""
            elif state == S_SIZE or state == S_DATA_CRLF or state == S_TRAILER:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    self._line += data[pos:]
                    if len(self._line) > MAX_SIZE_LINE and state != S_TRAILER:
                        return flags | self._fail("chunk-size line too long from upstream")
                    if len(self._line) > MAX_TRAILER:
                        return flags | self._fail("trailer section too large from upstream")
                    pos = n
                    break
                line = self._line + data[pos:nl] if self._line else data[pos:nl]
                self._line = b""
                pos = nl + 1
                if not line.endswith(b"\r"):
                    return flags | self._fail("bare LF in chunked framing from upstream")
                line = line[:-1]
                if state == S_DATA_CRLF:
                    if line:
                        return flags | self._fail("missing CRLF after chunk data from upstream")
                    state = S_SIZE
                    if (self.whole_chunks and not sse) or _sse_tail_is_boundary(self._tail):
                        self.safe_end = pos
                elif state == S_SIZE:
                    size = self._chunk_size(line)
                    if size < 0:
                        return flags | self._fail("invalid chunk size from upstream")
                    if size == 0:
                        state = S_TRAILER
                    else:
                        self._remaining = size
                        state = S_DATA
                else:  # trailer section: ends at an empty line
                    if not line:
                        state = S_DONE
                        self.safe_end = pos
                        self.msg_end = pos
                        flags |= DONE
                        break
            elif state == S_LENGTH:
                take = n - pos
                if take > self._remaining:
                    take = self._remaining
                pos += take
                self._remaining -= take
                self.body_bytes += take
                if sse:
                    self._advance_sse_plain(data, pos, take)
                if self._remaining == 0:
                    state = S_DONE
                    self.safe_end = pos
                    self.msg_end = pos
                    flags |= DONE
                    break
            elif state == S_CLOSE:
                self.body_bytes += n - pos
                if sse:
                    self._advance_sse_plain(data, n, n - pos)
                pos = n
            else:  # S_DONE: bytes after the end of the message we asked for
                self.state = S_ERROR
                self.error = "upstream sent bytes after the end of the response"
                return flags | ERROR
        self.state = state
        if not sse and not (self.whole_chunks and self.kind == CHUNKED):
            # Only event streams (and de-chunking) need holding back; the rest goes as it came.
            self.safe_end = pos
        if state == S_DONE and pos < n:
            self.state = S_ERROR
            self.error = "upstream sent bytes after the end of the response"
            return flags | ERROR
        return flags

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

    # -- helpers --------------------------------------------------------------------------

    def _fail(self, message):
        self.state = S_ERROR
        self.error = message
        return ERROR

    def _tail_after(self, data, end, take):
        tail = self._tail
        start = end - take if take < 4 else end - 4
        for i in range(start, end):
            tail = ((tail << 8) | data[i]) & 0xFFFFFFFF
        return tail

    def _advance_sse_plain(self, data, end, take):
        # Not chunked: an event boundary is the last blank line in what arrived.
        start = end - take
        self._tail = self._tail_after(data, end, take)
        cut = data.rfind(b"\n\n", start, end)
        if cut >= 0:
            self.safe_end = cut + 2
        if _sse_tail_is_boundary(self._tail):
            self.safe_end = end

    @staticmethod
    def _chunk_size(line):
        # RFC 9112 7.1: chunk-size = 1*HEXDIG, optional ";ext" after optional whitespace.
        semi = line.find(b";")
        if semi >= 0:
            line = line[:semi]
        line = line.rstrip(b" \t")
        if not line or len(line) > 15:
            return -1
        size = 0
        for c in line:
            d = _HEX.get(c, -1)
            if d < 0:
                return -1
            size = size * 16 + d
        return size


def dechunk(data):
    """Payload of a run of *whole* chunks (what the framer let through), for HTTP/1.0 clients
    that cannot read chunked coding. The terminating chunk and trailers yield nothing."""
    out = []
    pos = 0
    n = len(data)
    while pos < n:
        nl = data.find(b"\r\n", pos)
        if nl < 0:
            break
        size = ResponseFramer._chunk_size(bytes(data[pos:nl]))
        if size <= 0:
            break
        start = nl + 2
        out.append(data[start : start + size])
        pos = start + size + 2
    return b"".join(out)
