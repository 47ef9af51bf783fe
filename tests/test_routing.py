"""Routing end to end: several simulators behind the proxy; clusters, policies, health, retries,
fallback (to a second pool and to a TLS "external provider"), stickiness, drains."""

import asyncio
import concurrent.futures
import datetime
import http.client
import json
import random
import socket
import ssl
import threading
import time

import openai
import pytest

from conftest import ScriptedBackend, free_port, metric, metrics, raw_exchange, start_proxy, start_sim, wait_for

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello fleet"}], "max_tokens": 4}


def write_config(tmp_path, cfg):
    path = tmp_path / "routing.json.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return str(path)


# Stickiness tests keep every backend up: on a starved CI machine a health probe may take
# longer than the default 1 s timeout, and a backend wrongly marked down moves its keys.
STEADY_HEALTH = {"timeout": 5.0, "unhealthy_threshold": 5}


def proxy_with(tmp_path, cfg, env=None):
    return start_proxy([], "--config", write_config(tmp_path, cfg), env=env)


def post(port, body, headers=None, path="/v1/chat/completions", timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body).encode(), {"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.getheader("x-sim-backend"), resp.read()
    finally:
        conn.close()


ADMIN_TOKEN = "test-admin-token-0123456789"  # admin POSTs need it (tests/test_admin_security.py)


def admin_post(proxy, path):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=5)
    conn.request("POST", path, b"", {"content-length": "0", "authorization": f"Bearer {ADMIN_TOKEN}"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, json.loads(body)


def backends(proxy):
    return {b["name"]: b for b in proxy.admin("/admin/backends")[1]["backends"]}


def eligible(proxy, name):
    entry = backends(proxy)[name]
    return all(w["eligible"] for w in entry["workers"]) if "workers" in entry else entry["eligible"]


FAST_HEALTH = {"interval": 0.2, "timeout": 0.5, "healthy_threshold": 2, "unhealthy_threshold": 2}


@pytest.fixture
def sims():
    started = []

    def start(n, *extra, prefix="s"):
        out = [start_sim("--name", f"{prefix}{i}", *extra) for i in range(n)]
        started.extend(out)
        return out

    yield start
    for s in started:
        s.stop()


# -- in-flight accounting ---------------------------------------------------------------------------


def test_in_flight_returns_to_zero_after_1000_client_aborts(tmp_path, sims):
    ss = sims(2, "--ttft", "0.03", "--itl", "0.005")
    proxy = proxy_with(tmp_path, {"backends": [s.url for s in ss], "balance": {"policy": "least_request"}})
    try:
        rng = random.Random(5)

        def abort(i):
            stream = i % 2 == 0
            body = json.dumps({**CHAT, "stream": stream, "max_tokens": 20}).encode()
            head = (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(body)
            )
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            try:
                if i % 10 == 0:
                    s.sendall(head + body[: len(body) // 2])  # leaves during the request body
                else:
                    s.sendall(head + body)
                time.sleep(rng.random() * 0.09)  # before the first token, mid-stream, or after
                if i % 3 == 0 and i % 10:
                    s.recv(100)  # at least the response head (or the first token) arrived
            finally:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()  # RST: the client is gone

        with concurrent.futures.ThreadPoolExecutor(48) as pool:
            list(pool.map(abort, range(1000)))
        aborted = sum(metric(s.url, "sim:requests_aborted_total") for s in ss)
        assert aborted > 100  # the aborts really reached the backends mid-request

        def settled():
            bs = backends(proxy).values()
            return all(b["in_flight"] == 0 for b in bs)

        assert wait_for(settled, timeout=10, interval=0.1), backends(proxy)
        assert sum(b["requests"] for b in backends(proxy).values()) >= 800
        # And the proxy still balances: both backends take new requests. Sequential requests
        # find both idle, a tie least_request breaks at random: 40 leave one backend unused
        # once in 2^39 runs (10 did once in 512, and CI saw it).
        got = {post(proxy.port, CHAT)[1] for _ in range(40)}
        assert got == {"s0", "s1"}, (got, backends(proxy))
    finally:
        proxy.stop()


# -- failures, health, retries ----------------------------------------------------------------------


def test_killed_backend_traffic_moves_without_client_errors_then_rejoins(tmp_path, sims):
    ports = [free_port() for _ in range(3)]
    ss, proxy, revived = [], None, None
    try:  # every process it starts is stopped, even when the proxy fails to start
        ss = [start_sim("--name", f"k{i}", "--ttft", "0.02", port=p) for i, p in enumerate(ports)]
        proxy = proxy_with(
            tmp_path,
            {
                "backends": [s.url for s in ss],
                "balance": {"policy": "round_robin"},
                "health": FAST_HEALTH,
                "outlier": {"consecutive_failures": 2, "base_ejection": 0.5},
                "retry": {"min_per_second": 100},
                "timeouts": {"connect": 0.5},
            },
        )
        stop = threading.Event()
        results = []

        def client(stream):
            while not stop.is_set():
                try:
                    status, served, body = post(proxy.port, {**CHAT, "max_tokens": 3, "stream": stream})
                except http.client.IncompleteRead:
                    continue  # a stream that had started when its backend died: broken, as it must be
                results.append((time.monotonic(), status, served, body[:200]))

        # Half stream: when the backend dies some of them are still in prefill (no byte sent yet),
        # and those must be retried elsewhere like the non-streaming ones.
        threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        ss[1].kill()  # SIGKILL: in-flight requests see a reset before any response byte
        killed_at = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        errors = [r for r in results if r[1] != 200]
        assert not errors, errors[:5]
        after = [served for at, _, served, _ in results if at > killed_at + 1.0]
        assert after and "k1" not in after and {"k0", "k2"} <= set(after)
        assert wait_for(lambda: not eligible(proxy, ss[1].url.split("//")[1]), timeout=3)

        revived = start_sim("--name", "k1", "--ttft", "0.02", port=ports[1])
        assert wait_for(lambda: eligible(proxy, ss[1].url.split("//")[1]), timeout=10, interval=0.1)
        served = {post(proxy.port, CHAT)[1] for _ in range(9)}
        assert served == {"k0", "k1", "k2"}
    finally:
        if proxy is not None:
            proxy.stop()
        for s in ss + ([revived] if revived else []):
            s.stop()


def always(status):
    body = json.dumps({"error": {"message": "busy", "type": "x", "param": None, "code": status}}).encode()
    response = (
        b"HTTP/1.1 %d Busy\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)
    )
    return lambda req, sock: sock.sendall(response)


def test_retry_budget_holds_during_an_outage(tmp_path):
    a, b = ScriptedBackend(always(503)), ScriptedBackend(always(503))
    proxy = proxy_with(
        tmp_path,
        {
            "backends": [a.url, b.url],
            "retry": {"budget": 0.2, "min_per_second": 0, "attempts": 3},
            "outlier": {"consecutive_failures": 0},
        },
    )
    try:
        statuses = [post(proxy.port, CHAT)[0] for _ in range(100)]
        assert statuses == [503] * 100  # the last answer passes through when no retry is left
        upstream = len(a.requests) + len(b.requests)
        assert 110 <= upstream <= 121, upstream  # about 20% extra, never more
    finally:
        proxy.stop()
        a.close()
        b.close()


def test_429_and_503_are_retried_on_another_backend(tmp_path, sims):
    busy = ScriptedBackend(always(429))
    down = ScriptedBackend(always(503))
    (ok,) = sims(1)
    proxy = proxy_with(
        tmp_path,
        {
            "backends": [busy.url, down.url, ok.url],
            "balance": {"policy": "round_robin"},
            "retry": {"min_per_second": 1000},
            "outlier": {"consecutive_failures": 0},
        },
    )
    try:
        for _ in range(12):
            status, served, _ = post(proxy.port, CHAT)
            assert (status, served) == (200, "s0")
        assert busy.requests and down.requests
    finally:
        proxy.stop()
        busy.close()
        down.close()


def dead_url():
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_fallback_to_a_second_cluster(tmp_path, sims):
    (spare,) = sims(1, prefix="spare")
    proxy = proxy_with(
        tmp_path,
        {
            "clusters": [
                {"name": "main", "models": ["tiny"], "backends": [dead_url(), dead_url()], "fallback": ["spare"]},
                {"name": "spare", "models": ["spare-model"], "backends": [spare.url]},
            ],
            "outlier": {"consecutive_failures": 1, "base_ejection": 30},
            "retry": {"min_per_second": 1000},
        },
    )
    try:
        for _ in range(6):
            status, served, body = post(proxy.port, CHAT)
            assert (status, served) == (200, "spare0"), body
        clusters = {c["name"]: c for c in proxy.admin("/admin/backends")[1]["clusters"]}
        # Ejection is capped at a share of the cluster; the active checks take the rest out later.
        assert len(clusters["main"]["eligible"]) < 2
    finally:
        proxy.stop()


# -- TLS to an external provider ------------------------------------------------------------------------


def make_cert(tmp_path, name):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "provider.pem", tmp_path / "provider.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


class TLSFront:
    """A TLS terminator on a thread, in front of a simulator: the "external provider". It
    records the SNI names it was asked for and every plaintext byte the proxy sent."""

    def __init__(self, cert, key, upstream_port):
        self.sni = []
        self.received = b""
        self.upstream_port = upstream_port
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.sni_callback = lambda sock, name, c: self.sni.append(name)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main():
            self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=ctx)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(main()), self.loop.run_forever()), daemon=True)
        self.thread.start()
        ready.wait(5)

    async def handle(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst, record):
            try:
                while data := await src.read(65536):
                    if record:
                        self.received += data
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def close(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_fallback_to_a_tls_external_provider(tmp_path, sims):
    cert, key = make_cert(tmp_path, "provider.test")
    (ext,) = sims(1, "--model", "ext-model", prefix="ext")
    front = TLSFront(cert, key, ext.port)
    provider = {
        "url": f"https://127.0.0.1:{front.port}/v1",
        "server_name": "provider.test",
        "api_key_env": "FP_TEST_PROVIDER_KEY",
        "model": "ext-model",
    }
    proxy = proxy_with(
        tmp_path,
        {
            "clusters": [
                {"name": "main", "models": ["tiny"], "backends": [dead_url()], "fallback": ["ext"]},
                {"name": "strict", "models": ["strict"], "backends": [dead_url()], "fallback": ["untrusted"]},
            ],
            "providers": [
                {"name": "ext", "ca_file": cert, **provider},
                {"name": "untrusted", **provider},  # the system's CAs: our self-signed cert fails
            ],
            "retry": {"min_per_second": 1000},
        },
        env={"FP_TEST_PROVIDER_KEY": "sk-provider-secret"},
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key="client-key", max_retries=0)
        reply = client.chat.completions.create(**CHAT)
        assert reply.usage.completion_tokens == 4 and reply.model == "ext-model"
        stream = client.chat.completions.create(**CHAT, stream=True)
        assert len([e for e in stream if e.choices and e.choices[0].delta.content]) == 4
        sent = front.received.decode(errors="replace")
        assert "POST /v1/chat/completions HTTP/1.1" in sent
        assert "authorization: Bearer sk-provider-secret" in sent and "client-key" not in sent
        assert "host: provider.test:%d" % front.port in sent
        assert '"model":"ext-model"' in sent and '"model":"tiny"' not in sent
        assert "provider.test" in front.sni
        # Verification is on by default: a provider whose certificate we do not trust fails.
        status, _, body = post(proxy.port, {**CHAT, "model": "strict"})
        assert status == 502 and b"CERTIFICATE_VERIFY_FAILED" not in body  # the reason is the log's
        assert "sk-provider-secret" not in json.dumps(proxy.admin("/admin/backends")[1])
    finally:
        proxy.stop()
        front.close()
    assert b"CERTIFICATE_VERIFY_FAILED" in proxy.proc.stderr.read()


# -- stickiness ------------------------------------------------------------------------------------------


def test_sticky_by_session_header(tmp_path, sims):
    ss = sims(3)
    proxy = proxy_with(
        tmp_path,
        {
            "backends": [s.url for s in ss],
            "balance": {"policy": "consistent_hash", "hash_keys": ["header:x-session-id"]},
            "health": STEADY_HEALTH,
        },
    )
    try:
        homes = {}
        for turn in range(4):
            for session in range(15):
                body = {**CHAT, "messages": [{"role": "user", "content": f"turn {turn} of {session}"}]}
                status, served, _ = post(proxy.port, body, {"x-session-id": f"session-{session}"})
                assert status == 200
                assert homes.setdefault(session, served) == served
        assert len(set(homes.values())) == 3
    finally:
        proxy.stop()


def test_sticky_by_prompt_prefix(tmp_path, sims):
    ss = sims(3)
    proxy = proxy_with(
        tmp_path,
        {
            "backends": [s.url for s in ss],
            "balance": {"policy": "consistent_hash", "hash_keys": ["header:x-session-id", "prefix"], "prefix_chars": 48},
            "health": STEADY_HEALTH,
        },
    )
    try:
        homes = {}
        # 30 prefixes: with 15, one of three backends gets none about once in a hundred runs
        # (the ring depends on the sims' random ports), which is chance, not a routing fault.
        for turn in range(4):
            for conv in range(30):
                system = f"You are assistant number {conv:03d} of the fleet, be brief."
                messages = [{"role": "system", "content": system}, {"role": "user", "content": "question"}]
                messages += [{"role": "assistant", "content": f"answer {t}"} for t in range(turn)]
                status, served, _ = post(proxy.port, {**CHAT, "messages": messages})
                assert status == 200
                assert homes.setdefault(conv, served) == served
        assert len(set(homes.values())) == 3
    finally:
        proxy.stop()


# -- models, drains ----------------------------------------------------------------------------------------


def test_model_clusters_404_and_v1_models(tmp_path, sims):
    (small,) = sims(1, prefix="small")
    (big,) = sims(1, "--model", "big", prefix="big")
    proxy = proxy_with(
        tmp_path,
        {
            "pools": [  # the older name of clusters: still read
                {"name": "small", "models": ["tiny"], "backends": [small.url]},
                {"name": "big", "models": ["big"], "backends": [big.url]},
            ]
        },
    )
    try:
        assert post(proxy.port, CHAT)[:2] == (200, "small0")
        assert post(proxy.port, {**CHAT, "model": "big"})[:2] == (200, "big0")
        status, _, body = post(proxy.port, {**CHAT, "model": "huge"})
        err = json.loads(body)["error"]
        assert status == 404 and "huge" in err["message"] and "big, tiny" in err["message"] and err["code"] == 404
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        listing = json.loads(resp.read())
        assert resp.status == 200 and sorted(m["id"] for m in listing["data"]) == ["big", "tiny"]
        models = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key="x").models.list()
        assert sorted(m.id for m in models.data) == ["big", "tiny"]
    finally:
        proxy.stop()


def test_drain_and_undrain(tmp_path, sims):
    ss = sims(2)
    proxy = proxy_with(
        tmp_path, {"backends": [{"url": s.url, "name": f"s{i}"} for i, s in enumerate(ss)]},
        env={"FLEETPROXY_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    try:
        status, _ = admin_post(proxy, "/admin/backends/s0/drain")
        assert status == 200
        assert {post(proxy.port, CHAT)[1] for _ in range(8)} == {"s1"}
        assert not eligible(proxy, "s0")
        assert admin_post(proxy, "/admin/backends/s0/undrain")[0] == 200
        # A short prompt goes to the less loaded backend, a tie broken at random: 30 requests
        # leave one unused once in 2^29 runs.
        assert {post(proxy.port, CHAT)[1] for _ in range(30)} == {"s0", "s1"}
        assert admin_post(proxy, "/admin/backends/nope/drain")[0] == 404
    finally:
        proxy.stop()


# -- reload: the old connection pools drain gracefully------------------------------------------------------------------


def test_router_close_drains_pools_gracefully(sims):
    """What a reload does after swapping routers: idle connections close now, a busy one
    finishes its exchange and closes when released; the adopted backend is left alone."""
    from proxy.config import build
    from proxy.routing.router import Router

    a, b = sims(2)

    async def main():
        loop = asyncio.get_running_loop()
        old = Router(build({"backends": [a.url, b.url]}), loop)
        pa, pb = old.find(a.url.split("//")[1]).pool, old.find(b.url.split("//")[1]).pool
        busy = await pb.acquire()
        idle = await pb.acquire()
        pb.release(idle)
        new = Router(build({"backends": [a.url]}), loop, previous=old)
        assert new.find(a.url.split("//")[1]).pool is pa
        old.close()
        await asyncio.sleep(0.01)
        assert idle.closed and not busy.closed and not pa.closing
        pb.release(busy)
        await asyncio.sleep(0.01)
        assert busy.closed and pb.stats()["open"] == 0
        pa.abort()

    asyncio.run(main())


# -- load as vLLM reports it -------------------------------------------------------------------------------


def test_load_reports_in_band_and_scraped_reach_every_worker(tmp_path, sims):
    """The proxy asks each vLLM for its load in band and strips the answer from the client's
    response (unless the client asked), scrapes /metrics for the rest, and every worker sees
    the freshest report through shared memory; /admin/backends and /metrics show it with its age."""
    a, b = sims(2)
    proxy = proxy_with(
        tmp_path,
        {"backends": [a.url, b.url], "workers": 2, "load": {"scrape_interval": 0.2}, "health": STEADY_HEALTH},
    )
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", json.dumps(CHAT), {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and resp.getheader("endpoint-load-metrics") is None  # ours, not the client's
        conn.request(
            "POST", "/v1/chat/completions", json.dumps(CHAT),
            {"content-type": "application/json", "endpoint-load-metrics-format": "text"},
        )
        resp = conn.getresponse()
        resp.read()
        assert (resp.getheader("endpoint-load-metrics") or "").startswith("TEXT named_metrics.")  # asked for
        conn.close()

        def reported():
            entries = backends(proxy).values()
            return all(len(e["workers"]) == 2 and all("load" in w for w in e["workers"]) for e in entries)

        assert wait_for(reported, timeout=10)
        for entry in backends(proxy).values():
            assert entry["load"]["age_s"] < 5  # the supervisor's merged view carries it too
            for view in entry["workers"]:
                load = view["load"]
                assert load["source"] in ("in_band", "scrape") and load["age_s"] < 5
                assert load["waiting"] == 0 and 0 <= load["kv_cache_usage"] <= 1
        labels = [name.split("//")[1] for name in (a.url, b.url)]

        def running():
            values = metrics(f"http://127.0.0.1:{proxy.admin_port}")
            return values if all(f'fleetproxy_backend_running{{backend="{label}"}}' in values
                                 for label in labels) else None

        assert wait_for(running, timeout=10)  # a scrape's: vLLM's in-band header has no running count
        for _ in range(6):  # in-band reports after it keep the scrape's count (Endpoint.observe)
            time.sleep(0.06)  # older than IN_BAND_EVERY: the next response's report is taken
            assert post(proxy.port, CHAT)[0] == 200
            values = running()
            assert values is not None
        for label in labels:
            assert values[f'fleetproxy_backend_queue{{backend="{label}"}}'] == 0
            # At most the one that asked: every request has had its answer.
            assert values[f'fleetproxy_backend_running{{backend="{label}"}}'] in (0, 1)
            assert 0 <= values[f'fleetproxy_backend_kv_cache_usage{{backend="{label}"}}'] <= 1
            assert values[f'fleetproxy_backend_load_age_seconds{{backend="{label}"}}'] < 5
    finally:
        proxy.stop()


def test_a_cluster_may_allow_larger_bodies_than_the_rest(tmp_path, sims):
    # Issue 12: a text API's default limit, and a larger one where a multimodal model needs it.
    (s,) = sims(1)
    proxy = proxy_with(
        tmp_path,
        {
            "limits": {"max_body_bytes": 1 << 20},
            "clusters": [
                {"name": "text", "models": ["text-only"], "backends": [s.url]},
                {"name": "vision", "models": ["tiny"], "backends": [s.url], "max_body_bytes": 3 << 20},
            ],
        },
    )
    try:
        padding = "x" * (2 << 20)  # 2 MiB of prompt: over the text limit, under the vision one
        for model, want in (("tiny", 200), ("text-only", 413)):
            body = {**CHAT, "model": model, "messages": [{"role": "user", "content": padding}]}
            status, _, answer = post(proxy.port, body, timeout=30)
            assert status == want, answer[:200]
        # Over every limit: refused from the head, before the body is read.
        raw = raw_exchange(proxy.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n" % (4 << 20))
        assert raw.startswith(b"HTTP/1.1 413 "), raw[:100]
        status, _, _ = post(proxy.port, CHAT)
        assert status == 200
    finally:
        proxy.stop()
