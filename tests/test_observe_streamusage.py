"""Tokens of streams whose client did not ask for usage (issue 14): the proxy adds
``stream_options.include_usage`` upstream and takes its effects back out, so the client reads
what the backend would have sent it without the option. Unit cases on vLLM's recorded bytes,
then real sockets: a simulator (which moves system_fingerprint as vLLM 0.32 does) fetched
directly and through the proxy, byte for byte once ids and timestamps are aligned."""

import json
import random
import re
import socket
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import start_proxy, start_sim
from proxy.observe import streamusage
from proxy.observe import metrics
from proxy.observe.metrics import usage
from proxy.routing.fields import decode

RECORDED = Path(__file__).parent / "realvllm" / "recorded" / "details"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": True}
CMPL = {"model": "tiny", "prompt": "one two", "max_tokens": 4, "stream": True}


def recorded_body(name):
    return (RECORDED / f"{name}.http").read_bytes().split(b"\r\n\r\n", 1)[1]


def events(chunked):
    payload, rest = streamusage._dechunk(chunked)
    assert payload is not None and rest == b"0\r\n\r\n"
    return payload.split(b"\n\n")[:-1]


# -- sans IO ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chat_stream_usage", "cmpl_stream_usage", "chat_long_stream"])
def test_strip_on_vllm_recordings_gives_the_stream_without_the_option(name):
    body = recorded_body(name)
    out, used = streamusage.strip(body, True)
    before, after = events(body), events(out)
    assert used == before[-2] and b'"choices":[]' in used
    assert usage(used) == usage(body)  # the counts read are the ones vLLM sent
    fingerprint = re.search(rb',"system_fingerprint":"[^"]*"', used).group()
    # Every event but the usage one, in order; the finish event ends with the fingerprint, as
    # vLLM sends it without include_usage (recorded: chat_stream.http, cmpl_stream.http).
    assert after[:-2] == before[:-3] and after[-1] == b"data: [DONE]"
    assert after[-2] == before[-3][:-1] + fingerprint + b"}"
    assert after[-2].endswith(b'"finish_reason":"length","stop_reason":null,"token_ids":null}]' + fingerprint + b"}"
                              if b"chat" in after[-2] else b"}]" + fingerprint + b"}")
    # One event per chunk, as vLLM frames them: the same wire bytes up to the finish event.
    assert out[:body.rfind(b"data: {", 0, body.find(used)) - 4] == body[:body.rfind(b"data: {", 0, body.find(used)) - 4]


def test_strip_shape_matches_a_recorded_stream_without_the_option():
    # chat_stream.http was recorded without include_usage: its finish event is shaped as ours.
    plain = events(recorded_body("chat_stream"))
    ours = events(streamusage.strip(recorded_body("chat_stream_usage"), True)[0])
    shape = lambda e: re.sub(rb'"(id|content)":"[^"]*"|"created":\d+|vllm-[^"]*', b"", e)  # noqa: E731
    assert shape(ours[-2]) == shape(plain[-2]) and shape(ours[0]) == shape(plain[0])


@pytest.mark.parametrize("tail", [
    b"",
    b"5\r\nhello\r\n0\r\n\r\n",  # no events
    b"zz\r\n",  # not chunks
    b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n",  # no usage event: an error ended it, or a backend sent none
    b"1a\r\ndata: {\"choices\":[]}\r\n\r\n\r\n0\r\n\r\n",  # CRLF line ends: not vLLM's
])
def test_strip_passes_what_it_cannot_read_unchanged(tail):
    assert streamusage.strip(tail, True) == (tail, None)


def test_strip_plain_event_stream():
    body = b'data: {"choices":[{"finish_reason":"stop"}]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":1},' \
           b'"system_fingerprint":"fp\\"x"}\n\ndata: [DONE]\n\n'
    out, used = streamusage.strip(body, False)
    assert out == b'data: {"choices":[{"finish_reason":"stop"}],"system_fingerprint":"fp\\"x"}\n\ndata: [DONE]\n\n'
    assert used.startswith(b'data: {"choices":[],"usage"')


