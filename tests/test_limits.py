"""Memory and time bounds of the data path, on real loopback sockets: pipelining parsed no
further than the queue has room for and answered without recursion, queued request bytes per
connection and per worker, the write stall, pool waiters, the connection cap, a silent new
connection, the default body limit, and aborts on close.

Some run the worker's serving code in this process (``serving``: the real ``Downstream``,
``Context`` and ``Router`` on uvloop) so a test can look at a connection's queue while it is
full; the others start the proxy as a process, as a user would."""

import asyncio
import http.client
import json
import socket
import threading
import time

import uvloop

from conftest import ScriptedBackend, start_proxy, wait_for
from proxy.config import build
from proxy.http.downstream import Downstream
from proxy.http.pipeline import _BLANK_LINE, PAUSE_PIPELINE, few_blank_lines
from proxy.process.worker import Context
from proxy.routing.router import Router

HEALTH = b"GET /health HTTP/1.1\r\nHost: p\r\n\r\n"
TCP_CLOSE = 7  # Linux tcp_info.tcpi_state after a reset


def post(body=b'{"model": "m", "prompt": "hi"}'):
    return b"POST /v1/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body,
    )


def prompt_of(size):
    return json.dumps({"model": "m", "prompt": "x" * size}).encode()


def held_first(release):
    """A backend script: a small JSON 200 for every request, the first one held until
    ``release`` is set (so the rest of a pipeline queues behind it)."""
    seen = []
    lock = threading.Lock()

    def script(request, sock):
        with lock:
            seen.append(request)
            first = len(seen) == 1
        if first:
            release.wait(15)
        body = b'{"ok": true}'
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    return script


