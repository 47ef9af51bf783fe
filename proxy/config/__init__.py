"""Typed, frozen configuration. Every tunable lives here (a feature's own section in a module
beside this one), with its unit in the comment.

A file (YAML or TOML) and the command line both become one plain dict, which msgspec decodes
into these Structs; so a bad value reads the same whichever way it came in, and the error names
the file and the field (``fleetproxy.yaml: Expected `float`, got `str` - at `$.timeouts.idle```).
"""

import os
import ssl
from typing import Annotated, Literal, Optional, Union
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from .base import KIB, MIB, Bytes, ConfigError, Count, Name, Seconds, Share, _Base  # noqa: F401
from .discovery import DiscoveryConfig
from .observe import ObserveConfig
from .tenants import TenantsConfig


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


class Health(_Base):
    interval: Seconds = 2.0  # s between active checks of one backend
    timeout: Seconds = 1.0  # s for one check
    path: str = "/health"
    healthy_threshold: Count = 2  # consecutive passed checks that bring a down backend back
    unhealthy_threshold: Count = 2  # consecutive failed checks that take an up backend out


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


class EndpointConfig(_Base):
    """One backend server (an endpoint): a ``backends:`` entry, or a bare URL."""

    url: str  # http://host[:port][/base-path], or https:// (TLS, certificate verified)
    name: Optional[Name] = None
    weight: Annotated[int, Meta(ge=1, le=1000)] = 1  # share of traffic and of the ring
    ca_file: Optional[str] = None  # https: trust these CAs (PEM) instead of the system's
    verify: bool = True  # https: verify the certificate and its host name
    server_name: Optional[str] = None  # https: SNI and the name checked; default the URL's host

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"backend url {self.url!r} must start with http:// or https://")
        if not parts.hostname:
            raise ValueError(f"backend url {self.url!r} has no host")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"backend url {self.url!r} has an invalid port") from None
        if parts.scheme == "http" and (self.ca_file or self.server_name):
            raise ValueError(f"backend url {self.url!r}: ca_file and server_name need https://")
        if self.ca_file:
            # Loaded now, so a missing or bad file fails the config check (and a reload is
            # rejected) instead of the worker that would build the TLS context.
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"ca_file {self.ca_file!r} cannot be loaded: {exc.strerror or exc}") from None

    @property
    def tls(self):
        return urlsplit(self.url).scheme == "https"

    @property
    def host(self):
        return urlsplit(self.url).hostname

    @property
    def port(self):
        return urlsplit(self.url).port or (443 if self.tls else 80)

    @property
    def base_path(self):
        return urlsplit(self.url).path.rstrip("/")

    @property
    def label(self):
        return self.name or f"{self.host}:{self.port}"


class ProviderConfig(EndpointConfig, kw_only=True):
    """An external OpenAI-compatible endpoint, reached as the last step of fallback chains.

    Its URL's path stands for the client's ``/v1`` (``https://host/openai/v1`` turns
    ``/v1/chat/completions`` into ``/openai/v1/chat/completions``). The API key is read from
    the environment variable ``api_key_env`` at start and sent as ``Authorization: Bearer``;
    the client's own Authorization is dropped. ``model`` replaces the body's model name.
    """

    name: Name
    api_key_env: Optional[str] = None
    model: Optional[str] = None
    models: list[str] = []  # model names it serves directly (usually none: reached by fallback)
    health_path: Optional[str] = None  # active checks; none by default (passive ejection only)
    balance: Balance = Balance()

    def __post_init__(self):
        super().__post_init__()
        parts = urlsplit(self.url)
        if parts.scheme == "http" and not self.loopback(parts.hostname):
            # The API key and every prompt would cross the network in clear. A loopback host
            # never leaves the machine: a local egress sidecar that speaks TLS onward, or a
            # test double, may use plain http.
            raise ValueError(
                f"provider {self.name!r}: url {self.url!r} must be https:// "
                "(plain http is accepted only to a loopback host: 127.0.0.0/8, ::1, localhost)"
            )
        if self.api_key_env is not None:
            if not self.api_key_env:
                raise ValueError("api_key_env must name an environment variable")
            key = os.environ.get(self.api_key_env, "")
            if not key.strip():
                # Checked at load, so a typo or a missing secret stops the start (or the
                # reload) instead of sending every fallback request without a key.
                raise ValueError(
                    f"provider {self.name!r}: api_key_env names {self.api_key_env}, "
                    "which is not set or empty in the environment"
                )
            if not all("!" <= c <= "~" for c in key):
                # It goes into a header field: CR/LF would let it write a head of its own.
                raise ValueError(
                    f"provider {self.name!r}: api_key_env {self.api_key_env} holds spaces or control "
                    "characters"
                )

    @staticmethod
    def loopback(host):
        """``host`` (a URL's host name) is this machine's loopback: 127.0.0.0/8, ::1 or localhost."""
        import ipaddress

        if host is None:
            return False
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