@pytest.mark.parametrize("body, wants", [
    (b'{"model":"m","stream":true}', True),
    (b' {"stream": true, "n": 1}', True),
    (b'{"stream":true,"stream_options":null}', False),  # JSON's last key wins: ours would not count
    (b'{"model":"m","stream":false}', False),
    (b'{"model":"m"}', False),
    (b'{"stream":true,"stream_options":{"include_usage":false}}', False),  # the client chose
    (b'{"stream":true,"stream_options":{"continuous_usage_stats":true}}', False),
    (b'{"stream":true,"n":2}', False),  # a finish event long before the end
    (b'{"stream":true', False),  # not JSON: vLLM answers 400, unchanged
])
@pytest.mark.parametrize("model_only", [False, True])  # as a route with or without prompt keys decodes
def test_which_requests_are_rewritten(body, wants, model_only):
    fields = decode(body, model_only)
    assert streamusage.wants_usage(b"POST", b"/v1/chat/completions", fields) is wants
    assert streamusage.wants_usage(b"POST", b"/v1/completions?x=1", fields) is wants
    if wants:
        assert json.loads(streamusage.usage_body(body)) == {**json.loads(body), "stream_options": {"include_usage": True}}
    assert not streamusage.wants_usage(b"POST", b"/v1/embeddings", fields)
    assert not streamusage.wants_usage(b"GET", b"/v1/chat/completions", fields)


# -- through the proxy --------------------------------------------------------------------


def raw_post(port, path, body, version=b"HTTP/1.1"):
    """(head, body bytes as they came on the wire) of one request; the server closes."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST %s %s\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (path.encode(), version, len(data), data))
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    head, _, rest = got.partition(b"\r\n\r\n")
    return head, rest


def aligned(body):
    """Ids and timestamps differ between two requests; same length, so chunk sizes stay."""
    body = re.sub(rb'"id":"(chat)?cmpl-[0-9a-f]+"', lambda m: b"X" * len(m.group()), body)
    return re.sub(rb'"created":\d+', lambda m: b"C" * len(m.group()), body)


def scrape(proxy):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def tokens(proxy, kind):
    return sum(v for n, lab, v in scrape(proxy) if n == "fleetproxy_tokens_total" and lab["kind"] == kind)


@pytest.fixture(scope="module")
def pair():
    sim = start_sim("--ttft", "0.01", "--itl", "0.001")
    proxy = start_proxy([sim])
    yield sim, proxy
    proxy.stop()
    sim.stop()


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", CHAT), ("/v1/completions", CMPL)])
def test_client_reads_the_stream_it_asked_for_and_tokens_are_counted(pair, path, body):
    sim, proxy = pair
    before = tokens(proxy, "completion")
    _, direct = raw_post(sim.port, path, body)
    head, proxied = raw_post(proxy.port, path, body)
    assert b"fingerprint" in direct and b'"usage"' not in direct  # what the option would change
    assert aligned(proxied) == aligned(direct)
    assert b"transfer-encoding: chunked" in head.lower()
    assert tokens(proxy, "completion") - before == body["max_tokens"]


def test_client_that_asked_for_usage_gets_it_unchanged(pair):
    sim, proxy = pair
    body = {**CHAT, "stream_options": {"include_usage": True}}
    before = tokens(proxy, "completion")
    _, direct = raw_post(sim.port, "/v1/chat/completions", body)
    _, proxied = raw_post(proxy.port, "/v1/chat/completions", body)
    assert b'"usage"' in direct and aligned(proxied) == aligned(direct)
    assert tokens(proxy, "completion") - before == CHAT["max_tokens"]


def test_http10_client_gets_the_same_payload_dechunked(pair):
    sim, proxy = pair
    _, direct = raw_post(sim.port, "/v1/chat/completions", CHAT)
    head, proxied = raw_post(proxy.port, "/v1/chat/completions", CHAT, b"HTTP/1.0")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    payload, _ = streamusage._dechunk(direct)
    assert aligned(proxied) == aligned(payload)


def _wire_chunks(body):
    """A chunked body's chunks as they are on the wire (size line, payload, CRLF), the last one included."""
    out, pos = [], 0
    while pos < len(body):
        line = body.index(b"\r\n", pos)
        size = int(body[pos:line], 16)
        end = line + 2 + size + 2 if size else len(body)  # the last chunk: the rest (its trailers' CRLF)
        out.append(body[pos:end])
        pos = end
    return out


