"""The sections every config has: timeouts, limits, the connection pool, health, outliers,
retries, balancing, load reports, the admin listener, the prefix index."""

import os
from typing import Annotated, Literal, Optional

import msgspec
from msgspec import Meta

from .base import KIB, MIB, Bytes, Count, Seconds, Share, _Base


class Timeouts(_Base):
    connect: Seconds = 2.0  # s: open a TCP connection to a backend
    first_byte: Seconds = 300.0  # s: request sent -> first response byte (covers long prefills)
    idle: Seconds = 60.0  # s: silence between two upstream reads mid-response (inter-token)
    header_read: Seconds = 10.0  # s: a client's whole request head (slowloris)
    request_read: Seconds = 60.0  # s: a client's head and body together
    keepalive: Seconds = 75.0  # s: an idle client connection is kept open
    pool_idle: Seconds = 4.0  # s: an idle upstream connection is kept (below uvicorn's 5 s)
    write_stall: Seconds = 30.0  # s: a client that reads nothing of a response for this long is cut off
    pool_wait: Seconds = 10.0  # s: a request waits at most this long for an upstream connection (then 503)


class Limits(_Base):
    # Request body, else 413. A text API's largest bodies are long prompts: 8 MiB of JSON is
    # about 2M tokens of text (4 bytes a token) or 1M as token ids, beyond any context window
    # served today, while it keeps what one request makes us hold (and pipelining multiplies)
    # a quarter of what 32 MiB did. Multimodal (base64 images, audio) may need more: raise it.
    max_body_bytes: Bytes = 8 * MIB
    max_header_bytes: Bytes = 64 * KIB  # request line + header block, else 431
    max_headers: Count = 100  # header fields, else 431
    max_request_line: Bytes = 8 * KIB  # method + target + version, else 414
    max_pipelined: Count = 16  # parsed requests queued behind the active one
    high_water: Bytes = 64 * KIB  # transport write buffer mark; low water is a quarter
    max_connections: Count = 10000  # client connections per worker; beyond them, the kernel's backlog
    max_queued_bytes: Bytes = 4 * MIB  # request bytes held for a connection's pipelined requests
    max_worker_queued_bytes: Bytes = 256 * MIB  # the same, summed over a worker's connections


class ConnectionPoolConfig(_Base):
    """Upstream connections kept per endpoint (the ``connection_pool:`` section)."""

    max_connections: Count = 1024  # per endpoint, in use + idle; beyond it requests wait
    max_idle: Count = 256  # per endpoint
    max_waiters: Count = 1024  # requests queued for a connection per endpoint; beyond them, 503
    # Idle connections opened ahead of demand (Envoy's preconnect): a request that finds none
    # idle pays a connect (a TLS handshake too, for https) before its first byte; with a spare
    # ready, only the request after it might. 0: connect on demand only.
    spare: Annotated[int, Meta(ge=0)] = 1


class Health(_Base):
    interval: Seconds = 2.0  # s between active checks of one backend
    timeout: Seconds = 1.0  # s for one check
    path: str = "/health"
    healthy_threshold: Count = 2  # consecutive passed checks that bring a down backend back
    unhealthy_threshold: Count = 2  # consecutive failed checks that take an up backend out
    # s between checks while nothing is routed (a whole interval with no request and none in
    # flight over the worker group; the next request routed starts a round at once). Unset,
    # checks keep their interval idle too: a backend that dies while the proxy idles is out
    # before traffic meets it. (Envoy's no_traffic_interval.)
    no_traffic_interval: Optional[Seconds] = None


class Outlier(_Base):
    """Passive ejection: an endpoint that keeps failing real requests leaves its clusters for a while."""

    consecutive_failures: Annotated[int, Meta(ge=0)] = 5  # connect errors, resets, 502/503/504; 0 = off
    base_ejection: Seconds = 5.0  # s out on the first ejection; doubles on each repeat
    max_ejection: Seconds = 300.0  # s: the cap of that doubling
    max_ejected_percent: Annotated[int, Meta(ge=0, le=100)] = 50  # of a cluster's endpoints at once


STATELESS_PATHS = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/score", "/v1/rerank", "/score", "/rerank",
    "/tokenize", "/detokenize", "/pooling", "/classify",
)


class Retry(_Base):
    """Retries happen only before any response byte reached the client."""

    attempts: Annotated[int, Meta(ge=1, le=10)] = 3  # upstream tries per request, the first included
    budget: Share = 0.2  # retries as a share of requests (a token bucket): no retry storms
    min_per_second: Annotated[float, Meta(ge=0)] = 5.0  # retries/s always allowed (low traffic)
    on_status: list[Annotated[int, Meta(ge=400, le=599)]] = msgspec.field(default_factory=lambda: [429, 502, 503])  # retried statuses
    # POSTs that may be sent again after they reached a backend that then failed (before any
    # response byte): vLLM keeps no state for these, so a second copy costs compute only.
    # Other POSTs (files, batches, stored responses) never are; [] for nginx's strict rule.
    resend_paths: list[str] = msgspec.field(default_factory=lambda: list(STATELESS_PATHS))


