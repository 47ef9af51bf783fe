"""The simulator as a loaded vLLM: in-band load reports, the load gauges, the KV cache in
blocks, and time that depends on the batch.

Each rule is held against what a real vLLM 0.32 (CPU build) was seen doing:
../shared/vllm-api.md ("Load without scraping", "Metrics routers use"),
../shared/realvllm/README.md (full 128-token blocks, speed) and the recordings in
tests/realvllm/recorded/. Timing assertions are lower bounds where the model promises a
wait, and leave wide margins where they promise none, so a busy machine does not fail them.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from proxy.sim import SimConfig
from proxy.sim.cli import parse_args
from proxy.sim.engine import Blocks, KVCache
from realvllm.compare import parse
from test_sim import (SimThread, connect, metric, metrics, raw_request, read_until, request,
                      wait_for, words)  # the simulator tests' clients, shared

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests" / "realvllm" / "recorded" / "details"
LOAD = "endpoint-load-metrics"
ASK = "endpoint-load-metrics-format"


@pytest.fixture(scope="module")
def sim():
    s = SimThread(SimConfig(port=0, max_model_len=1024))
    yield s
    s.stop()


@pytest.fixture
def make_sim():
    started: list[SimThread] = []

    def make(**kw) -> SimThread:
        started.append(SimThread(SimConfig(port=0, **kw)))
        return started[-1]

    yield make
    for s in started:
        s.stop()


def text(waiting: float, kv: float) -> str:
    return (f"TEXT named_metrics.num_requests_waiting={waiting!r}, "
            f"named_metrics.kv_cache_usage_perc={kv!r}")


def recorded_header(name: str) -> str:
    return dict(parse((RECORDED / f"{name}.http").read_bytes())[1])[LOAD]


CHAT = ("/v1/chat/completions", {"model": "tiny", "max_tokens": 2,
                                  "messages": [{"role": "user", "content": "hi there"}]})
CMPL = ("/v1/completions", {"model": "tiny", "prompt": "one two three", "max_tokens": 2})


def hold(port, body, path="/v1/completions"):
    """A connection whose request takes a running slot and its blocks until closed."""
    s = connect(port)
    s.sendall(raw_request(path, body, {"x-sim-fault": "hang"}))
    return s


# -- in-band load: the ORCA header -------------------------------------------------------------


@pytest.mark.parametrize("path, body", [CHAT, CMPL], ids=["chat", "completions"])
@pytest.mark.parametrize("fmt, case", [("text", "load_text"), ("json", "load_json"),
                                       ("JSON", "load_json"), ("Text", "load_text")])
@pytest.mark.parametrize("timed", [False, True], ids=["at-once", "timed"])
def test_in_band_load_on_non_streaming_answers(sim, path, body, fmt, case, timed):
    """An idle server reports exactly what the recorded vLLM sent, in either format."""
    headers = {ASK: fmt, **({"x-sim-ttft": "0.01", "x-sim-itl": "0.005"} if timed else {})}
    status, got, _ = request(sim.port, "POST", path, body, headers)
    assert status == 200
    assert got[LOAD] == recorded_header(case)


def test_the_recorded_idle_reports():
    """What the recorded vLLM said, idle: the rules above compare against these bytes."""
    assert recorded_header("load_text") == text(0.0, 0.0)
    assert recorded_header("load_json") == ('JSON {"named_metrics": {"num_requests_waiting": '
                                            '0.0, "kv_cache_usage_perc": 0.0}}')


@pytest.mark.parametrize("path, body", [CHAT, CMPL], ids=["chat", "completions"])
@pytest.mark.parametrize("timed", [False, True], ids=["at-once", "timed"])
def test_no_in_band_load_on_a_stream(sim, path, body, timed):
    """vLLM 0.32 sends the header on whole answers only (recorded: load_stream)."""
    assert LOAD not in dict(parse((RECORDED / "load_stream.http").read_bytes())[1])
    headers = {ASK: "text", **({"x-sim-itl": "0.005"} if timed else {})}
    with connect(sim.port) as s:
        s.sendall(raw_request(path, {**body, "stream": True}, headers))
        data = read_until(s, lambda b: b.endswith(b"\r\n0\r\n\r\n"))
    head = data.partition(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 200") and "transfer-encoding: chunked" in head
    assert LOAD not in head


@pytest.mark.parametrize("method, path, body, headers", [
    ("POST", *CHAT, {}),  # not asked for
    ("POST", *CHAT, {ASK: "xml"}),  # a format vLLM does not know: no header, no error
    ("POST", *CHAT, {ASK: ""}),
    ("POST", "/v1/completions", {"model": "big", "prompt": "x"}, {ASK: "text"}),  # 404
    ("POST", "/v1/completions", {"model": "tiny"}, {ASK: "text"}),  # 400
    ("GET", "/v1/models", None, {ASK: "text"}),
    ("POST", "/tokenize", {"model": "tiny", "prompt": "a b"}, {ASK: "text"}),
])
def test_no_in_band_load_otherwise(sim, method, path, body, headers):
    status, got, _ = request(sim.port, method, path, body, headers)
    assert LOAD not in got, (status, got)


def test_in_band_load_is_the_state_when_the_answer_leaves(make_sim):
    """One slot, three requests: each answer reports the queue as it is when it leaves.

    As on vLLM (seen with --max-num-seqs 2 and four requests: 2.0, 1.0, 0.0, 0.0), the
    finished request no longer holds blocks, and the requests it makes room for still
    count as waiting: the engine admits them after it, not before.
    """
    s = make_sim(max_concurrency=1)
    answers = {}

    def ask(name):
        answers[name] = request(s.port, "POST", CHAT[0], CHAT[1],
                                {ASK: "text", "x-sim-ttft": "0.5"})[1][LOAD]

    threads = []
    for name, gauge, value in (("a", "running", 1), ("b", "waiting", 1), ("c", "waiting", 2)):
        threads.append(threading.Thread(target=ask, args=(name,)))
        threads[-1].start()  # and in that order: each arrives before the next is sent
        assert wait_for(lambda g=gauge, v=value: metric(s.port, f"vllm:num_requests_{g}") == v)
    for t in threads:
        t.join(5)
    assert answers == {"a": text(2.0, 0.0), "b": text(1.0, 0.0), "c": text(0.0, 0.0)}


def test_in_band_kv_usage_is_the_share_of_blocks_running_requests_hold(make_sim):
    s = make_sim(block_size=4, cache_blocks=11)  # 10 usable blocks (one is vLLM's null block)
    with hold(s.port, {"model": "tiny", "prompt": words(8), "max_tokens": 4}):
        assert wait_for(lambda: metric(s.port, "vllm:num_requests_running") == 1)
        kv = 1 - 8 / 10  # the holder's 2 prompt blocks, computed as vLLM computes it
        status, got, _ = request(s.port, "POST", "/v1/completions",
                                 {"prompt": words(6, 100), "max_tokens": 1}, {ASK: "json"})
        assert status == 200
        assert json.loads(got[LOAD].removeprefix("JSON ")) == {
            "named_metrics": {"num_requests_waiting": 0.0, "kv_cache_usage_perc": kv}}
        assert metric(s.port, "vllm:kv_cache_usage_perc") == kv  # the scrape agrees
    assert wait_for(lambda: metric(s.port, "vllm:kv_cache_usage_perc") == 0.0)


# -- the gauges routers scrape -----------------------------------------------------------------


def test_load_gauges_track_requests_in_flight(make_sim):
    s = make_sim(max_concurrency=2, block_size=4)
    body = {"model": "tiny", "prompt": words(10), "max_tokens": 40, "stream": True}
    socks = []
    for i in range(3):
        socks.append(connect(s.port))
        socks[-1].sendall(raw_request("/v1/completions", {**body, "prompt": words(10, 20 * i)},
                                      {"x-sim-itl": "0.02"}))
    try:
        base = '{engine="0",model_name="tiny"}'  # the labels of tests/data/vllm/metrics.txt
        assert wait_for(lambda: metrics(s.port)["vllm:num_requests_running" + base] == 2)
        m = metrics(s.port)
        assert m["vllm:num_requests_waiting" + base] == 1  # the batch is full: one queues
        first = m["vllm:kv_cache_usage_perc" + base]
        assert first >= 1 - (4095 - 6) / 4095  # two prompts of 3 blocks each, at least
        # The replies fill blocks as they are generated: usage grows while they run.
        assert wait_for(lambda: metric(s.port, "vllm:kv_cache_usage_perc") > first, 2.0)
        for sock in socks:
            read_until(sock, lambda b: b.endswith(b"\r\n0\r\n\r\n"))
    finally:
        for sock in socks:
            sock.close()
    assert wait_for(lambda: metric(s.port, "vllm:num_requests_running") == 0)
    m = metrics(s.port)
    assert m["vllm:num_requests_waiting" + base] == 0
    assert m["vllm:kv_cache_usage_perc" + base] == 0.0


def test_a_handful_in_flight_is_a_batch_not_a_queue(make_sim):
    """vLLM runs hundreds of sequences at once (--max-num-seqs 256 on GPUs, 128 on CPU)."""
    s = make_sim()
    socks = [hold(s.port, {"model": "tiny", "prompt": words(30, 50 * i), "max_tokens": 100})
             for i in range(8)]
    try:
        assert wait_for(lambda: metric(s.port, "vllm:num_requests_running") == 8)
        assert metric(s.port, "vllm:num_requests_waiting") == 0
        assert 0 < metric(s.port, "vllm:kv_cache_usage_perc") < 0.05
    finally:
        for sock in socks:
            sock.close()


# -- the KV cache, in blocks -------------------------------------------------------------------


def test_requests_wait_for_kv_blocks_as_well_as_for_slots(make_sim):
    s = make_sim(block_size=4, cache_blocks=9)  # 8 usable blocks, 256 slots
    # 20 prompt tokens (5 blocks) and a reply of 4 (1 block, reserved): 2 blocks stay free.
    with hold(s.port, {"model": "tiny", "prompt": words(20), "max_tokens": 4}) as holder:
        assert wait_for(lambda: metric(s.port, "vllm:num_requests_running") == 1)
        with connect(s.port) as queued:  # needs 3 blocks: it waits with slots to spare
            queued.sendall(raw_request("/v1/completions", {
                "model": "tiny", "prompt": words(8, 100), "max_tokens": 4}))
            assert wait_for(lambda: metric(s.port, "vllm:num_requests_waiting") == 1)
            assert metric(s.port, "vllm:num_requests_running") == 1
            assert metric(s.port, "vllm:kv_cache_usage_perc") == 1 - 3 / 8
            holder.close()  # its blocks are free again: the waiter runs
            answer = read_until(queued, lambda b: b"\r\n\r\n{" in b and b.endswith(b"}"))
            assert answer.startswith(b"HTTP/1.1 200 ")
    assert metric(s.port, "vllm:num_requests_waiting") == 0


def test_the_oldest_waiter_is_not_passed(make_sim):
    s = make_sim(block_size=4, cache_blocks=9)
    with hold(s.port, {"model": "tiny", "prompt": words(20), "max_tokens": 4}):
        assert wait_for(lambda: metric(s.port, "vllm:num_requests_running") == 1)
        big = connect(s.port)  # 3 blocks: does not fit
        big.sendall(raw_request("/v1/completions", {"model": "tiny", "prompt": words(8, 100),
                                                    "max_tokens": 4}))
        assert wait_for(lambda: metric(s.port, "vllm:num_requests_waiting") == 1)
        small = connect(s.port)  # 1 block would fit, but it came later
        small.sendall(raw_request("/v1/completions", {"model": "tiny", "prompt": "x",
                                                      "max_tokens": 1}))
        assert wait_for(lambda: metric(s.port, "vllm:num_requests_waiting") == 2)
        assert metric(s.port, "vllm:num_requests_running") == 1
    for sock in (big, small):
        assert read_until(sock, lambda b: b"\r\n\r\n{" in b and b.endswith(b"}")).startswith(
            b"HTTP/1.1 200 ")
        sock.close()


def test_kv_cache_counts_held_blocks_and_reserves_the_reply():
    kv = KVCache(block_size=4, capacity=10)
    prompt = words(6).split()  # one full block and a partial one
    b = Blocks()
    assert kv.allocate(b, kv.names(prompt), 6, 10)  # 16 tokens in all: 4 blocks, 2 later
    assert (kv.used, b.pending, kv.usage()) == (2, 2, 1 - 8 / 10)
    kv.grow(b, 6 + 1)  # the reply's first token fits in the partial block
    assert kv.used == 2
    kv.grow(b, 6 + 3)
    assert kv.used == 3
    assert not kv.allocate(Blocks(), [], 28, 0)  # 7 blocks: 7 are free, 1 is b's reserve
    kv.free(b)  # the prompt's full block keeps its content, the rest is plain free space
    assert (kv.used, kv.usage(), len(kv)) == (0, 0.0, 1)
    assert kv.allocate(Blocks(), [], 28, 0)


def test_kv_cache_never_evicts_blocks_running_requests_hold():
    kv = KVCache(block_size=2, capacity=4)
    a = words(4).split()
    held, b, again = Blocks(), Blocks(), Blocks()
    assert kv.allocate(held, kv.names(a), 4, 0)
    assert not kv.allocate(Blocks(), kv.names(words(6, 50).split()), 6, 0)  # 3 blocks, 2 free
    assert kv.allocate(b, kv.names(words(4, 50).split()), 4, 0)  # 2 blocks: the free ones
    assert kv.used == 4
    # a second request with a's prefix shares its held blocks (counted once) ...
    assert kv.allocate(again, kv.names(a + ["x"]), 5, 0, force=True)
    assert again.hit_tokens == 4
    kv.free(held)
    kv.free(again)
    kv.free(b)
    # ... and once free, a's blocks (freed last, so evicted last) are still there.
    assert kv.lookup_insert(a + ["y"]) == (4, 0)


def test_shared_prefix_blocks_are_held_once():
    kv = KVCache(block_size=4, capacity=100)
    system = words(8).split()  # two full blocks every request starts with
    first, second = Blocks(), Blocks()
    assert kv.allocate(first, kv.names(system + ["q1"]), 9, 0)
    assert kv.allocate(second, kv.names(system + ["q2"]), 9, 0)
    assert second.hit_tokens == 8
    assert kv.used == 2 + 1 + 1  # the shared two, and each one's partial block
    kv.free(first)
    assert kv.used == 3  # the shared blocks stay held by the second
    kv.free(second)
    assert kv.used == 0 and len(kv) == 2


def test_kv_cache_books_balance_under_random_traffic():
    """Blocks are never lost or doubled: never used + free + held = capacity, always."""
    import random

    rng = random.Random(7)
    kv = KVCache(block_size=4, capacity=40)
    prefixes = [words(rng.randrange(0, 24), 1000 * k).split() for k in range(4)]
    live: list[tuple[Blocks, int]] = []
    for _ in range(3000):
        if live and rng.random() < 0.45:
            b, prompt = live.pop(rng.randrange(len(live)))
            kv.grow(b, prompt + rng.randrange(0, 12))
            kv.free(b)
        else:
            tokens = rng.choice(prefixes) + words(rng.randrange(1, 10), rng.randrange(99)).split()
            b = Blocks()
            if kv.allocate(b, kv.names(tokens), len(tokens), rng.randrange(1, 12),
                           force=not live):
                live.append((b, len(tokens)))
                kv.grow(b, len(tokens) + rng.randrange(0, 6))
        assert kv._never + kv._free_blocks + kv.used == kv.capacity
        assert kv._pending == sum(b.pending for b, _ in live) and 0.0 <= kv.usage() <= 1.0
        assert sum(kv._free.values()) == kv._free_blocks
        assert all((ref == 0) == (name in kv._free) for name, ref in kv._cached.items())
    for b, _ in live:
        kv.free(b)
    assert (kv.used, kv._pending, kv.usage()) == (0, 0, 0.0)


@pytest.mark.parametrize("prompt_words, hits", [
    (127, 0),  # no full block: a partial block is never a hit
    (128, 0),  # one full block, but it holds the last token, which vLLM always computes
    (129, 128),
    (300, 256),  # 2 full blocks (seen on the live vLLM: 300 tokens twice, 256 hits)
    (674, 640),  # the recorded chat_long_again: 674 prompt tokens, 640 cached
])
def test_prefix_cache_hits_only_full_128_token_blocks(make_sim, prompt_words, hits):
    """As vLLM's CPU build: --block-size 128; hits and queries counted in tokens."""
    s = make_sim(block_size=128, prompt_tokens_details=True, max_model_len=2048)
    body = {"model": "tiny", "prompt": words(prompt_words), "max_tokens": 1}
    request(s.port, "POST", "/v1/completions", body)
    raw = request(s.port, "POST", "/v1/completions", body)[2]
    assert json.loads(raw)["usage"]["prompt_tokens_details"]["cached_tokens"] == hits
    assert metric(s.port, "vllm:prefix_cache_hits_total") == hits
    assert metric(s.port, "vllm:prefix_cache_queries_total") == 2 * prompt_words


