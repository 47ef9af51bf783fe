"""Typed, frozen configuration. Every tunable lives in this package, with its unit in the
comment: ``sections.py`` (timeouts, limits, pool, health, retries, balancing, load, admin),
``clusters.py`` (endpoints, providers, clusters), a feature's own section beside them
(``discovery.py``, ``observe.py``, ``tenants.py``), and here the whole ``Config`` with its
cross-field checks, and reading a file.

A file (YAML or TOML) and the command line both become one plain dict, which msgspec decodes
into these Structs; so a bad value reads the same whichever way it came in, and the error names
the file and the field (``fleetproxy.yaml: Expected `float`, got `str` - at `$.timeouts.idle```).
"""

import os
from typing import Annotated, Literal, Optional, Union

import msgspec
from msgspec import Meta

from .base import KIB, MIB, Bytes, ConfigError, Count, Name, Seconds, Share, _Base  # noqa: F401
from .clusters import ClusterConfig, EndpointConfig, ProviderConfig  # noqa: F401
from .discovery import DiscoveryConfig  # noqa: F401
from .observe import ObserveConfig
from .sections import (  # noqa: F401
    STATELESS_PATHS, AdminConfig, Balance, ConnectionPoolConfig, Health, Limits, LoadConfig, Outlier,
    PrefixIndexConfig, Retry, Timeouts,
)
from .tenants import TenantsConfig


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
    # s between a worker's load scrapes, pool sweeps and gauge samples once one of their periods
    # passed with no request routed and none in flight (over the worker group); the next request
    # routed wakes them at once. Health checks keep their interval; a value at or below a task's
    # own period leaves it as it was. (Envoy's no_traffic_interval, which paces checks.)
    no_traffic_interval: Seconds = 10.0

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
