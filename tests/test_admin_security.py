"""The admin listeners' guard, end to end on loopback: a token on every mutating route (and on the
supervisor's fan-out to its workers), JSON bodies only, Host naming the listener (DNS rebinding,
CSRF from a browser on the same machine), bounded request size and idle time, loopback by default
(the Docker image included). Both admin listeners run the same code: each rule is checked on the
supervisor's (which fans out to the workers' private ports) and on a ``--single-process`` worker's.
"""

import asyncio
import http.client
import json
import os
import socket
import time

import pytest

from conftest import ROOT, ScriptedBackend, raw_exchange, start_proxy
from proxy.config import AdminConfig, ConfigError, build
from proxy.process import admin

TOKEN = "test-admin-token-0123456789"
MODES = {"supervisor": ("--workers", "2"), "single": ("--single-process",)}


def ok(request, sock):
    sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")


@pytest.fixture(scope="module")
def backend():
    b = ScriptedBackend(ok)
    yield b
    b.close()


def write_config(tmp_path, backend, admin_section=None, name="admin.yaml"):
    cfg = {"backends": [{"url": backend.url, "name": "b0"}]}
    if admin_section is not None:
        cfg["admin"] = admin_section
    path = tmp_path / name
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return str(path)


def start(path, mode, token=TOKEN):
    # An empty variable is no token: the tests never depend on the caller's environment.
    return start_proxy([], "--config", path, *MODES[mode], env={"FLEETPROXY_ADMIN_TOKEN": token})


def call(proxy, method, path, body=None, headers=None, token=None):
    """(status, parsed body) from the proxy's public admin port."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=10)
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data and not data.startswith(b"#") else data
    finally:
        conn.close()


def drained(proxy):
    """Whether b0 is drained, in every worker's view (and they agree)."""
    backend = call(proxy, "GET", "/admin/backends")[1]["backends"][0]
    views = {v["health"]["drained"] for v in backend.get("workers", [backend])}
    assert len(views) == 1, backend
    return views.pop()


@pytest.fixture(scope="module", params=sorted(MODES))
def guarded(request, backend, tmp_path_factory):
    """A proxy with an admin token, small admin limits, in each process mode."""
    path = write_config(
        tmp_path_factory.mktemp("guarded"), backend, {"max_request_bytes": 4096, "idle_timeout": 1.0}
    )
    proxy = start(path, request.param)
    proxy.mode = request.param
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module", params=sorted(MODES))
def tokenless(request, backend, tmp_path_factory):
    proxy = start(write_config(tmp_path_factory.mktemp("tokenless"), backend), request.param, token="")
    proxy.mode = request.param
    yield proxy
    proxy.stop()


# -- the token ----------------------------------------------------------------------------------


def test_without_a_token_mutating_routes_are_403_and_say_how(tokenless):
    status, body = call(tokenless, "POST", "/admin/backends/b0/drain")
    assert status == 403
    assert "FLEETPROXY_ADMIN_TOKEN" in body["error"] and "admin.token_file" in body["error"]
    assert not drained(tokenless)
    # Even the right-looking header opens nothing while no token is configured.
    assert call(tokenless, "POST", "/admin/backends/b0/drain", token="anything-at-all-long")[0] == 403
    if tokenless.mode == "supervisor":
        assert call(tokenless, "POST", "/admin/workers", {"workers": 3})[0] == 403
        assert call(tokenless, "GET", "/admin/workers")[1]["target"] == 2


def test_reads_stay_open(tokenless):
    for path in ("/healthz", "/readyz", "/metrics", "/admin/backends"):
        assert call(tokenless, "GET", path)[0] == 200, path
    if tokenless.mode == "supervisor":
        assert call(tokenless, "GET", "/admin/workers")[0] == 200


