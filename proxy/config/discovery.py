"""A cluster's ``discovery:`` section: where its members come from besides ``backends:``.

Exactly one source per cluster: ``dns`` (a name re-resolved on an interval, every A and AAAA
record a member, as a headless Service answers) or ``kubernetes`` (the EndpointSlices of a
Service, listed and watched through the API with the pod's service account). See
``proxy/discovery/``.
"""

from typing import Annotated, Optional

from msgspec import Meta

from .base import Name, Seconds, _Base

Port = Annotated[int, Meta(ge=1, le=65535)]
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class DnsDiscovery(_Base):
    name: str  # host name resolved to all its addresses (a headless Service: NAME.NS.svc)
    port: Port  # every address is reached on this port
    interval: Seconds = 5.0  # s between resolutions

    def __post_init__(self):
        if not self.name or any(c in self.name for c in "/: "):
            raise ValueError(f"discovery.dns.name {self.name!r} must be a host name")


class KubernetesDiscovery(_Base):
    service: Name  # the Service whose EndpointSlices are watched (label kubernetes.io/service-name)
    namespace: Optional[str] = None  # default: the pod's own (``namespace_file``)
    # Which of the slice's ports is the vLLM port: by name, else by number, else the first.
    port_name: Optional[str] = None
    port: Optional[Port] = None
    # The API server: https://HOST:PORT; default from KUBERNETES_SERVICE_HOST/_PORT (in a pod).
    api: Optional[str] = None
    token_file: str = SERVICE_ACCOUNT + "/token"  # bearer token, read again on every request
    ca_file: Optional[str] = SERVICE_ACCOUNT + "/ca.crt"  # trust for an https api; null: system CAs
    namespace_file: str = SERVICE_ACCOUNT + "/namespace"
    # Read each new pod's annotation fleetproxy.io/weight and label fleetproxy.io/cluster (one
    # GET per pod, needs RBAC "get pods"); off: every member weighs 1.
    pod_metadata: bool = True
    watch_timeout: Seconds = 300.0  # s: the server ends a watch after this; it is resumed
    retry_min: Seconds = 1.0  # s: first wait after the API failed; doubles up to retry_max
    retry_max: Seconds = 30.0

    def __post_init__(self):
        if self.api is not None and not self.api.startswith(("http://", "https://")):
            raise ValueError(f"discovery.kubernetes.api {self.api!r} must start with https:// (or http://)")
        if self.retry_min > self.retry_max:
            raise ValueError("discovery.kubernetes.retry_min must not exceed retry_max")


class DiscoveryConfig(_Base):
    dns: Optional[DnsDiscovery] = None
    kubernetes: Optional[KubernetesDiscovery] = None
    # Members this cluster may discover at once: each gets a column in the memory the workers
    # share (counts, load reports, prefix index: about 260 KiB each with the default index).
    max_members: Annotated[int, Meta(ge=1, le=1024)] = 64

    def __post_init__(self):
        if (self.dns is None) == (self.kubernetes is None):
            raise ValueError("discovery needs exactly one of dns: or kubernetes:")

    def source(self, namespace=None):
        """The name /admin/backends shows for members found this way."""
        if self.dns is not None:
            return f"dns:{self.dns.name}"
        return f"k8s:{namespace or self.kubernetes.namespace or '?'}/{self.kubernetes.service}"

