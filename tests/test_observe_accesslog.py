"""The access log (observe.access_log_path, on with access_log): one JSON line per request."""

import json
import time

from conftest import start_proxy, start_sim, wait_for

from test_metrics_requests import CHAT, post


def test_one_json_line_per_request(tmp_path):
    sim = start_sim()
    log = tmp_path / "access.log"
    config = tmp_path / "fp.yaml"
    config.write_text(f"backends: [{{url: '{sim.url}'}}]\naccess_log: true\nobserve: {{access_log_path: '{log}'}}\n")
    proxy = start_proxy([], "--config", str(config))
    try:
        began = time.time()
        assert post(proxy.port, CHAT)[0] == 200
        assert post(proxy.port, {**CHAT, "stream": True, "stream_options": {"include_usage": True}})[0] == 200
        assert post(proxy.port, {**CHAT, "model": "nope"})[0] == 404
        # A stream whose client did not ask for usage: the proxy asked for it, and took it out.
        status, body = post(proxy.port, {**CHAT, "stream": True})
        assert status == 200 and b'"usage"' not in body
        # Buffered: written within a second of the first line, or when the worker drains.
        assert wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 4, timeout=5)
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        first, streamed, missing, unasked = lines
        # Unix time of each request's end (the monotonic end plus the wall clock's offset).
        assert began - 0.01 <= first["ts"] <= streamed["ts"] <= missing["ts"] <= time.time() + 0.01
        assert first["model"] == "tiny" and first["status"] == 200 and first["outcome"] == "ok"
        assert first["tenant"] == "default" and first["attempts"] == 1 and first["backend"]
        assert first["completion_tokens"] == CHAT["max_tokens"] and first["bytes"] > 0
        assert first["ttft_ms"] is not None and first["total_ms"] >= first["ttft_ms"]
        assert streamed["completion_tokens"] == CHAT["max_tokens"] and streamed["id"] != first["id"]
        assert missing["status"] == 404 and missing["model"] == "nope"
        assert unasked["completion_tokens"] == CHAT["max_tokens"] and unasked["prompt_tokens"] > 0
        assert unasked["outcome"] == "ok" and unasked["ttft_ms"] is not None
    finally:
        proxy.stop()
        sim.stop()


def test_lines_are_json_in_order_and_escaped(tmp_path):
    """The log as written by AccessLog itself: every field of every line, in the documented
    order, strings a client controls escaped, batches split where FLUSH_LINES says, and
    nothing lost or reordered across batches."""
    import asyncio

    from _speedups import ResponseFramer
    from proxy.http.exchange import Exchange
    from proxy.observe import accesslog
    from proxy.observe.metrics import Timing
    from proxy.routing.router import Selection

    path = tmp_path / "access.log"
    loop = asyncio.new_event_loop()
    log = accesslog.AccessLog(loop, str(path))
    count = accesslog.FLUSH_LINES * 2 + 3  # two full batches, then what close() flushes
    try:
        for i in range(count):
            obs = Timing(10.0, "team-\u00e9")
            obs.t_body = 10.25 if i % 2 else 0.0
            # A real exchange (the compiled log reads its fields as struct members), never sent.
            ex = Exchange(None, b"POST", b'/v1/chat?q="x"\\%d' % i, [], b"", False, True, b"rid-%d" % i)
            ex.obs, ex.selection, ex.framer = obs, Selection([], b"", False), ResponseFramer(False)
            ex.selection.attempts = 1 + i % 3
            ex.framer.body_bytes = i
            obs.prompt_tokens, obs.completion_tokens = i, 2 * i
            log.write(ex, 200, 0, 10.5, 'model "quoted"\n', "" if i == 0 else "b1")
        assert len(path.read_bytes().splitlines()) == 2 * accesslog.FLUSH_LINES  # full batches went at once
    finally:
        log.close()
        loop.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == count
    assert list(lines[0]) == ["ts", "id", "tenant", "model", "backend", "attempts", "method", "path", "status",
                              "outcome", "ttft_ms", "total_ms", "prompt_tokens", "completion_tokens",
                              "cached_tokens", "bytes"]
    for i, line in enumerate(lines):
        assert line["id"] == f"rid-{i}" and line["path"] == f'/v1/chat?q="x"\\{i}'
        assert line["model"] == 'model "quoted"\n' and line["tenant"] == "team-\u00e9"
        assert line["backend"] == (None if i == 0 else "b1") and line["attempts"] == 1 + i % 3
        assert line["ttft_ms"] == (250.0 if i % 2 else None) and line["total_ms"] == 500.0
        assert (line["prompt_tokens"], line["completion_tokens"], line["bytes"]) == (i, 2 * i, i)
        assert line["outcome"] == "ok" and line["status"] == 200 and line["method"] == "POST"


