"""Typed, frozen configuration. Every tunable lives here, with its unit in the comment.

A file (YAML or TOML) and the command line both become one plain dict, which msgspec decodes
into these Structs; so a bad value reads the same whichever way it came in, and the error names
the file and the field (``fleetproxy.yaml: Expected `float`, got `str` - at `$.timeouts.idle```).
"""

import os
from typing import Annotated, Literal, Optional, Union
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

Seconds = Annotated[float, Meta(gt=0)]
Bytes = Annotated[int, Meta(gt=0)]
Count = Annotated[int, Meta(gt=0)]

KIB = 1024
MIB = 1024 * KIB


class ConfigError(Exception):
    """A configuration that cannot run; the message names the source and the field."""


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Timeouts(_Base):
    connect: Seconds = 2.0  # s: open a TCP connection to a backend
    first_byte: Seconds = 300.0  # s: request sent -> first response byte (covers long prefills)
    idle: Seconds = 60.0  # s: silence between two upstream reads mid-response (inter-token)
    header_read: Seconds = 10.0  # s: a client's whole request head (slowloris)
    request_read: Seconds = 60.0  # s: a client's head and body together
    keepalive: Seconds = 75.0  # s: an idle client connection is kept open
    pool_idle: Seconds = 4.0  # s: an idle upstream connection is kept (below uvicorn's 5 s)


class Limits(_Base):
    max_body_bytes: Bytes = 32 * MIB  # request body, else 413
    max_header_bytes: Bytes = 64 * KIB  # request line + header block, else 431
    max_headers: Count = 100  # header fields, else 431
    max_request_line: Bytes = 8 * KIB  # method + target + version, else 414
    max_pipelined: Count = 16  # parsed requests queued behind the active one
    high_water: Bytes = 64 * KIB  # transport write buffer mark; low water is a quarter


class Pool(_Base):
    max_connections: Count = 1024  # per backend, in use + idle; beyond it requests wait
    max_idle: Count = 256  # per backend


class Health(_Base):
    interval: Seconds = 2.0  # s between active checks of one backend
    timeout: Seconds = 1.0  # s for one check
    path: str = "/health"


class Backend(_Base):
    url: str
    name: Optional[str] = None

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.scheme != "http":
            raise ValueError(f"backend url {self.url!r} must start with http://")
        if not parts.hostname:
            raise ValueError(f"backend url {self.url!r} has no host")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"backend url {self.url!r} has an invalid port") from None

    @property
    def host(self):
        return urlsplit(self.url).hostname

    @property
    def port(self):
        return urlsplit(self.url).port or 80

    @property
    def base_path(self):
        return urlsplit(self.url).path.rstrip("/")

    @property
    def label(self):
        return self.name or f"{self.host}:{self.port}"


def _address(value, field):
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{field} {value!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class Config(_Base):
    listen: str = "127.0.0.1:8080"  # data port, HOST:PORT
    admin_listen: str = "127.0.0.1:9090"  # admin port, HOST:PORT
    backends: list[Backend] = []
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    pool: Pool = Pool()
    health: Health = Health()
    log_level: str = "info"
    access_log: bool = False
    workers: Union[Annotated[int, Meta(ge=1, le=1024)], Literal["auto"]] = 1  # processes; auto = usable CPUs
    drain_timeout: Seconds = 30.0  # s: on SIGTERM/reload, in-flight requests get this long to finish

    def __post_init__(self):
        _address(self.listen, "listen")
        _address(self.admin_listen, "admin_listen")
        if not self.backends:
            raise ValueError("at least one backend is required (--backend URL or backends:)")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be one of debug, info, warning, error")

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


def build(raw, source="<command line>"):
    """Decode a raw mapping into a Config, naming ``source`` in any error."""
    raw = dict(raw)
    backends = raw.get("backends")
    if isinstance(backends, list):
        # A bare URL is shorthand for {url: URL}.
        raw["backends"] = [{"url": b} if isinstance(b, str) else b for b in backends]
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load(path=None, overrides=None):
    """Config from an optional file with command-line ``overrides`` (nested dicts) on top."""
    raw = read_file(path) if path else {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            merged = dict(raw.get(key) or {})
            merged.update(value)
            raw[key] = merged
        else:
            raw[key] = value
    return build(raw, path or "<command line>")


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0", "false", "no")