def test_mutating_routes_need_the_token(guarded):
    for token in (None, "wrong-token-0123456789", TOKEN[:-1], TOKEN + "x"):
        assert call(guarded, "POST", "/admin/backends/b0/drain", token=token)[0] == 401, token
    basic = {"Authorization": "Basic " + TOKEN}
    assert call(guarded, "POST", "/admin/backends/b0/drain", headers=basic)[0] == 401
    assert not drained(guarded)
    status, body = call(guarded, "POST", "/admin/backends/b0/drain", token=TOKEN)
    assert status == 200, body
    assert drained(guarded)
    if guarded.mode == "supervisor":
        # The fan-out carried the token and named each worker's own address in Host: every
        # worker's private listener accepted it (a refusal there would show as 401/421 here).
        assert [w["status"] for w in body["workers"]] == [200, 200]
    assert call(guarded, "POST", "/admin/backends/b0/undrain", token=TOKEN)[0] == 200
    assert not drained(guarded)


def test_scaling_needs_the_token(guarded):
    if guarded.mode != "supervisor":
        pytest.skip("workers are the supervisor's")
    assert call(guarded, "POST", "/admin/workers", {"workers": 3})[0] == 401
    assert call(guarded, "GET", "/admin/workers")[1]["target"] == 2
    status, body = call(guarded, "POST", "/admin/workers", {"workers": 2}, token=TOKEN)
    assert status == 200 and body["target"] == 2


def test_authorize_compares_in_constant_time(monkeypatch):
    """The check itself, without sockets: a constant-time compare decides, whatever the lengths
    (hmac.compare_digest's, taken from _operator so the supervisor loads no libcrypto)."""
    import _operator
    import hmac

    assert admin.compare_digest in (_operator._compare_digest, hmac.compare_digest)
    calls = []
    real = admin.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin, "compare_digest", spy)
    monkeypatch.setenv("FP_TEST_ADMIN_TOKEN", TOKEN)
    settings = AdminConfig(token_env="FP_TEST_ADMIN_TOKEN")
    assert admin.authorize(settings, b"Bearer " + TOKEN.encode()) is None
    assert admin.authorize(settings, b"bearer  " + TOKEN.encode()) is None
    assert admin.authorize(settings, b"Bearer short")[0] == 401
    assert admin.authorize(settings, None)[0] == 401
    assert calls == [
        (TOKEN.encode(),) * 2,
        (TOKEN.encode(),) * 2,
        (b"short", TOKEN.encode()),
    ]  # None: no scheme
    monkeypatch.delenv("FP_TEST_ADMIN_TOKEN")
    assert admin.authorize(settings, b"Bearer " + TOKEN.encode())[0] == 403


def test_token_file_wins_and_is_reread(tmp_path, backend):
    """admin.token_file: its first line; a rotated file takes effect without a restart, in the
    supervisor and in its workers alike."""
    secret = tmp_path / "admin-token"
    secret.write_text("file-token-0123456789abcdef\n")
    path = write_config(tmp_path, backend, {"token_file": str(secret)})
    proxy = start(path, "supervisor", token=TOKEN)  # the variable is set too: the file wins
    try:
        assert call(proxy, "POST", "/admin/backends/b0/drain", token=TOKEN)[0] == 401
        assert call(proxy, "POST", "/admin/backends/b0/drain", token="file-token-0123456789abcdef")[0] == 200
        secret.write_text("rotated-token-0123456789abcdef\n")
        assert (
            call(proxy, "POST", "/admin/backends/b0/undrain", token="file-token-0123456789abcdef")[0] == 401
        )
        status, body = call(
            proxy, "POST", "/admin/backends/b0/undrain", token="rotated-token-0123456789abcdef"
        )
        assert status == 200 and [w["status"] for w in body["workers"]] == [200, 200]
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    "section,env,message",
    [
        ({"token_file": "/nonexistent/fleetproxy-token"}, {}, "cannot be read"),
        ({"token_file": "EMPTY"}, {}, "is empty"),
        ({}, {"FLEETPROXY_ADMIN_TOKEN": "short"}, "shorter than 16"),
        ({}, {"FLEETPROXY_ADMIN_TOKEN": "has a space in the middle"}, "visible ASCII"),
        ({"token_env": ""}, {}, "admin.token_env"),
    ],
)
def test_bad_admin_token_settings_fail_at_load(tmp_path, monkeypatch, section, env, message):
    if section.get("token_file") == "EMPTY":
        empty = tmp_path / "empty"
        empty.write_text("\n")
        section = {"token_file": str(empty)}
    monkeypatch.delenv("FLEETPROXY_ADMIN_TOKEN", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        build({"backends": ["http://a:1"], "admin": section}, "ops.yaml")
    assert "ops.yaml" in str(info.value) and "$.admin" in str(info.value) and message in str(info.value)


# -- JSON bodies only ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type,body,status",
    [
        (None, b'{"workers": 2}', 415),
        ("text/plain", b'{"workers": 2}', 415),  # what a page may POST cross-site without a preflight
        ("application/x-www-form-urlencoded", b"workers=2", 415),
        ("multipart/form-data; boundary=x", b"--x--", 415),
        ("application/json", b"workers=2", 400),
        ("Application/JSON; charset=utf-8", b'{"workers": 2}', 200),
    ],
)
def test_post_bodies_must_be_json(guarded, content_type, body, status):
    path = "/admin/workers" if guarded.mode == "supervisor" else "/admin/backends/b0/undrain"
    headers = {"Content-Type": content_type} if content_type else {}
    assert call(guarded, "POST", path, body, headers, token=TOKEN)[0] == status