def test_each_line_is_what_msgspec_writes_for_it(tmp_path):
    """Compiled, a line whose strings need no escaping is written in C: byte for byte the line
    msgspec writes for the same values (the rule, and the path of every other line)."""
    import asyncio
    import random

    import msgspec

    from _speedups import ResponseFramer
    from proxy.http.exchange import Exchange
    from proxy.observe import accesslog
    from proxy.observe.metrics import Timing
    from proxy.routing.router import Selection

    rng = random.Random(5)
    texts = ["default", "tiny", "org/model-7b", "b1", "", 'q"uote', "back\\slash", "tab\t", "é", "日本", "\x7f",
             # past the C check's first eight bytes: a byte to escape (or not ASCII) further in
             "org/a-long-model-name", "x" * 9 + '"', "0123456789abcdef\\z", "long-long-namé", "sixteen-bytes-ok\x1f",
             "eight-ok\x7f", "0123456789\"bcdefgh", "0123456789\\bcdefgh", "0123456789a\x1fcdefg", "0123456789ab\x7fdefg"]
    loop = asyncio.new_event_loop()
    log = accesslog.AccessLog(loop, str(tmp_path / "access.log"))
    plain = 0
    try:
        for i in range(3000):
            t0 = rng.choice([10.0, 12345.678901, 1e6 + rng.random()])
            obs = Timing(t0, rng.choice(texts))
            obs.t_body = rng.choice([0.0, t0 + rng.random() * rng.choice([1e-6, 1e-3, 1, 1e3]), t0 - 1e-3])
            now = t0 + rng.random() * rng.choice([1e-6, 1e-3, 1, 1e4, 1e7])
            target = rng.choice([b"/v1/chat/completions", b"/v1/completions?x=1", b'/q"x', b"/\\", b"/\xc3\xa9",
                                 b"/v1/completions\xff?x=1"])
            ex = Exchange(None, b"POST", target, [], b"", False, True, rng.choice([b"rid-1", b"req_\xff", b"a\"b"]))
            ex.obs, ex.selection, ex.framer = obs, Selection([], b"", False), rng.choice([ResponseFramer(False), None])
            ex.selection.attempts = rng.randrange(4)
            if ex.framer is not None:
                ex.framer.body_bytes = rng.randrange(10**7)
            tokens = (rng.randrange(10**5), rng.randrange(10**5), rng.randrange(10**3))
            obs.prompt_tokens, obs.completion_tokens, obs.cached_tokens = tokens
            model, backend = rng.choice(texts), rng.choice(texts + [None])
            outcome = rng.randrange(len(accesslog.OUTCOMES))
            log.write(ex, rng.choice([200, 404, 503, 0]), outcome, now, model, backend)
            line = bytes(log.buf[:log.used])  # this line alone: taken off the buffer, never flushed
            log.used = log.lines = 0
            ts = json.loads(line)["ts"]
            t_body = obs.t_body
            expected = msgspec.json.encode(accesslog.Line(
                ts, ex.request_id.decode("utf-8", "replace"), obs.tenant, model, backend or None,
                ex.selection.attempts, "POST", target.decode("utf-8", "replace"), json.loads(line)["status"],
                accesslog.OUTCOMES[outcome], accesslog._ms(t_body - t0) if t_body > 0.0 else None,
                accesslog._ms(now - t0), *tokens, ex.framer.body_bytes if ex.framer is not None else 0,
            )) + b"\n"
            assert line == expected
            plain += b"\\" not in line and b"\\u" not in line
    finally:
        log.close()
        loop.close()
    assert plain > 150  # many lines took the plain path (compiled: the C writer)


