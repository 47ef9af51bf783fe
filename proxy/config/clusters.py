"""Where requests go: endpoints (vLLM servers), external providers, and the clusters that
group endpoints by model, each with its policy, fallback chain and discovery."""

import os
from typing import Annotated, Optional
from urllib.parse import urlsplit

from msgspec import Meta

from .base import Bytes, Name, _Base
from .discovery import DiscoveryConfig
from .sections import Balance



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
            # rejected) instead of the worker that would build the TLS context. ssl is imported
            # here, not at the top: the supervisor reads every config and makes no TLS
            # connection, so only a config that names a ca_file costs it the module.
            import ssl

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