# -- Host: the listener's own address, nothing a rebound DNS name would send --------------------


def raw(proxy, head):
    return raw_exchange(proxy.admin_port, head.replace(b"PORT", b"%d" % proxy.admin_port))


@pytest.mark.parametrize(
    "host,status",
    [
        (b"127.0.0.1:PORT", 200),
        (b"localhost:PORT", 200),
        (b"LOCALHOST:PORT", 200),
        (b"[::1]:PORT", 200),
        (b"attacker.example:PORT", 421),  # DNS rebinding: the page's own name, now 127.0.0.1
        (b"127.0.0.1.nip.io:PORT", 421),
        (b"127.0.0.1:1", 421),
        (b"127.0.0.1", 421),
        (b"localhost", 421),
    ],
)
def test_host_must_name_this_listener(guarded, host, status):
    for method in (b"GET /admin/backends", b"POST /admin/backends/b0/undrain"):
        reply = raw(
            guarded,
            method
            + b" HTTP/1.1\r\nHost: "
            + host
            + b"\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 %d " % status), (method, host, reply[:200])


def test_no_host_is_a_probe_two_hosts_are_refused(guarded):
    assert raw(guarded, b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    two = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    assert raw(guarded, two).startswith(b"HTTP/1.1 400 ")


def test_admin_hosts_and_the_local_address():
    """allowed_hosts: loopback names, the configured host, the address the connection reached
    (a probe by IP on a listener bound to 0.0.0.0) and admin.hosts, with the right ports."""
    hosts = admin.allowed_hosts(
        AdminConfig(hosts=["Admin.Example", "other:81", "[fd00::1]"]), "0.0.0.0", ("10.1.2.3", 9090)
    )
    assert {
        "127.0.0.1:9090",
        "localhost:9090",
        "[::1]:9090",
        "10.1.2.3:9090",
        "admin.example:9090",
        "other:81",
        "[fd00::1]:9090",
    } <= hosts
    assert "other:9090" not in hosts and "evil.example:9090" not in hosts and "127.0.0.1" not in hosts


# -- size and idle bounds -----------------------------------------------------------------------


def test_oversized_head_is_413_and_closed(guarded):
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nX-Pad: " + b"a" * 5000 + b"\r\n\r\n"
    t0 = time.monotonic()
    reply = raw(guarded, head)
    assert reply.startswith(b"HTTP/1.1 413 ") and b"max_request_bytes" in reply
    assert b"connection: close" in reply.lower() and time.monotonic() - t0 < 2  # closed, not timed out


def test_oversized_body_is_413_and_closed(guarded):
    body = json.dumps({"workers": 2, "pad": "x" * 5000}).encode()
    head = (
        b"POST /admin/workers HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (TOKEN.encode(), len(body))
    )
    assert raw(guarded, head + body).startswith(b"HTTP/1.1 413 ")


def closed_within(proxy, seconds, trickle=None):
    """Seconds until the admin listener closed a connection that sends nothing (or sends one
    byte of ``trickle`` every 0.2 s), or None if it stayed open ``seconds``."""
    sock = socket.create_connection(("127.0.0.1", proxy.admin_port), timeout=seconds)
    t0 = time.monotonic()
    try:
        if trickle is not None:
            sock.settimeout(0.2)
        while time.monotonic() - t0 < seconds:
            try:
                if not sock.recv(4096):
                    return time.monotonic() - t0
            except socket.timeout:
                if trickle:
                    try:
                        sock.send(trickle[:1])
                    except OSError:
                        return time.monotonic() - t0
                    trickle = trickle[1:] or trickle
            except OSError:
                return time.monotonic() - t0
        return None
    finally:
        sock.close()


def test_silent_connection_is_closed_after_idle_timeout(guarded):
    took = closed_within(guarded, 5.0)
    assert took is not None and 0.8 < took < 3.0, took


def test_trickling_connection_is_closed_too(guarded):
    """Slowloris: a byte every 0.2 s never completes a request; idle_timeout bounds it."""
    took = closed_within(guarded, 5.0, trickle=b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100)
    assert took is not None and took < 3.0, took


def test_keep_alive_connection_is_closed_once_idle(guarded):
    sock = socket.create_connection(("127.0.0.1", guarded.admin_port), timeout=5)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % guarded.admin_port)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        t0 = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the listener, not by the 5 s timeout
        assert time.monotonic() - t0 < 3.0
    finally:
        sock.close()