def _splits(chunks):
    """The recorded stream cut into reads as a backend's writes may arrive: named, a list of writes."""
    finish, end = len(chunks) - 4, chunks[-3:]  # the finish chunk, then usage, [DONE], the last chunk
    middle = chunks[finish][:20]
    return {
        "an event a read": chunks,
        "a burst to the finish event, then the end": [b"".join(chunks[:finish + 1]), b"".join(end)],
        "the finish event cut across two reads": [b"".join(chunks[:2]), b"".join(chunks[2:finish]) + middle,
                                                  chunks[finish][20:] + b"".join(end)],
        "the end in three reads": [b"".join(chunks[:finish]), chunks[finish], end[0], end[1] + end[2]],
        "all at once": [b"".join(chunks)],
    }


def test_the_client_reads_the_same_stream_however_the_backend_writes_it(scripted_pair):
    # The relay holds a stream from its finish event on, and rewrites the end once it is all
    # there: whether the finish event starts a read, ends a burst, is cut across reads, or the
    # end comes in pieces, the client reads the recorded stream without the option's effects.
    recorded = (RECORDED / "chat_stream_usage.http").read_bytes()
    head, body = recorded.split(b"\r\n\r\n", 1)
    expected, used = streamusage.strip(body, True)
    assert used is not None and expected != body
    for name, writes in _splits(_wire_chunks(body)).items():
        assert b"".join(writes) == body
        backend, proxy = scripted_pair(head + b"\r\n\r\n", writes)
        _, proxied = raw_post(proxy.port, "/v1/chat/completions", CHAT)
        assert b'"include_usage":true' in backend.requests[-1], name
        assert proxied == expected, name


@pytest.mark.parametrize("comment", [False, True])
def test_a_stream_whose_head_and_body_come_in_one_read_is_rewritten_in_that_read(scripted_pair, comment):
    # The head and the whole body in one read (a backend that writes a short stream at once):
    # the relay rewrites the stream's end in that read, behind the head it forwards as it
    # came. With a comment chunk after the finish event, the framer no longer knows where the
    # finish event's chunk starts, and the chunks are walked from the body's start instead.
    recorded = (RECORDED / "chat_stream_usage.http").read_bytes()
    head, body = recorded.split(b"\r\n\r\n", 1)
    if comment:
        chunks = _wire_chunks(body)
        chunks.insert(len(chunks) - 3, b"d\r\n: keepalive\n\n\r\n")
        body = b"".join(chunks)
    expected, used = streamusage.strip(body, True)
    assert used is not None and expected != body
    assert (b"keepalive" in expected) == comment
    backend, proxy = scripted_pair(b"", [head + b"\r\n\r\n" + body])
    _, proxied = raw_post(proxy.port, "/v1/chat/completions", CHAT)
    assert b'"include_usage":true' in backend.requests[-1]
    assert proxied == expected
    assert tokens(proxy, "completion") > 0


@pytest.fixture
def scripted_pair():
    """(a backend that answers every request with ``head`` and then each of ``writes`` as its
    own write, 20 ms apart, so each arrives as its own read; a proxy in front of it)."""
    from conftest import ScriptedBackend

    made = []

    def make(head, writes):
        def script(request, sock):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(head)
            for data in writes:
                time.sleep(0.02)
                sock.sendall(data)
            sock.close()

        backend = ScriptedBackend(script)
        proxy = start_proxy([backend.url])
        made.append((backend, proxy))
        return backend, proxy

    yield make
    for backend, proxy in made:
        proxy.stop()
        backend.close()


def test_metrics_off_forwards_the_body_untouched(tmp_path):
    sim = start_sim()
    config = tmp_path / "fp.yaml"
    config.write_text(f"backends: [{{url: '{sim.url}'}}]\nobserve: {{stream_usage: false}}\n")
    proxy = start_proxy([], "--config", str(config))
    try:
        _, proxied = raw_post(proxy.port, "/v1/chat/completions", CHAT)
        assert b'"usage"' not in proxied and b"fingerprint" in proxied
        assert tokens(proxy, "completion") == 0  # nothing asked, nothing counted
    finally:
        proxy.stop()
        sim.stop()