class Balance(_Base):
    """How a cluster picks among its endpoints."""

    # cache_aware: the endpoint that holds the longest part of the prompt in its prefix cache
    # (see proxy/routing/cache_aware.py); prompts shorter than a block go by least_request.
    policy: Literal["cache_aware", "consistent_hash", "least_request", "round_robin"] = "cache_aware"
    # consistent_hash: key sources tried in order, the first present wins: "header:NAME",
    # "user" (the OpenAI body field), "prefix" (the first prefix_chars characters of the
    # concatenated messages up to the end of the first user message, or of the prompt).
    # No key: least_request decides.
    hash_keys: list[str] = msgspec.field(default_factory=lambda: ["header:x-session-id", "user", "prefix"])
    prefix_chars: Count = 2048  # characters of the prompt that key the hash (at most)
    # Bounded loads (consistent_hash, cache_aware): an endpoint sheds new requests only while it
    # carries more than load_factor x its share of the cluster's load, counted as vLLM reports
    # it (running + waiting, see `load:`) or, without a fresh report, as requests in flight;
    # and, for requests that would lose their cache by moving, only while vLLM queues them.
    load_factor: Annotated[float, Meta(ge=1.0, le=10.0)] = 1.25
    spill_floor: Annotated[int, Meta(ge=0)] = 8  # requests: an endpoint below this never sheds a session
    # cache_aware: a new conversation goes where its shared prefix (a system prompt) is cached
    # while that endpoint carries less than spread x its share of the load.
    spread: Annotated[float, Meta(ge=1.0, le=10.0)] = 1.1
    vnodes: Annotated[int, Meta(ge=1, le=10000)] = 160  # ring points per unit of weight
    max_in_flight: Annotated[int, Meta(ge=0)] = 0  # circuit breaker per endpoint; 0 = unlimited
    block_chars: Annotated[int, Meta(ge=16, le=65536)] = 256  # cache_aware: prompt bytes per indexed block
    index_depth: Annotated[int, Meta(ge=1, le=4096)] = 128  # cache_aware: blocks of a prompt indexed at most

    def __post_init__(self):
        for key in self.hash_keys:
            if key not in ("user", "prefix") and not (key.startswith("header:") and len(key) > 7):
                raise ValueError(f"hash key {key!r} must be header:NAME, user or prefix")


class LoadConfig(_Base):
    """How the proxy learns each endpoint's load from vLLM itself (the ``load:`` section)."""

    # Ask vLLM for its load on every forwarded request (``endpoint-load-metrics-format: text``);
    # it answers in a response header (non-streaming responses only), which the client never sees
    # unless it asked itself.
    in_band: bool = True
    scrape_interval: Annotated[float, Meta(ge=0)] = 0.5  # s between /metrics scrapes; 0 = off
    # s: an older report is stale and routing falls back to requests in flight. A busy server
    # answers /metrics late; its queue changes over seconds, and a report a few seconds old still
    # knows more than the proxy's own counts.
    max_age: Seconds = 5.0
    metrics_path: str = "/metrics"


class AdminConfig(_Base):
    """The admin listener's guard (the ``admin:`` section): mutating routes need a token.

    Every POST on an admin listener (the supervisor's and each worker's) must carry
    ``Authorization: Bearer <token>``. The token is the first line of ``token_file`` when that
    is given (an explicit file wins over the default variable name), else the value of the
    environment variable ``token_env``. With neither, mutating routes answer 403 and say how to
    set one: an admin port that anyone who reaches it can drive is never the default.
    The token is read again on every check (``token()``), so a rotated file takes effect
    without a restart, and the supervisor and its workers (same file, same environment) agree.
    """

    MIN_TOKEN_CHARS = 16  # (a class constant, not a field) an admin token shorter than this is refused

    token_env: Optional[str] = "FLEETPROXY_ADMIN_TOKEN"  # environment variable holding the token
    token_file: Optional[str] = None  # or a file holding it (first line)
    max_request_bytes: Bytes = 64 * KIB  # an admin request's head and body
    idle_timeout: Seconds = 10.0  # s: an admin connection that sends nothing is closed
    # Host values the admin listener also answers (NAME or NAME:PORT; the listener's port when
    # none), besides its own addresses: e.g. the DNS name it is scraped by once exposed.
    hosts: list[str] = []

    def __post_init__(self):
        if self.token_env is not None and not self.token_env:
            raise ValueError("admin.token_env must name an environment variable (or be null)")
        token = self.token()  # a file that cannot be read, or a bad token, fails at load
        if self.token_file is not None and token is None:
            raise ValueError(f"admin.token_file {self.token_file!r} is empty")

    def token(self):
        """The admin token as it stands now, or None when none is configured. Raises
        ValueError when the file cannot be read, the token is shorter than ``MIN_TOKEN_CHARS``
        (a short token is guessed by trying) or holds characters a header field cannot carry
        (the supervisor sends it on to its workers)."""
        if self.token_file is not None:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    value = f.readline().strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise ValueError(f"admin.token_file {self.token_file!r} cannot be read: {reason}") from None
            where = f"admin.token_file {self.token_file!r}"
        elif self.token_env:
            value = os.environ.get(self.token_env, "").strip()
            where = f"environment variable {self.token_env} (admin.token_env)"
        else:
            return None
        if not value:
            return None
        if len(value) < self.MIN_TOKEN_CHARS:
            raise ValueError(f"the admin token in {where} is shorter than {self.MIN_TOKEN_CHARS} characters")
        if not all("!" <= c <= "~" for c in value):
            raise ValueError(f"the admin token in {where} must be visible ASCII characters, no spaces")
        return value


class PrefixIndexConfig(_Base):
    """The cache_aware policy's memory of which endpoint holds which prompt blocks, shared by the
    workers; fixed in size, so memory never grows with traffic (the ``prefix_index:`` section)."""

    blocks_per_endpoint: Annotated[int, Meta(ge=64, le=1 << 24)] = 16384  # remembered per endpoint (16 B each)
    ttl: Seconds = 600.0  # s: a block not used for this long is taken as evicted by vLLM

    def __post_init__(self):
        if self.blocks_per_endpoint % 4:
            raise ValueError("prefix_index.blocks_per_endpoint must be a multiple of 4 (the table is 4-way)")
