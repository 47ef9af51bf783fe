"""The prober's GETs (``routing/fetch.py``): health checks and load scrapes over kept-alive
connections, against raw servers on loopback that answer exactly as each case needs."""

import asyncio

import pytest

from conftest import start_sim
from proxy.routing import prober
from proxy.routing.fetch import Fetcher


class _Endpoint:
    host, ssl, server_hostname = "127.0.0.1", None, None

    def __init__(self, port):
        self.port = port
        self.authority = b"127.0.0.1:%d" % port


def _server(answers, accepted):
    """Each request on a connection gets the next of ``answers``: bytes to write, or a list of
    writes (None between two: a 50 ms pause); None closes the connection instead, a float
    sleeps that long and then closes it, and an answer that says "connection: close" is
    followed by the close. ``accepted`` counts connections."""

    async def serve(reader, writer):
        accepted.append(writer)
        try:
            while answers:
                await reader.readuntil(b"\r\n\r\n")
                answer = answers.pop(0)
                if answer is None:
                    break
                if isinstance(answer, float):
                    await asyncio.sleep(answer)
                    break
                parts = answer if isinstance(answer, list) else [answer]
                for part in parts:
                    if part is None:
                        await asyncio.sleep(0.05)
                    else:
                        writer.write(part)
                        await writer.drain()
                if any(part and b"connection: close" in part for part in parts):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return serve


def _run(answers, gets, *, limit=4 << 20, timeout=2.0, between=None, path="/health"):
    """Start a server for ``answers``, make ``gets`` GETs on one Fetcher (``between(i)`` is
    awaited after GET i when given); (answers, connections accepted, connections kept)."""
    accepted = []

    async def run():
        server = await asyncio.start_server(_server(answers, accepted), "127.0.0.1", 0)
        endpoint = _Endpoint(server.sockets[0].getsockname()[1])
        fetcher = Fetcher(limit=limit)
        try:
            got = []
            for i in range(gets):
                got.append(await fetcher.get(endpoint, path, timeout))
                if between is not None:
                    await between(i)
            return got, len(accepted), len(fetcher.conns)
        finally:
            fetcher.close()
            server.close()

    return asyncio.run(run())


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def test_checks_reuse_one_connection():
    got, connections, kept = _run([OK] * 5, 5)
    assert got == [(200, b"ok")] * 5
    assert (connections, kept) == (1, 1)


WAITING = b"vllm:num_requests_waiting{model_name=\"tiny\"} 3.0\nvllm:num_requests_running{model_name=\"tiny\"} 7.0\n"


@pytest.mark.parametrize("chunked", [False, True])
def test_a_load_scrape_reads_the_whole_answer(chunked):
    """vLLM's /metrics is tens of KiB: it may arrive in several reads, and the families the
    proxy needs can be anywhere in it. Here the answer comes in two writes 50 ms apart, the
    queue's families only in the second."""
    filler = b"".join(b"# HELP vllm:filler_%d x\nvllm:filler_%d 1.0\n" % (i, i) for i in range(2000))
    body = filler + WAITING
    if chunked:
        wire = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(filler), filler, len(WAITING), WAITING)
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    else:
        wire = body
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)
    got, _, kept = _run([[head + wire[:len(filler) // 2], None, wire[len(filler) // 2:]]], 1, path="/metrics")
    assert got == [(200, body)] and kept == 1
    assert prober.parse_metrics(body) == (3.0, 7.0, None)


def test_a_chunked_answer_and_a_status_that_is_not_2xx():
    chunked = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    got, connections, _ = _run([chunked, OK], 2)
    assert got == [(503, b"abcde"), (200, b"ok")]
    assert connections == 1


def test_an_answer_without_a_length_ends_at_the_close():
    got, connections, kept = _run([b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it", OK], 2)
    assert got == [(200, b"all of it"), (200, b"ok")]
    assert (connections, kept) == (2, 1)


def test_connection_close_is_honoured():
    closing = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    got, connections, _ = _run([closing, OK, OK], 3)  # the server closes after "close"
    assert got == [(200, b"ok")] * 3
    assert connections == 2  # a new one after "close", kept after that


def test_a_connection_closed_under_a_request_is_retried_once():
    got, connections, _ = _run([OK, None, OK], 2)
    assert got == [(200, b"ok")] * 2
    assert connections == 2


def test_a_truncated_answer_fails_and_is_not_kept():
    # A length of 10, 4 bytes sent, then the close: no answer, not a short one.
    got, connections, kept = _run([b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd", None], 1)
    assert got == [None]
    assert kept == 0


def test_malformed_timed_out_and_too_large_answers_fail():
    got, _, kept = _run([b"HTTP/1.1 2x0 no\r\n\r\n"], 1)
    assert got == [None] and kept == 0
    got, _, kept = _run([0.5], 1, timeout=0.1)
    assert got == [None] and kept == 0
    got, _, kept = _run([b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 100], 1, limit=50)
    assert got == [None] and kept == 0


def test_a_health_check_drops_the_body_whatever_its_size():
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 100000
    got, _, kept = _run([big, OK], 2, limit=0)
    assert got == [(200, b""), (200, b"")]
    assert kept == 1


def test_bytes_nobody_asked_for_close_the_connection():
    # The server sends a second answer unasked, after the first: the next GET opens anew.
    async def pause(i):
        await asyncio.sleep(0.05)

    got, connections, _ = _run([OK + OK, OK], 2, between=pause)
    assert got == [(200, b"ok")] * 2
    assert connections == 2


def test_checks_follow_a_backend_that_dies_and_comes_back():
    """Against the simulator: a kept connection, the server killed (the probe fails at once),
    started again on the same port (the next probe opens a new connection and succeeds)."""
    sim = start_sim("--name", "h")
    port = int(sim.url.rsplit(":", 1)[1])

    endpoint = _Endpoint(port)

    async def check(fetcher):
        return await prober.probe(fetcher, endpoint, "/health", 1.0)

    async def run():
        fetcher = Fetcher(limit=0)
        try:
            first = [await check(fetcher), await check(fetcher)]
            (kept,) = fetcher.conns.values()
            sim.stop()
            down = await check(fetcher)
            again = start_sim("--name", "h", port=port)
            try:
                up = await check(fetcher)
                (now,) = fetcher.conns.values()
                return first, down, up, now is not kept
            finally:
                again.stop()
        finally:
            fetcher.close()

    try:
        first, down, up, replaced = asyncio.run(run())
    finally:
        sim.stop()
    assert first == [True, True]
    assert down is False
    assert up is True and replaced