@pytest.mark.parametrize("chunked", [True, False])
def test_a_burst_of_events_is_held_only_from_the_finish_event(chunked):
    # Many events in one read (a backend ahead of a slow proxy): the ones before the finish
    # event pass at once, only the end of the stream is held and rewritten.
    events = [b'data: {"choices":[{"delta":{"content":"t%d"},"finish_reason":null}]}\n\n' % i for i in range(5)]
    events.append(b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\n')
    frame = (lambda e: b"%x\r\n%s\r\n" % (len(e), e)) if chunked else (lambda e: e)
    data = b"".join(frame(e) for e in events)
    cut = streamusage.unit_start(data, data.find(streamusage.FINISH), chunked)
    assert data[:cut] == b"".join(frame(e) for e in events[:-1])
    assert data[cut:] == frame(events[-1])
    assert streamusage.unit_start(frame(events[-1]), 10, chunked) == 0  # the first unit of a read


def _last_finish(data):
    """finish_at's rule, written the slow way: the last "finish_reason": of the read, if a
    string follows it."""
    at = data.rfind(b'"finish_reason":')
    return at if at >= 0 and data[at + 16:at + 17] == b'"' else -1


def test_finish_at_finds_the_finish_event_of_every_read_of_vllms_streams():
    # Every read the relay could be handed (one unit, several, the whole body) of vLLM's own
    # recorded streams, and the same cut one byte short at either end: the finish event is
    # found exactly where a search from the front finds it, and nowhere before it.
    for name in ["chat_stream_usage", "cmpl_stream_usage", "chat_long_stream"]:
        body = recorded_body(name)
        units = [b"%s\r\n" % u for u in body.split(b"\r\n")[:-1]]  # size lines and payloads
        starts = [sum(map(len, units[:i])) for i in range(len(units) + 1)]
        for i in range(len(starts)):
            for j in range(i + 1, min(i + 8, len(starts))):
                for a, b in [(0, 0), (1, 0), (0, 1)]:
                    read = body[starts[i] + a:starts[j] - b]
                    assert streamusage.finish_at(read) == read.find(streamusage.FINISH), (name, i, j, a, b)
        assert streamusage.finish_at(body) >= 0


def test_finish_at_keeps_its_rule_on_any_bytes():
    rng = random.Random(14)
    pieces = [b'"finish_reason":', b'"finish_reason":"', b"null", b'"stop"', b'\\"finish_reason\\":"', b'"f',
              b'"', b"f", b"x", b"}", b"\r\n", b"data: {",
              # pieces of the key itself: the compiled search moves back by where a byte is in it
              b"reason", b'son":', b'_reason":"', b"n", b"i", b":", b'"finish', b"h_r"]
    for _ in range(20000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 9)))
        assert streamusage.finish_at(data) == _last_finish(data), data


def test_a_read_that_ends_as_a_quiet_one_has_no_finish_event():
    # The relay skips finish_at's search on a read that ends with the end quiet_end learned
    # from an earlier read without a finish event: finish_at must say -1 for every such read.
    rng = random.Random(16)
    pieces = [b'"finish_reason":', b'"finish_reason":"', b"null", b'"stop"', b'\\"finish_reason\\":"', b'"',
              b"}]}\n\n", b"\r\n", b'"finish_reason":null', b',"token_ids":null', b"x", b"n", b"reason"]
    learned = 0
    for _ in range(20000):
        first = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 7)))
        end = streamusage.quiet_end(first)
        if end is None:
            continue
        learned += 1
        assert _last_finish(first) == -1 and first.endswith(end) and end.startswith(b'"finish_reason":')
        later = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 5))) + end
        assert streamusage.quiet(later, end)
        assert streamusage.finish_at(later) == -1, later
        other = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 7)))
        assert streamusage.quiet(other, end) == other.endswith(end)
        known = streamusage.known(other)  # any end learned so far, as the relay asks on a miss
        assert known is None or (other.endswith(known) and streamusage.finish_at(other) == -1), other
    assert learned > 1000


def _recorded_chunks(name):
    units = recorded_body(name).split(b"\r\n")[:-1]
    return [b"%s\r\n%s\r\n" % (units[i], units[i + 1]) for i in range(0, len(units) - 1, 2)]