class Streamer:
    """A backend script that streams SSE events for ever and notes when, and how, the proxy
    made its sending fail (a reset means the proxy aborted the upstream request)."""

    def __init__(self):
        self.failed = threading.Event()
        self.error = None
        self.at = None
        self.sent = 0

    def __call__(self, request, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        event = b"data: " + b"x" * 65000 + b"\n\n"
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        try:
            while True:
                sock.sendall(chunk)
                self.sent += len(chunk)
        except OSError as exc:
            self.error, self.at = exc, time.monotonic()
            self.failed.set()
            raise


def tcp_state(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def config_file(tmp_path, text):
    path = tmp_path / "limits.yaml"
    path.write_text(text)
    return str(path)


def slow_reader_socket(port):
    """A client socket with a tiny receive buffer, so our writes back up quickly."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


STREAM = post(json.dumps({"model": "m", "prompt": "hi", "stream": True}).encode())


# -- in-process serving -----------------------------------------------------------------------


async def serving(raw):
    loop = asyncio.get_running_loop()
    cfg = build(raw)
    ctx = Context(cfg, loop, Router(cfg, loop))
    server = await loop.create_server(lambda: Downstream(ctx), "127.0.0.1", 0)
    return ctx, server, server.sockets[0].getsockname()[1]


async def stop(ctx, server):
    server.close()
    for endpoint in ctx.router.endpoints:
        endpoint.pool.abort()
    await asyncio.sleep(0.05)


async def read_responses(reader, count, timeout=15.0):
    """Bytes from ``reader`` until ``count`` response heads arrived (or EOF / time-out)."""
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"HTTP/1.1 ") < count and time.monotonic() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(1 << 20), deadline - time.monotonic())
        except (asyncio.TimeoutError, ConnectionError):
            break
        if not chunk:
            break
        data += chunk
    return data


async def until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


# -- 1. pipelining: parsed no further than the queue's room, answered iteratively -----------



def run_then_release(main, release, backend):
    """Run ``main`` on uvloop; whatever happens, let the held backend go and close it."""
    try:
        uvloop.run(main())
    finally:
        release.set()
        backend.close()

def test_pipelined_burst_is_parsed_only_as_far_as_the_queue_has_room():
    """A read of 5,000 tiny pipelined requests behind a slow one: at most max_pipelined are
    parsed and queued, the rest of the read waits unparsed with reading paused, and once the
    slow one ends all 5,001 are answered, in order (no recursion, no RecursionError)."""
    release = threading.Event()
    backend = ScriptedBackend(held_first(release))
    n = 5000

    async def main():
        ctx, server, port = await serving({"backends": [backend.url]})
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post() + HEALTH * n)
            assert await until(lambda: ctx.connections and next(iter(ctx.connections)).unparsed is not None)
            await asyncio.sleep(0.2)  # nothing more is parsed while it waits
            down = next(iter(ctx.connections))
            assert len(down.queue) <= ctx.cfg.limits.max_pipelined
            assert down.paused & PAUSE_PIPELINE
            assert 0 < ctx.queued_bytes <= 256 * 1024 + 64 * 1024
            release.set()
            data = await read_responses(reader, n + 1)
            heads = data.count(b"HTTP/1.1 ")
            assert heads == n + 1, heads
            first, _, rest = data.partition(b'{"ok": true}')
            assert first.startswith(b"HTTP/1.1 200 OK") and first.count(b"HTTP/1.1 ") == 1
            assert rest.count(b'"status":"ok"') == n  # the proxy's own /health answers, after it
            assert down.queued_bytes == 0 and not down.queue and down.unparsed is None
            writer.close()
            assert await until(lambda: ctx.queued_bytes == 0 and not ctx.connections)
        finally:
            await stop(ctx, server)

    run_then_release(main, release, backend)


def test_pipelined_burst_through_the_proxy_process_is_answered_in_full():
    """The same burst end to end: before answering became a loop, the slow request's end
    answered the queue recursively and the connection hung about 300 deep."""
    release = threading.Event()
    backend = ScriptedBackend(held_first(release))
    proxy = start_proxy([backend])
    n = 6000
    try:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        sender = threading.Thread(target=s.sendall, args=(post() + HEALTH * n,), daemon=True)
        sender.start()
        time.sleep(0.3)
        release.set()
        data = b""
        deadline = time.monotonic() + 20
        while data.count(b"HTTP/1.1 ") < n + 1 and time.monotonic() < deadline:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        assert data.count(b"HTTP/1.1 ") == n + 1
        assert data.startswith(b"HTTP/1.1 200 OK") and data.count(b"HTTP/1.1 200 OK") == n + 1
        s.close()
    finally:
        release.set()
        proxy.stop()
        backend.close()


def test_queued_bytes_per_connection_pause_reading_and_nothing_is_lost():
    """A connection's waiting request bytes stay near limits.max_queued_bytes (one read more
    at most) however many requests it pipelines: reading pauses (backpressure, no refusal),
    and every request is answered once the queue drains."""
    release = threading.Event()
    backend = ScriptedBackend(held_first(release))
    count, size = 60, 16 * 1024
    cap = 64 * 1024

    async def main():
        ctx, server, port = await serving(
            {"backends": [backend.url], "limits": {"max_queued_bytes": cap, "max_pipelined": 1000}}
        )
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post() + post(prompt_of(size)) * count)
            assert await until(lambda: ctx.connections and next(iter(ctx.connections)).paused & PAUSE_PIPELINE)
            await asyncio.sleep(0.3)
            down = next(iter(ctx.connections))
            assert len(down.queue) < count
            assert ctx.queued_bytes == down.queued_bytes <= cap + 256 * 1024
            assert down.queued_size <= cap + 256 * 1024
            release.set()
            data = await read_responses(reader, count + 1)
            assert data.count(b"HTTP/1.1 200 OK") == count + 1
            assert len(backend.requests) == count + 1
            writer.close()
            assert await until(lambda: ctx.queued_bytes == 0)
        finally:
            await stop(ctx, server)

    run_then_release(main, release, backend)


def test_worker_queued_bytes_budget_refuses_the_connection_that_exceeds_it():
    """limits.max_worker_queued_bytes is shared: the connection whose pipeline takes the
    worker over it gets its active response, then a 503 with Retry-After in place of its
    waiting requests (never processed), then a close; the other connection is served in full."""
    release = threading.Event()
    backend = ScriptedBackend(held_first(release))
    size = 16 * 1024

    async def main():
        ctx, server, port = await serving(
            {"backends": [backend.url], "limits": {"max_worker_queued_bytes": 100 * 1024, "max_pipelined": 100}}
        )
        try:
            reader_a, writer_a = await asyncio.open_connection("127.0.0.1", port)
            writer_a.write(post() + post(prompt_of(size)) * 4)  # about 66 KB waiting
            assert await until(lambda: ctx.queued_bytes > 4 * size)
            reader_b, writer_b = await asyncio.open_connection("127.0.0.1", port)
            writer_b.write(post() + post(prompt_of(size)) * 4)  # the same again: over 100 KiB
            assert await until(lambda: len(backend.requests) == 2)  # B's first went upstream
            assert await until(lambda: ctx.queued_bytes <= 100 * 1024)
            release.set()
            data_a = await read_responses(reader_a, 5)
            data_b = await read_responses(reader_b, 5, timeout=5)
            assert data_a.count(b"HTTP/1.1 200 OK") == 5
            assert data_b.startswith(b"HTTP/1.1 200 OK") and data_b.count(b"HTTP/1.1 ") == 2
            refusal = data_b[data_b.index(b"HTTP/1.1 ", 1):]
            head, _, body = refusal.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1\r\n" in head
            assert b"connection: close" in head
            assert json.loads(body)["error"]["type"] == "service_unavailable"
            assert await reader_b.read() == b""  # closed
            assert len(backend.requests) == 1 + 4 + 1  # B's waiting requests never went upstream
            writer_a.close()
            assert await until(lambda: ctx.queued_bytes == 0)
        finally:
            await stop(ctx, server)

    run_then_release(main, release, backend)


# -- 2. the write stall ---------------------------------------------------------------------


def test_a_client_that_stops_reading_is_cut_off_and_its_upstream_aborted(tmp_path):
    """timeouts.write_stall: a client that drains nothing of a stream for that long is
    aborted, and so is the upstream request (the backend sees a reset, not a 10 s wait)."""
    streamer = Streamer()
    backend = ScriptedBackend(streamer)
    proxy = start_proxy([backend], "--config", config_file(tmp_path, "timeouts:\n  write_stall: 1.0\n"))
    try:
        s = slow_reader_socket(proxy.port)
        t0 = time.monotonic()
        s.sendall(STREAM)
        assert streamer.failed.wait(8), "the upstream request was never aborted"
        assert isinstance(streamer.error, (ConnectionResetError, BrokenPipeError)), streamer.error
        assert 0.9 < streamer.at - t0 < 4.0
        assert wait_for(lambda: tcp_state(s) == TCP_CLOSE, timeout=2)  # reset, not left open
        s.close()
    finally:
        proxy.stop()
        backend.close()


def test_a_slow_but_steady_reader_is_not_cut_off(tmp_path):
    """The write stall counts time without progress, not the length of a slow transfer: a
    client that keeps reading, slower than the proxy writes, gets every byte."""
    total = 16 * 1024 * 1024

    def script(request, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n" % total)
        piece = b"y" * 65536
        for _ in range(total // len(piece)):
            sock.sendall(piece)

    backend = ScriptedBackend(script)
    proxy = start_proxy([backend], "--config", config_file(tmp_path, "timeouts:\n  write_stall: 0.5\n"))
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.settimeout(10)
        s.connect(("127.0.0.1", proxy.port))
        s.sendall(post())
        got = 0
        head = b""
        t0 = time.monotonic()
        while got < total:
            chunk = s.recv(65536)
            if not chunk:
                break
            if not head:
                head, _, chunk = chunk.partition(b"\r\n\r\n")
            got += len(chunk)
            time.sleep(0.01)  # at most 6.4 MB/s: the proxy's buffers fill and writing pauses
        assert head.startswith(b"HTTP/1.1 200 OK") and got == total
        assert time.monotonic() - t0 > 1.0  # it took longer than write_stall
        s.close()
    finally:
        proxy.stop()
        backend.close()


# -- 3. pool waiters: bounded in number and time, visible ---------------------------------------


def test_pool_waiters_are_bounded_in_number_and_time_and_visible(tmp_path):
    def script(request, sock):
        time.sleep(2.0)
        body = b'{"ok": true}'
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    backend = ScriptedBackend(script)
    cfg = config_file(
        tmp_path, "connection_pool:\n  max_connections: 1\n  max_waiters: 1\ntimeouts:\n  pool_wait: 0.5\n"
    )
    proxy = start_proxy([backend], "--config", cfg)
    results = {}

    def request(name):
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        t0 = time.monotonic()
        conn.request("POST", "/v1/completions", b'{"model": "m", "prompt": "hi"}', {"content-type": "application/json"})
        resp = conn.getresponse()
        results[name] = (resp.status, resp.getheader("retry-after"), resp.read(), time.monotonic() - t0)
        conn.close()

    try:
        threads = []
        for name, delay in (("holder", 0), ("waiter", 0.3), ("refused", 0.3)):
            time.sleep(delay)
            t = threading.Thread(target=request, args=(name,))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(10)
        status, retry_after, body, took = results["refused"]
        assert status == 503 and retry_after == "1" and took < 0.4, results["refused"]
        assert json.loads(body)["error"]["type"] == "service_unavailable"
        status, retry_after, body, took = results["waiter"]
        assert status == 503 and retry_after == "1" and 0.45 < took < 1.5, results["waiter"]
        assert results["holder"][0] == 200
        request("again")  # a pool that queued once says so once: one more wait, no new line
        _, state = proxy.admin("/admin/backends")
        pool = state["backends"][0]["workers"][0]["connection_pool"]
        assert pool["refused"] == 1 and pool["wait_timeouts"] == 1 and pool["queued"] == 1, pool
        assert pool["max_waiters"] == 1 and pool["waiting"] == 0
        assert results["again"][0] == 200 and len(backend.requests) == 2
    finally:
        proxy.stop()
        backend.close()
    log = proxy.proc.stderr.read().decode()
    assert log.count("requests now wait for a connection") == 1, log


# -- 4. the connection cap ----------------------------------------------------------------------


def test_connections_beyond_the_cap_get_a_503_and_a_close(tmp_path):
    backend = ScriptedBackend(held_first(threading.Event()))
    proxy = start_proxy([backend], "--config", config_file(tmp_path, "limits:\n  max_connections: 2\n"))
    try:
        held = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            s.sendall(HEALTH)
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
            held.append(s)
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(HEALTH)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1\r\n" in head, out
        assert json.loads(body)["error"]["type"] == "service_unavailable"
        s.close()
        held.pop().close()

        def served():
            c = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            c.sendall(HEALTH)
            ok = c.recv(65536).startswith(b"HTTP/1.1 200 ")
            c.close()
            return ok

        assert wait_for(served, timeout=3)  # a freed slot is usable again
        for s in held:
            s.close()
    finally:
        proxy.stop()
        backend.close()


# -- 5. a new connection that sends nothing ------------------------------------------------------


def test_a_new_connection_that_sends_nothing_is_closed_after_the_header_timeout(tmp_path):
    backend = ScriptedBackend(held_first(threading.Event()))
    proxy = start_proxy([backend], "--config", config_file(tmp_path, "timeouts:\n  header_read: 0.5\n"))
    try:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=4)
        t0 = time.monotonic()
        assert s.recv(10) == b""  # closed without an answer: it asked nothing
        assert 0.4 < time.monotonic() - t0 < 2.0
        s.close()
        # A connection that made a request is then idle under keep-alive, not the head's limit.
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=1.5)
        s.sendall(HEALTH)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        try:
            assert s.recv(10) != b""
        except socket.timeout:
            pass  # still open after 1.5 s: good
        s.close()
    finally:
        proxy.stop()
        backend.close()


# -- 6. the body limit ---------------------------------------------------------------------------


def test_the_default_body_limit_refuses_a_20_mib_chat_body_and_the_flag_still_sets_it():
    backend = ScriptedBackend(held_first(threading.Event()))
    proxy = start_proxy([backend])
    small = start_proxy([backend], "--max-body-bytes", "1000")
    try:
        for port, length in ((proxy.port, 20 * 1024 * 1024), (small.port, 1001)):
            s = socket.create_connection(("127.0.0.1", port), timeout=3)
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n{" % length
            )
            assert s.recv(65536).startswith(b"HTTP/1.1 413 ")
            s.close()
        assert backend.requests == []
    finally:
        proxy.stop()
        small.stop()
        backend.close()


# -- 7. closing aborts what is in flight; a closing connection does not linger for ever ----------


def test_a_half_close_aborts_the_upstream_at_once_even_when_the_client_reads_nothing(tmp_path):
    """The client sends its FIN while our write buffer toward it is full: the upstream request
    is aborted at once (not when the buffer drains, which it never will), and the closing
    connection is aborted after write_stall without progress instead of lingering."""
    streamer = Streamer()
    backend = ScriptedBackend(streamer)
    proxy = start_proxy([backend], "--config", config_file(tmp_path, "timeouts:\n  write_stall: 3.0\n"))
    try:
        s = slow_reader_socket(proxy.port)
        s.sendall(STREAM)
        assert wait_for(lambda: streamer.sent > 4 * 1024 * 1024, timeout=5)  # buffers full
        time.sleep(0.2)
        t0 = time.monotonic()
        s.shutdown(socket.SHUT_WR)
        assert streamer.failed.wait(2), "the upstream request outlived the client's FIN"
        assert streamer.at - t0 < 1.0
        assert isinstance(streamer.error, (ConnectionResetError, BrokenPipeError)), streamer.error
        assert tcp_state(s) != TCP_CLOSE  # still flushing, within its grace
        assert wait_for(lambda: tcp_state(s) == TCP_CLOSE, timeout=6)  # then aborted
        assert time.monotonic() - t0 > 2.5
        s.close()
    finally:
        proxy.stop()
        backend.close()


def test_the_new_limits_have_flags():
    from proxy.cli import _parser, config_from_args

    args = _parser().parse_args(
        [
            "--backend", "http://127.0.0.1:9", "--write-stall-timeout", "5", "--pool-wait-timeout", "2",
            "--max-pool-waiters", "7", "--pool-spare", "2", "--max-connections", "300", "--max-queued-bytes", "65536",
            "--max-worker-queued-bytes", "1048576", "--max-body-bytes", "1000",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.timeouts.write_stall, cfg.timeouts.pool_wait, cfg.connection_pool.max_waiters) == (5.0, 2.0, 7)
    assert cfg.connection_pool.spare == 2
    assert (cfg.limits.max_connections, cfg.limits.max_queued_bytes, cfg.limits.max_worker_queued_bytes) == (
        300, 65536, 1048576,
    )
    assert cfg.limits.max_body_bytes == 1000


def test_a_waiter_that_leaves_after_being_handed_a_connection_passes_it_on():
    """A request whose client leaves just as the pool hands it a connection must not take the
    connection with it: the next waiter gets it (before, it waited for ever)."""
    from proxy.http.connection_pool import ConnectionPool
    from proxy.http.upstream import UpstreamConnection

    async def main():
        loop = asyncio.get_running_loop()
        cfg = build({"backends": ["http://127.0.0.1:9"], "connection_pool": {"max_connections": 1}})
        pool = ConnectionPool(loop, "127.0.0.1", 9, cfg)
        busy = UpstreamConnection(pool)  # never connected: the pool only counts and hands it
        pool.conns.add(busy)
        first = loop.create_task(pool.acquire())
        second = loop.create_task(pool.acquire())
        await asyncio.sleep(0.01)
        assert pool.stats()["waiting"] == 2 and pool.stats()["queued"] == 2
        pool.release(busy)  # handed to the first waiter...
        first.cancel()  # ...whose client left before it could take it
        assert await asyncio.wait_for(second, 1.0) is busy
        assert pool.stats()["waiting"] == 0

    uvloop.run(main())


def test_the_whole_read_is_fed_only_below_room_blank_lines():
    """``few_blank_lines`` (compiled: one memchr walk) against the regex that ``cut`` slices by,
    on reads made of the bytes that matter (LF, CR, a letter), every room from 1 to 6: it may
    say yes only when fewer blank lines than room are there. Compiled it must say exactly
    that (the pure build's counts are allowed to be cautious: ``cut`` then takes the whole)."""
    import random

    from proxy.http import pipeline

    rng = random.Random(7)
    exact = not pipeline.__file__.endswith(".py")  # this run's build of it is the compiled one
    for _ in range(20000):
        data = bytes(rng.choice(b"\n\n\r\rab") for _ in range(rng.randrange(0, 24)))
        blanks = sum(1 for _ in _BLANK_LINE.finditer(data))
        for room in range(1, 7):
            fits = few_blank_lines(data, room)
            assert not fits or blanks < room, (data, room)
            if exact:
                assert fits == (blanks < room), (data, room)


def test_the_pool_keeps_a_spare_connection_ready_within_its_bound():
    """``connection_pool.spare``: a request that takes the last idle connection (or opens one)
    has the pool open another in the background, so a burst above the last peak finds one
    connected; never beyond max_connections, and none with spare 0."""
    from proxy.http.connection_pool import ConnectionPool

    async def main():
        loop = asyncio.get_running_loop()
        accepted = []
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def pool_of(spare, most=8):
            cfg = build({"backends": [f"http://127.0.0.1:{port}"],
                         "connection_pool": {"spare": spare, "max_connections": most}})
            return ConnectionPool(loop, "127.0.0.1", port, cfg)

        async def settle():
            for _ in range(50):
                await asyncio.sleep(0.01)

        try:
            pool = pool_of(1)
            first = await pool.acquire()  # opened on demand: the spare follows it
            await settle()
            assert (pool.stats()["open"], pool.stats()["idle"], len(accepted)) == (2, 1, 2)
            pool.release(first)
            # A burst of two: both connected already, no handshake on either's path...
            a, b = pool.take_idle(), pool.take_idle()
            assert a is not None and b is not None and a is not b and pool.opening == 1
            await settle()  # ...and the spare is topped up behind them
            assert (pool.stats()["open"], pool.stats()["idle"], pool.opened) == (3, 1, 3)
            pool.abort()

            bounded = pool_of(1, most=1)
            await bounded.acquire()
            await settle()
            assert bounded.stats()["open"] == 1 and bounded.opening == 0
            bounded.abort()

            none = pool_of(0)
            await none.acquire()
            await settle()
            assert none.stats()["open"] == 1
            none.abort()
        finally:
            server.close()
            for w in accepted:
                w.close()

    uvloop.run(main())
