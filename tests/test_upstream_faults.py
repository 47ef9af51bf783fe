"""What a backend does wrong or oddly, and what the client sees: raw-socket backends scripted
byte for byte (``ScriptedBackend``) behind a real proxy, raw-socket clients.

Covered here: interim (1xx) responses, close-delimited bodies (a clean close ends them, a reset
breaks them), big chunks to HTTP/1.0 clients, and which failed requests may be sent again.
"""

import socket
import struct
import threading

import pytest

from conftest import ScriptedBackend, raw_exchange, start_proxy
from proxy.http.chunked import Dechunker

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
GET = b"GET /v1/models HTTP/1.1\r\nHost: p\r\n\r\n"
POST = b'POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n{}'
# A POST with an effect of its own: a second copy would store a second response.
STATEFUL = POST.replace(b"/v1/chat/completions", b"/v1/responses")


def reset(sock):
    """Close with RST, not FIN: what a crashed or killed backend looks like on the wire."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_response(sock):
    """One response from a keep-alive connection: (head, body), the body by its framing."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"closed before a head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while not rest.endswith(b"0\r\n\r\n"):
            data = sock.recv(65536)
            if not data:
                raise AssertionError(f"closed mid-body: {rest[-100:]!r}")
            rest += data
        return head, Dechunker().feed(rest)
    length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(rest) < length:
        rest += sock.recv(65536)
    return head, rest


@pytest.fixture
def scripted():
    made = []

    def make(script):
        b = ScriptedBackend(script)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def proxy_of():
    made = []

    def make(*backends, extra=()):
        p = start_proxy(list(backends), *extra)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


# -- the sans-IO de-chunker --------------------------------------------------------------------


def test_dechunker_follows_chunks_across_any_split():
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in (b"a" * 5000, b"b", b"c" * 70000))
    body += b"0\r\nx-trailer: t\r\n\r\n"
    want = b"a" * 5000 + b"b" + b"c" * 70000
    for step in (1, 2, 3, 7, 4096, len(body)):
        d = Dechunker()
        got = b"".join(d.feed(body[i : i + step]) for i in range(0, len(body), step))
        assert got == want, step
        assert d.done


# -- interim responses -------------------------------------------------------------------------


def test_early_hints_and_processing_are_dropped_and_the_final_response_relayed(scripted, proxy_of):
    backend = scripted(lambda req, sock: sock.sendall(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n" + OK
    ))
    proxy = proxy_of(backend)
    raw = raw_exchange(proxy.port, GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw[:200]
    assert b"103" not in raw and b"Link:" not in raw and raw.endswith(b"{}")


def test_101_from_a_backend_is_a_502(scripted, proxy_of):
    backend = scripted(lambda req, sock: sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"))
    proxy = proxy_of(backend)
    raw = raw_exchange(proxy.port, GET)
    assert raw.startswith(b"HTTP/1.1 502 "), raw[:200]
    body = raw.partition(b"\r\n\r\n")[2]
    # What went wrong, and where, is logged; the client reads a fixed sentence.
    assert b"backend failed" in body and b"Switching" not in body and str(backend.port).encode() not in body


# -- close-delimited bodies --------------------------------------------------------------------


def _close_delimited(body, end):
    def script(req, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n" + body)
        end(sock)
    return script


def test_a_close_delimited_body_goes_chunked_to_a_11_client_and_keeps_its_connection(scripted, proxy_of):
    body = b"x" * 300_000
    backend = scripted(_close_delimited(body, lambda s: (s.shutdown(socket.SHUT_WR), s.close())))
    proxy = proxy_of(backend)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        for _ in range(2):  # the client connection outlives the upstream one
            s.sendall(GET)
            head, got = read_response(s)
            assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
            assert b"connection: close" not in head.lower()
            assert got == body


def test_a_reset_on_a_close_delimited_body_looks_broken(scripted, proxy_of):
    backend = scripted(_close_delimited(b"partial answer", reset))
    proxy = proxy_of(backend)
    raw = raw_exchange(proxy.port, GET)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
    assert b"partial answer" in rest
    assert not rest.endswith(b"0\r\n\r\n"), "a reset must not end the body cleanly"


def test_an_http10_client_gets_a_big_chunk_whole(scripted, proxy_of):
    # 2 MiB in one chunk, larger than any hold buffer, written in pieces.
    payload = bytes(range(256)) * 8192

    def script(req, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
        for i in range(0, len(data), 100_000):
            sock.sendall(data[i : i + 100_000])

    backend = scripted(script)
    proxy = proxy_of(backend)
    raw = raw_exchange(proxy.port, b"GET /blob HTTP/1.0\r\n\r\n", timeout=10)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" not in head.lower()
    assert len(body) == len(payload) and body == payload


# -- what may be sent again ----------------------------------------------------------------------


def _closing_second_request():
    """A backend that answers the first request of each connection and resets the connection on
    the second, as a backend closing an idle keep-alive connection just as it is reused does."""
    seen = {}
    lock = threading.Lock()

    def script(req, sock):
        with lock:
            n = seen[id(sock)] = seen.get(id(sock), 0) + 1
        if n == 1:
            sock.sendall(OK)
        else:
            reset(sock)

    return script


@pytest.mark.parametrize("request_bytes, resent", [(GET, True), (POST, True), (STATEFUL, False)])
def test_a_reused_connection_that_fails_resends_only_what_a_second_copy_cannot_harm(scripted, proxy_of, request_bytes, resent):
    backend = scripted(_closing_second_request())
    proxy = proxy_of(backend, extra=("--pool-spare", "0"))  # the second request reuses the first's connection
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(request_bytes)
        head, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 200 ")
        s.sendall(request_bytes)  # goes out on the pooled connection, which the backend resets
        head, body = read_response(s)
    if resent:
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert len(backend.requests) == 3 and backend.connections == 2
    else:
        assert head.startswith(b"HTTP/1.1 502 "), head
        assert len(backend.requests) == 2, "a stateful POST that reached a backend must not be sent again"


@pytest.mark.parametrize("request_bytes, resent", [(GET, True), (POST, True), (STATEFUL, False)])
def test_a_reset_after_the_request_was_written_moves_only_what_a_second_copy_cannot_harm(scripted, proxy_of, request_bytes, resent):
    broken = scripted(lambda req, sock: reset(sock))
    good = scripted(lambda req, sock: sock.sendall(OK))
    proxy = proxy_of(broken, good, extra=("--policy", "round_robin"))
    statuses = []
    for _ in range(4):
        raw = raw_exchange(proxy.port, request_bytes.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        statuses.append(int(raw.split(b" ", 2)[1]))
    if resent:
        assert statuses == [200] * 4
    else:
        assert 502 in statuses and len(broken.requests) == statuses.count(502)
        assert len(good.requests) == statuses.count(200)