def test_vllms_token_events_are_quiet_after_the_first_and_its_finish_event_is_not():
    total = 0
    for name in ["chat_stream_usage", "cmpl_stream_usage", "chat_long_stream"]:
        chunks = _recorded_chunks(name)
        end = None
        skipped = 0
        for finish, chunk in enumerate(chunks):
            if end is not None and streamusage.quiet(chunk, end):
                skipped += 1
                assert streamusage.finish_at(chunk) == -1
                continue
            if streamusage.finish_at(chunk) >= 0:
                break
            end = streamusage.quiet_end(chunk)
        else:
            raise AssertionError(f"{name}: no finish event")
        # Searched: the chat's role event (its end differs), the first token event, the finish event.
        assert skipped == finish - (2 if b'"role"' in chunks[0] else 1), (name, skipped, finish)
        assert streamusage.quiet_end(chunks[finish - 1]) is streamusage.quiet_end(chunks[finish - 1])  # one object
        total += skipped
    assert total > 0


def test_once_a_stream_taught_its_ends_the_next_is_searched_only_at_its_finish_event():
    # The relay's rule per read of a watched stream: its own last end, else any end learned
    # (streamusage.known), else finish_at's search. A chat's role event and first token event
    # end otherwise than the read before them; with the ends learned from an earlier stream,
    # neither is searched.
    for name in ["chat_stream_usage", "cmpl_stream_usage", "chat_long_stream"]:
        chunks = _recorded_chunks(name)
        for chunk in chunks:  # the first stream: it teaches the ends
            if streamusage.finish_at(chunk) >= 0:
                break
            streamusage.quiet_end(chunk)
        end, searched = None, []
        for i, chunk in enumerate(chunks):
            if end is not None and streamusage.quiet(chunk, end):
                continue
            known = streamusage.known(chunk)
            if known is not None:
                end = known
                assert streamusage.finish_at(chunk) == -1
                continue
            searched.append(i)
            if streamusage.finish_at(chunk) >= 0:
                break
            end = streamusage.quiet_end(chunk)
        finish = next(i for i, c in enumerate(chunks) if streamusage.finish_at(c) >= 0)
        assert searched == [finish], (name, searched)


def test_rfind_open_is_bytes_rfind():
    # Found by the brace that ends the key: keys made of braces and of the key's own pieces,
    # where a wrong step back past a brace would miss a match.
    rng = random.Random(17)
    for key in [b'"usage":{', b'"choices":[],"usage":{', b"{", b"{{", b'"a":{"a":{']:
        pieces = [key, key[:-1], key[1:], b"{", b"}", b'"', b"a", b":", b"usage", b" "]
        for _ in range(3000):
            data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 8)))
            assert streamusage.rfind_open(data, key) == data.rfind(key), (key, data)
            lo, hi = rng.randrange(0, len(data) + 2), rng.randrange(-1, len(data) + 2)
            want = data.rfind(key, lo, None if hi < 0 else hi)
            assert streamusage.rfind_open(data, key, lo, hi) == want, (key, data, lo, hi)


def _event_open_rule(data, key, lo):
    """rfind_event_open's answer by its definition: the last key when no SSE data event starts
    after it, else -2 - where that event starts."""
    starts = [i for i in range(lo, len(data)) if data.startswith(b"data: {", i) and (i == lo or data[i - 1] == 10)]
    event = starts[-1] if starts else -1
    opened = data.rfind(key, lo)
    if opened > event:
        return opened
    return -1 if event < 0 else -2 - event


def test_rfind_event_open_stops_at_the_last_event():
    # Keys, events and the pieces of both in every order: the search from the end stops at the
    # first of the two it meets, in the compiled build as in the rule.
    rng = random.Random(23)
    key = b'"usage":{'
    pieces = [key, b"data: {", b"\ndata: {", b"\n", b"data: ", b"{", b"}", b'"usage":', b"a", b"\n\n"]
    for _ in range(6000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 9)))
        lo = rng.randrange(0, len(data) + 1)
        assert streamusage.rfind_event_open(data, key, lo) == _event_open_rule(data, key, lo), (data, lo)