def test_the_recorded_vllm_cached_whole_128_token_blocks():
    """The fact the test above mirrors, read off the recording."""
    _, _, body, _ = parse((RECORDED / "chat_long_again.http").read_bytes())
    usage = json.loads(body)["usage"]
    assert (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]) == (674, 640)


# -- time that depends on the batch ------------------------------------------------------------


def token_times(port, body, headers=None, path="/v1/completions"):
    """Seconds from sending to each received content event of a stream."""
    times = []
    with connect(port) as s:
        start = time.monotonic()
        s.sendall(raw_request(path, {**body, "stream": True}, headers))
        buf = b""
        while not buf.endswith(b"\r\n0\r\n\r\n"):
            data = s.recv(65536)
            if not data:
                break
            buf += data
            times += [time.monotonic() - start] * data.count(b'"text":')
    return times


def test_itl_per_seq_slows_every_token_and_the_first_with_the_batch(make_sim):
    s = make_sim(itl_per_seq=0.03)
    body = {"model": "tiny", "prompt": "one two", "max_tokens": 3}
    alone = token_times(s.port, body, {"x-sim-itl": "0.01"})
    assert len(alone) == 3
    socks = [hold(s.port, {"model": "tiny", "prompt": f"h{i}", "max_tokens": 2})
             for i in range(4)]
    try:
        assert wait_for(lambda: metric(s.port, "vllm:num_requests_running") == 4)
        busy = token_times(s.port, body, {"x-sim-itl": "0.01"})
    finally:
        for sock in socks:
            sock.close()
    # Four others run: the first token waits 4 x 0.03 s, each next one 0.01 + 4 x 0.03 s.
    assert busy[0] >= 0.12 and busy[-1] - busy[0] >= 2 * 0.13 - 0.01
    assert alone[-1] < busy[-1] - 0.2


