"""A minimal client of the Kubernetes API on asyncio streams: GET a JSON object, or stream a
watch's JSON lines. No Kubernetes client library: two request shapes are all discovery needs,
and this keeps a dependency (and its threads) out of the proxy's process.

Each request is its own connection (``Connection: close``): a list every few minutes and one
long-lived watch do not need a pool. The service account's token is read at every request, so
a projected token that the kubelet rotates is picked up without a restart.
"""

import asyncio
import os
import ssl as ssl_module
from urllib.parse import urlsplit

import orjson

READ_LIMIT = 64 << 20  # bytes: the most one list answer may carry
REQUEST_TIMEOUT = 30.0  # s for one GET (a watch has its own)


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def api_base(cfg, env):
    """(scheme, host, port) of the API server: the config's ``api``, else the in-cluster
    variables. Raises ValueError naming what is missing."""
    url = cfg.api
    if url is None:
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ValueError("discovery.kubernetes.api is not set and KUBERNETES_SERVICE_HOST is not in the environment")
        url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


class Api:
    def __init__(self, cfg, env=None):
        self.cfg = cfg
        self.scheme, self.host, self.port = api_base(cfg, os.environ if env is None else env)
        self.ssl = None
        if self.scheme == "https":
            ca = cfg.ca_file if cfg.ca_file and os.path.exists(cfg.ca_file) else None
            self.ssl = ssl_module.create_default_context(cafile=ca)

    def _token(self):
        try:
            with open(self.cfg.token_file, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError:
            return None  # outside a pod (a test, a proxy in front of a local API): no token

    async def _open(self, path):
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None, limit=1 << 20,
        )
        token = self._token()
        host = f"[{self.host}]" if ":" in self.host else self.host
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{self.port}\r\nAccept: application/json\r\n"
                f"User-Agent: fleetproxy\r\nConnection: close\r\n"
                + (f"Authorization: Bearer {token}\r\n" if token else "")
                + "\r\n"
            ).encode()
        )
        status, chunked, length = await _read_head(reader)
        return reader, writer, status, chunked, length

    async def get(self, path):
        """The JSON object at ``path``; raises ApiError on a status other than 200."""
        writer = None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reader, writer, status, chunked, length = await self._open(path)
                body = b"".join([piece async for piece in _body(reader, chunked, length)])
        finally:
            if writer is not None:
                writer.transport.abort()
        if status != 200:
            raise ApiError(status, _message(body))
        return orjson.loads(body)

    async def watch(self, path):
        """Each JSON object of a watch stream at ``path``, as it arrives; raises ApiError when
        the answer is not 200 (410: the resourceVersion is too old)."""
        writer = None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reader, writer, status, chunked, length = await self._open(path)
            if status != 200:
                body = b"".join([piece async for piece in _body(reader, chunked, min(length or 65536, 65536))])
                raise ApiError(status, _message(body))
            pending = b""
            async for piece in _body(reader, chunked, length):
                pending += piece
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield orjson.loads(line)
        finally:
            if writer is not None:
                writer.transport.abort()


async def _read_head(reader):
    line = await reader.readline()
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {line[:80]!r}")
    status, chunked, length = int(parts[1]), False, None
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"transfer-encoding" and value.endswith(b"chunked"):
            chunked = True
        elif name == b"content-length":
            length = int(value)
    return status, chunked, length


async def _body(reader, chunked, length):
    """The body's pieces as they arrive: de-chunked, up to Content-Length, or to EOF."""
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            yield await reader.readexactly(size)
            await reader.readline()
    elif length is not None:
        if length > READ_LIMIT:
            raise ValueError(f"an API answer of {length} bytes is over the limit")
        yield await reader.readexactly(length)
    else:
        while piece := await reader.read(65536):
            yield piece


def _message(body):
    try:
        return str(orjson.loads(body).get("message"))
    except (orjson.JSONDecodeError, AttributeError):
        return body[:200].decode("latin-1")