def test_long_lines_flush_the_buffer_first_and_keep_their_order(tmp_path):
    """Lines msgspec writes (a model name to escape) longer than the buffer has left: what is
    buffered goes out first; one longer than the whole buffer is written alone, in its place."""
    import asyncio

    from _speedups import ResponseFramer
    from proxy.http.exchange import Exchange
    from proxy.observe import accesslog
    from proxy.observe.metrics import Timing
    from proxy.routing.router import Selection

    path = tmp_path / "access.log"
    loop = asyncio.new_event_loop()
    log = accesslog.AccessLog(loop, str(path))
    sizes = [10, accesslog.BUFFER // 3, accesslog.BUFFER // 2, 10, accesslog.BUFFER + 5, 10, 10]
    try:
        for i, size in enumerate(sizes):
            ex = Exchange(None, b"POST", b"/v1/chat/completions", [], b"", False, True, b"rid-%d" % i)
            ex.obs, ex.selection, ex.framer = Timing(10.0), Selection([], b"", False), ResponseFramer(False)
            log.write(ex, 200, 0, 10.5, '"' + "m" * size, "b1")
            assert log.used <= accesslog.BUFFER
        written = len(path.read_bytes().splitlines()) if path.exists() else 0
        assert written == 5  # the two long ones pushed out what was before them, and themselves
    finally:
        log.close()
        loop.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"rid-{i}" for i in range(len(sizes))]
    assert [len(line["model"]) - 1 for line in lines] == sizes


def test_integers_of_every_length_are_written_as_msgspec_writes_them(tmp_path):
    import asyncio

    import msgspec

    from _speedups import ResponseFramer
    from proxy.http.exchange import Exchange
    from proxy.observe import accesslog
    from proxy.observe.metrics import Timing
    from proxy.routing.router import Selection

    loop = asyncio.new_event_loop()
    log = accesslog.AccessLog(loop, str(tmp_path / "access.log"))
    try:
        for v in [0, 1, 9] + [10**k + d for k in range(1, 19) for d in (-1, 0, 1)] + [2**63 - 1]:
            ex = Exchange(None, b"POST", b"/x", [], b"", False, True, b"r")
            ex.obs, ex.selection, ex.framer = Timing(10.0), Selection([], b"", False), ResponseFramer(False)
            ex.framer.body_bytes = v
            ex.obs.prompt_tokens, ex.obs.completion_tokens, ex.obs.cached_tokens = v, -v // 2, 7
            log.write(ex, 200, 0, 10.5, "m", "b")
            line = bytes(log.buf[:log.used])
            log.used = log.lines = 0
            for key, want in (("bytes", v), ("prompt_tokens", v), ("completion_tokens", -v // 2)):
                assert b'"%s":%s' % (key.encode(), msgspec.json.encode(want)) in line, (v, line)
    finally:
        log.close()
        loop.close()


def test_a_line_that_repeats_the_last_ones_labels_is_still_its_own(tmp_path):
    """Compiled, a line whose tenant, model, backend, route, attempts, status and outcome are
    the last line's copies that middle whole: each line must still be what msgspec writes for
    it, whichever of those changes from line to line, and after a line the C writer refused
    part way (a string to escape)."""
    import asyncio
    import random

    import msgspec

    from _speedups import ResponseFramer
    from proxy.http.exchange import Exchange
    from proxy.observe import accesslog
    from proxy.observe.metrics import Timing
    from proxy.routing.router import Selection

    rng = random.Random(11)
    tenants, models, backends = ["default", "t2"], ["tiny", "big", 'q"uote'], ["b1", "b2", None, "tab\t"]
    paths = [b"/v1/chat/completions", b"/v1/completions", b"/v1/chat/completion"]
    loop = asyncio.new_event_loop()
    log = accesslog.AccessLog(loop, str(tmp_path / "access.log"))
    choices = [tenants, models, backends, range(3), paths, [200, 503], range(len(accesslog.OUTCOMES))]
    last = [values[0] for values in choices]
    repeats = 0
    try:
        for i in range(4000):
            if rng.random() < 0.3:  # one of the labels changes; else the line repeats the last one's
                which = rng.randrange(len(choices))
                last[which] = rng.choice(choices[which])
            else:
                repeats += 1
            tenant, model, backend, attempts, path, status, outcome = last
            obs = Timing(10.0, tenant)
            ex = Exchange(None, b"POST", bytes(bytearray(path)), [], b"", False, True, b"rid-%d" % i)  # a new object
            ex.obs, ex.selection, ex.framer = obs, Selection([], b"", False), ResponseFramer(False)
            ex.selection.attempts = attempts
            log.write(ex, status, outcome, 10.5, model, backend)
            line = bytes(log.buf[:log.used])
            log.used = log.lines = 0
            expected = msgspec.json.encode(accesslog.Line(
                json.loads(line)["ts"], "rid-%d" % i, tenant, model, backend, attempts, "POST", path.decode(),
                status, accesslog.OUTCOMES[outcome], None, 500.0, 0, 0, 0, 0,
            )) + b"\n"
            assert line == expected, (i, last)
    finally:
        log.close()
        loop.close()
    assert repeats > 2400