def test_without_batching_flags_time_ignores_the_batch(make_sim):
    s = make_sim()
    socks = [hold(s.port, {"model": "tiny", "prompt": f"h{i}", "max_tokens": 2})
             for i in range(4)]
    try:
        assert wait_for(lambda: metric(s.port, "vllm:num_requests_running") == 4)
        busy = token_times(s.port, {"model": "tiny", "prompt": "a", "max_tokens": 3},
                           {"x-sim-itl": "0.01"})
    finally:
        for sock in socks:
            sock.close()
    assert busy[-1] < 0.3  # 0.02 s of tokens (0.38 s with itl_per_seq 0.03); the margin
    # is for a busy machine


# uvloop's timers count whole milliseconds from a cached loop time: a simulated 0.4 s can end up
# to a millisecond early by the client's clock (CI once read 0.39998 s).
EARLY = 0.002


def _prefill_during_a_stream(s):
    """A stream runs; an uncached 50-token prompt (0.4 s of prefill) arrives meanwhile."""
    out = {}

    def stream():
        out["stream"] = token_times(s.port, {"model": "tiny", "prompt": "a", "max_tokens": 60},
                                    {"x-sim-itl": "0.01", "x-sim-prefill-per-token": "0"})

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.15)
    out["prefill"] = token_times(s.port, {"model": "tiny", "prompt": words(50), "max_tokens": 1})
    t.join(5)
    gaps = [b - a for a, b in zip(out["stream"], out["stream"][1:])]
    return out["prefill"][0], max(gaps)