def test_a_streams_usage_is_read_from_its_last_event_only():
    # vLLM's recorded stream with include_usage, and the same stream without it (the client did
    # not ask, and the proxy did not ask for it either: observe.stream_usage false).
    body = recorded_body("chat_stream_usage")
    counts = usage(body)
    assert counts[0] > 0 and counts[1] > 0
    units = body.split(b"\r\n")
    plain = b"".join(u + b"\r\n" for u in units if not (b'"usage":{' in u and b'"choices":[]' in u))[:-2]
    assert b'"usage"' not in plain.split(b"data: [DONE]")[0].rsplit(b"data: {", 1)[1]
    assert usage(plain) == metrics.NO_TOKENS
    # A usage object in an earlier event is not the stream's: only the last event counts.
    early = plain.replace(b'"finish_reason":null', b'"finish_reason":null,"usage":{"prompt_tokens":1,'
                          b'"total_tokens":2,"completion_tokens":1}', 1)
    assert early != plain and usage(early) == metrics.NO_TOKENS
    # The last event in the read before: found there, and not looked for past it.
    cut = plain.rindex(b"data: [DONE]") - 5
    assert usage(plain[cut:], plain[:cut]) == metrics.NO_TOKENS
    cut = body.rindex(b"data: [DONE]") - 5
    assert usage(body[cut:], body[:cut]) == counts


def test_rfind_is_bytes_rfind():
    # The compiled search moves back by the byte a window starts on: needles with repeated
    # bytes, haystacks made of their pieces, where a wrong move would step over a match.
    rng = random.Random(15)
    needles = [b'"usage"', streamusage.FINISH[:-1], b"aa", b"abab", b"x", b'""', b"ee\r\n"]
    for needle in needles:
        skip = streamusage.skips(needle)
        pieces = [needle, needle[:-1], needle[1:], needle[: len(needle) // 2], b"a", b"b", b'"', b"e", b"\r\n", b"z"]
        for _ in range(3000):
            data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 8)))
            assert streamusage.rfind(data, needle, skip) == data.rfind(needle), (needle, data)
            lo, hi = rng.randrange(0, len(data) + 2), rng.randrange(-1, len(data) + 2)
            want = data.rfind(needle, lo, None if hi < 0 else hi)  # within bounds: a match across one is none
            assert streamusage.rfind(data, needle, skip, lo, hi) == want, (needle, data, lo, hi)
    assert streamusage.rfind(b"abc", b"", streamusage.skips(b"")) == 3
    assert streamusage.rfind(b"abc", b"", streamusage.skips(b""), 2, 1) == -1


def test_after_is_startswith():
    data = b'data: {"id":1}'
    for literal in [b"data: {", b"data", b"", b"x", data, data + b"}"]:
        for pos in range(-1, len(data) + 2):
            want = pos + len(literal) if pos >= 0 and data.startswith(literal, pos) else -1
            assert streamusage.after(data, pos, literal) == want, (literal, pos)


def test_find_is_bytes_find():
    data = b'x"finish_reason":"stop","system_fingerprint":"fp"}\n\n'
    for needle in [streamusage.FINISH, b"", b"x", b'"', b"\n\n", b"fp", b"absent"]:
        for start in range(len(data) + 2):
            for end in [-1, *range(len(data) + 2)]:
                assert streamusage.find(data, needle, start, end) == data.find(
                    needle, start, None if end < 0 else end), (needle, start, end)


@pytest.mark.parametrize("usage_json, want", [
    # vLLM's layouts (tests/realvllm/recorded): the one-match path
    (b'{"prompt_tokens":16,"total_tokens":20,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":640,'
     b'"created_cache_tokens":0,"multimodal_tokens":null},"completion_tokens_details":null}', (16, 4, 640)),
    (b'{"prompt_tokens":21,"total_tokens":29,"completion_tokens":8}', (21, 8, 0)),
    (b'{"prompt_tokens":21,"total_tokens":37,"completion_tokens":16,"prompt_tokens_details":null}', (21, 16, 0)),
    # anyone else's: the searches
    (b'{"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}', (5, 7, 0)),
    (b' {"prompt_tokens": 5, "completion_tokens": 7}', (5, 7, 0)),  # "usage": { (not found by its brace)
    (b'{"completion_tokens":7,"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":3}}', (5, 7, 3)),
    (b'{"prompt_tokens":21,"total_tokens":29,"completion_tokens":8,"prompt_tokens_details":{"audio_tokens":0,'
     b'"cached_tokens":9}}', (21, 8, 9)),
    (b'{}', (0, 0, 0)),
])
@pytest.mark.parametrize("split", [None, 10, 40])
def test_usage_counts_whatever_the_layout(usage_json, want, split):
    body = b'{"id":"x","choices":[],"usage":' + usage_json + b',"system_fingerprint":"f"}'
    assert usage(body) == want
    if split is not None:  # cut between the relay's last two reads
        at = body.find(b'"usage"') + split
        assert usage(body[at:], body[:at]) == want