class ClusterConfig(_Base, kw_only=True):
    """A cluster: endpoints serving a set of models, with a policy and a fallback chain
    (a ``clusters:`` entry)."""

    name: Name
    models: list[str] = []  # model names routed here; [] = every model no other cluster claims
    backends: list[EndpointConfig] = []
    balance: Balance = Balance()
    fallback: list[Name] = []  # clusters or providers tried next, in order
    discovery: Optional[DiscoveryConfig] = None  # members found at run time, beside ``backends``
    # Request body limit for this cluster's models (multimodal: images inline as base64);
    # default limits.max_body_bytes. The largest of them is what a request may send at all.
    max_body_bytes: Optional[Bytes] = None

    def __post_init__(self):
        if not self.backends and self.discovery is None:
            raise ValueError(f"cluster {self.name!r} has no backends (and no discovery:)")


def _address(value, field):
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{field} {value!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class Config(_Base):
    listen: str = "127.0.0.1:8080"  # data port, HOST:PORT
    admin_listen: str = "127.0.0.1:9090"  # admin port, HOST:PORT
    backends: list[EndpointConfig] = []  # the cluster named "default": every model no other claims
    balance: Balance = Balance()  # the default cluster's policy
    fallback: list[Name] = []  # the default cluster's fallback chain
    discovery: Optional[DiscoveryConfig] = None  # the default cluster's members found at run time
    clusters: list[ClusterConfig] = []  # (``pools:`` is read as an older name for it)
    providers: list[ProviderConfig] = []
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    connection_pool: ConnectionPoolConfig = ConnectionPoolConfig()  # (older name: ``pool:``)
    health: Health = Health()
    outlier: Outlier = Outlier()
    retry: Retry = Retry()
    load: LoadConfig = LoadConfig()
    admin: AdminConfig = AdminConfig()
    # Peers (addresses or CIDRs) whose X-Forwarded-For, Forwarded and X-Real-IP are believed;
    # from anyone else these are dropped and the peer's address is what goes upstream.
    trusted_proxies: list[str] = []
    prefix_index: PrefixIndexConfig = PrefixIndexConfig()
    observe: ObserveConfig = ObserveConfig()  # metrics, access log (access_log: on), tracing
    tenants: Optional[TenantsConfig] = None  # API keys, models, rate limits (see config/tenants.py)
    log_level: str = "info"
    access_log: bool = False
    # processes; auto = usable CPUs. At most 256: the rows of the workers' shared memory (process/shm.py).
    workers: Union[Annotated[int, Meta(ge=1, le=256)], Literal["auto"]] = 1
    drain_timeout: Seconds = 30.0  # s: on SIGTERM/reload, in-flight requests get this long to finish

    def __post_init__(self):
        _address(self.listen, "listen")
        _address(self.admin_listen, "admin_listen")
        if not self.backends and not self.discovery and not self.clusters and not self.providers:
            raise ValueError("at least one backend is required (--backend URL, backends:, discovery: or clusters:)")
        names = set()
        for cluster in self.all_clusters():
            if cluster.name in names:
                raise ValueError(f"cluster or provider name {cluster.name!r} is used twice")
            names.add(cluster.name)
        claimed = {}
        catch_all = 0
        for cluster in self.all_clusters():
            for ref in getattr(cluster, "fallback", ()):
                if ref not in names or ref == cluster.name:
                    raise ValueError(f"cluster {cluster.name!r}: fallback {ref!r} is not another cluster or provider")
            if isinstance(cluster, ClusterConfig) and not cluster.models:
                catch_all += 1
            for model in cluster.models:
                if model in claimed:
                    raise ValueError(f"model {model!r} is served by both {claimed[model]!r} and {cluster.name!r}")
                claimed[model] = cluster.name
        if catch_all > 1:
            raise ValueError("only one cluster may leave models empty (the catch-all)")
        # A backend's name (host:port when unnamed) is how admin drains and the state name it.
        named = {}
        for cluster in self.all_clusters():
            members = cluster.backends if isinstance(cluster, ClusterConfig) else [cluster]
            labels = [b.label for b in members]
            if len(set(labels)) != len(labels):
                raise ValueError(f"cluster {cluster.name!r} lists a backend twice: {labels}")
            for b in members:
                if named.setdefault(b.label, b) != b:
                    raise ValueError(f"backend name {b.label!r} is given to two different backends")
        if self.trusted_proxies:
            from ..http.heads import trusted_networks  # a bad entry would fail every request

            trusted_networks(tuple(self.trusted_proxies))
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be one of debug, info, warning, error")

    def all_clusters(self):
        """Every cluster, the default one (from ``backends``) first, then the providers."""
        out = []
        if self.backends or self.discovery:
            out.append(ClusterConfig(
                name="default", backends=self.backends, balance=self.balance, fallback=self.fallback,
                discovery=self.discovery,
            ))
        out.extend(self.clusters)
        out.extend(self.providers)
        return out

    @property
    def read_limits(self):
        """``limits`` with the body limit raised to the largest a cluster allows: bodies are
        read before the model (so the cluster) is known; the router holds each to its own."""
        largest = max([self.limits.max_body_bytes] + [c.max_body_bytes or 0 for c in self.clusters])
        if largest == self.limits.max_body_bytes:
            return self.limits
        return msgspec.structs.replace(self.limits, max_body_bytes=largest)

    @property
    def listen_address(self):
        return _address(self.listen, "listen")

    @property
    def admin_address(self):
        return _address(self.admin_listen, "admin_listen")


def read_file(path):
    """The raw mapping in a YAML or TOML file."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        if path.endswith(".toml"):
            import tomllib

            raw = tomllib.loads(text.decode())
        else:
            import yaml

            raw = yaml.safe_load(text) or {}
    except Exception as exc:  # the parsers' own errors carry line and column
        raise ConfigError(f"{path}: cannot parse config: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return raw


# Older names of top-level sections, still read: "pool" meant three things (model pools, the
# connection pool and its limits), so the sections now say which.
OLD_NAMES = {"pools": "clusters", "pool": "connection_pool"}


def _new_names(raw, source):
    """``raw`` with older section names replaced, and {new: old} for what was replaced."""
    raw = dict(raw)
    renamed = {}
    for old, new in OLD_NAMES.items():
        if old in raw:
            if new in raw:
                raise ConfigError(f"{source}: `{old}` is the older name of `{new}`; give only one of them")
            raw[new] = raw.pop(old)
            renamed[new] = old
    return raw, renamed


def build(raw, source="<command line>", renamed=None):
    """Decode a raw mapping into a Config, naming ``source`` in any error."""
    raw, more = _new_names(raw, source)
    renamed = {**(renamed or {}), **more}
    raw["backends"] = _bare_urls(raw.get("backends"))
    clusters = raw.get("clusters")
    if isinstance(clusters, list):
        raw["clusters"] = [
            {**c, "backends": _bare_urls(c.get("backends"))} if isinstance(c, dict) and "backends" in c else c
            for c in clusters
        ]
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        message = str(exc)
        for new, old in renamed.items():  # name the field as the file wrote it
            message = message.replace(f"$.{new}", f"$.{old}")
        raise ConfigError(f"{source}: {message}") from None


def _bare_urls(backends):
    # A bare URL is shorthand for {url: URL}.
    if isinstance(backends, list):
        return [{"url": b} if isinstance(b, str) else b for b in backends]
    return [] if backends is None else backends


def load(path=None, overrides=None):
    """Config from an optional file with command-line ``overrides`` (nested dicts) on top."""
    source = path or "<command line>"
    raw, renamed = _new_names(read_file(path) if path else {}, source)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            merged = dict(raw.get(key) or {})
            merged.update(value)
            raw[key] = merged
        else:
            raw[key] = value
    return build(raw, source, renamed)


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0", "false", "no")