# -- the protocol in process: what each worker's private listener runs -------------------------


def test_worker_private_listener_refuses_without_the_token(monkeypatch):
    """A worker's private admin port (127.0.0.1, reachable by any local process) applies the
    same guard: without the token a POST never reaches the handler."""
    monkeypatch.setenv("FP_TEST_ADMIN_TOKEN", TOKEN)
    settings = AdminConfig(token_env="FP_TEST_ADMIN_TOKEN")
    seen = []

    async def handle(method, path, body):
        seen.append((method, path))
        return 200, {"ok": True}

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: admin.AdminProtocol(handle, lambda: settings, "127.0.0.1"), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]

        async def ask(head):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head % port)
            reply = await reader.read()
            writer.close()
            return reply

        try:
            no_token = await ask(
                b"POST /admin/backends/x/drain HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 0\r\n\r\n"
            )
            with_token = await ask(
                b"POST /admin/backends/x/drain HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer "
                + TOKEN.encode()
                + b"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            )
        finally:
            server.close()
        return no_token, with_token

    no_token, with_token = asyncio.run(main())
    assert no_token.startswith(b"HTTP/1.1 401 ") and with_token.startswith(b"HTTP/1.1 200 ")
    assert seen == [("POST", "/admin/backends/x/drain")]


# -- loopback by default -----------------------------------------------------------------------


def test_default_admin_listen_is_loopback():
    assert build({"backends": ["http://a:1"]}).admin_address == ("127.0.0.1", 9090)


def test_docker_image_binds_admin_on_loopback_and_says_how_to_expose_it():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    cmd = json.loads(next(line for line in text.splitlines() if line.startswith("CMD "))[4:])
    assert cmd[cmd.index("--admin-listen") + 1] == "127.0.0.1:9090"
    assert cmd[cmd.index("--listen") + 1] == "0.0.0.0:8080"
    assert "--admin-listen 0.0.0.0:9090" in text and "FLEETPROXY_ADMIN_TOKEN" in text
    expose = next(line for line in text.splitlines() if line.startswith("EXPOSE "))
    assert "9090" not in expose