def _regex_usage(data, at):
    match = metrics._VLLM.match(data, at)
    if match is None:
        return None
    cached = match.group(3)
    return int(match.group(1)), int(match.group(2)), int(cached) if cached is not None else 0


def test_the_compiled_usage_walk_reads_what_the_regex_does():
    # usage() runs the walk (_vllm_walk) where compiled and the regex where not: one answer
    # for every layout, every truncation and every single-byte change of vLLM's usage objects.
    layouts = [
        b'"usage":{"prompt_tokens":16,"total_tokens":20,"completion_tokens":4,"prompt_tokens_details":'
        b'{"cached_tokens":640,"created_cache_tokens":0}}',
        b'"usage":{"prompt_tokens":21,"total_tokens":29,"completion_tokens":8}',
        b'"usage":{"prompt_tokens":21,"total_tokens":37,"completion_tokens":16,"prompt_tokens_details":null}',
        b'"usage":{"prompt_tokens":0,"total_tokens":0,"completion_tokens":0,"prompt_tokens_details":{}}',
        b'"usage":{"prompt_tokens": 5, "completion_tokens": 7}',
        b'"usage":{"prompt_tokens":123456789012345678,"total_tokens":1,"completion_tokens":1}',
    ]
    seen = 0
    for layout in layouts:
        variants = [layout[:cut] for cut in range(len(layout) + 1)]
        variants += [layout[:i] + bytes([c]) + layout[i + 1:] for i in range(len(layout)) for c in (b"9"[0], b"x"[0])]
        for data in variants:
            want = _regex_usage(data, 0)
            assert metrics._vllm_usage(data, 0) == want, data
            seen += want is not None
    assert seen > 100  # the walk matched, not only refused
    # Past 18 digits (no int64 left) the walk refuses, and usage() reads the number by search.
    big = b'{"usage":{"prompt_tokens":1234567890123456789,"total_tokens":1,"completion_tokens":1}}'
    assert metrics._vllm_usage(big, 1) is None
    assert usage(big) == (1234567890123456789, 1, 0)


def _tails():
    """Ends of chunked streams: vLLM's recordings from each chunk on, and variants of them."""
    for name in ("chat_stream_usage", "cmpl_stream_usage", "chat_long_stream", "chat_stream"):
        body = recorded_body(name)
        starts = [0] + [m.end() for m in re.finditer(rb"\n\n\r\n", body)]
        for at in starts:
            yield body[at:]
            yield body[at:].replace(b',"system_fingerprint":"', b',"system_fingerprint":"x\\"y')  # escaped quote
            yield re.sub(rb',"system_fingerprint":"[^"]*"', b"", body[at:])  # none to move
            yield body[at:].replace(b"0\r\n\r\n", b"0\r\nx-trailer: 1\r\n\r\n")  # trailers: _strip's
            yield body[at:].replace(b'"finish_reason":"', b'"finish_reason": "')  # not vLLM's spacing
    yield b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


def test_the_fast_path_for_vllm_gives_what_the_general_one_does():
    fast = 0
    for tail in _tails():
        got = streamusage.strip(tail, True)
        assert got == streamusage._strip(tail, True), tail
        fast += streamusage._strip_vllm(tail) is not None
    assert fast >= 8  # the vLLM layouts took the fast path (the assertion above holds them to it)


@pytest.mark.parametrize("name", ["chat_stream_usage", "cmpl_stream_usage"])
def test_the_fast_path_takes_the_end_the_relay_holds(name):
    # The relay holds from the chunk of the finish event on (unit_start): vLLM's end of a stream
    # cut there is the case the fast path is for, fingerprint or none.
    body = recorded_body(name)
    tail = body[streamusage.unit_start(body, body.find(streamusage.FINISH), True):]
    bare = [re.sub(rb',"system_fingerprint":"[^"]*"', b"", e) + b"\n\n" for e in events(tail)]
    for variant in (tail, b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in bare) + b"0\r\n\r\n"):
        assert streamusage._strip_vllm(variant) is not None
        assert streamusage._strip_vllm(variant) == streamusage._strip(variant, True)