def test_shared_prefill_pauses_running_streams(make_sim):
    ttft, gap = _prefill_during_a_stream(make_sim(shared_prefill=True, prefill_per_token=0.008))
    assert ttft >= 0.4 - EARLY and gap >= 0.39


def test_without_shared_prefill_a_prefill_pauses_nobody(make_sim):
    ttft, gap = _prefill_during_a_stream(make_sim(prefill_per_token=0.008))
    assert ttft >= 0.4 - EARLY and gap < 0.25


@pytest.mark.parametrize("shared", [True, False])
def test_shared_prefill_makes_prefills_take_turns(make_sim, shared):
    s = make_sim(shared_prefill=shared, prefill_per_token=0.008)
    done, own = {}, {}
    start = time.monotonic()

    def one(i):
        own[i] = token_times(s.port, {"model": "tiny", "prompt": words(50, 100 * i),
                                      "max_tokens": 1})[0]
        done[i] = time.monotonic() - start  # the answer is in: later than its first token

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    if shared:
        assert max(done.values()) >= 0.8 - EARLY  # 0.4 s each, one after the other
    else:
        assert max(own.values()) < 0.65  # side by side: 0.4 s each

# -- flags -------------------------------------------------------------------------------------


def test_cli_batching_flags():
    cfg = parse_args(["--max-num-seqs", "128", "--itl-per-seq", "0.0001", "--shared-prefill",
                      "--block-size", "128", "--cache-blocks", "4096"])
    assert (cfg.max_concurrency, cfg.itl_per_seq, cfg.shared_prefill, cfg.block_size,
            cfg.cache_blocks) == (128, 0.0001, True, 128, 4096)
    assert parse_args(["--max-concurrency", "6"]).max_concurrency == 6
    d = parse_args([])
    assert (d.max_concurrency, d.itl_per_seq, d.shared_prefill) == (256, 0.0, False)
    for bad in (["--itl-per-seq", "-1"], ["--cache-blocks", "1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
