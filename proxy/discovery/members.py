"""Membership, sans-IO: what the discovery loops learn, turned into endpoint configs, and the
difference between two memberships. Nothing here resolves, connects or sleeps.

How this works.
- A member is an ``EndpointConfig`` keyed by its label, ``host:port``: the label places its
  ring points (``policies.ring_points``), so a member that stays keeps its keys and one that
  comes or goes moves only its own (~1/N), and every worker, seeing the same addresses,
  agrees on the ring.
- DNS: every distinct address of the answer is a member on the configured port.
- Kubernetes: the EndpointSlices of a Service (``kubernetes.io/service-name``), kept as the
  API's watch events say (``apply_event``), give the ready addresses (``conditions.ready``: a
  missing value means ready, as the API documents; terminating endpoints are not ready);
  each address names its pod (``targetRef``). A pod's own metadata may weigh it and place it:
  the annotation ``fleetproxy.io/weight`` (an integer 1..1000) and the label
  ``fleetproxy.io/cluster`` (when set, the pod belongs only to the cluster of that name, so
  one Service can front several model clusters).
"""

import ipaddress

from ..config import EndpointConfig

WEIGHT_ANNOTATION = "fleetproxy.io/weight"
CLUSTER_LABEL = "fleetproxy.io/cluster"
MAX_WEIGHT = 1000


def endpoint_url(host, port):
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"http://[{host}]:{port}"
    except ValueError:
        pass
    return f"http://{host}:{port}"


def member(host, port, weight=1):
    return EndpointConfig(url=endpoint_url(host, port), weight=weight)


def by_label(specs):
    return {spec.label: spec for spec in specs}


def diff(current, desired):
    """(added, removed, changed) labels between two {label: EndpointConfig} memberships;
    ``changed``: present in both with other settings (a new weight)."""
    added = sorted(label for label in desired if label not in current)
    removed = sorted(label for label in current if label not in desired)
    changed = sorted(label for label in desired if label in current and current[label] != desired[label])
    return added, removed, changed


# -- DNS --------------------------------------------------------------------------------------


def dns_members(infos, port):
    """{label: EndpointConfig} from ``getaddrinfo`` results: each distinct address once."""
    hosts = sorted({info[4][0].split("%", 1)[0] for info in infos})  # a scope id is not part of the address
    return by_label(member(host, port) for host in hosts)


# -- Kubernetes EndpointSlices ----------------------------------------------------------------


class Gone(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def apply_event(slices, event):
    """The slices (name -> EndpointSlice) after one watch event, and the event's
    resourceVersion (None when it carries none). Raises Gone for an expired watch, ValueError
    for an event that is not one."""
    kind = event.get("type")
    obj = event.get("object") or {}
    if kind == "ERROR":
        if obj.get("code") == 410:
            raise Gone(obj.get("message") or "resourceVersion too old")
        raise ValueError(f"watch error {obj.get('code')}: {obj.get('message')}")
    meta = obj.get("metadata") or {}
    version = meta.get("resourceVersion")
    if kind == "BOOKMARK":
        return slices, version
    name = meta.get("name")
    if kind not in ("ADDED", "MODIFIED", "DELETED") or not name:
        raise ValueError(f"not a watch event: type {kind!r}, name {name!r}")
    slices = dict(slices)
    if kind == "DELETED":
        slices.pop(name, None)
    else:
        slices[name] = obj
    return slices, version


def slice_port(ports, port_name=None, port=None):
    """The slice's port number for the vLLM server, or None when the slice has none that fits."""
    ports = [p for p in ports or () if p.get("port")]
    if port_name is not None:
        ports = [p for p in ports if p.get("name") == port_name]
    elif port is not None:
        ports = [p for p in ports if p.get("port") == port]
    return ports[0]["port"] if ports else None


def ready_endpoints(slices, port_name=None, port=None):
    """[(host, port, pod name or None)] of every ready address, each address once, sorted."""
    out = {}
    for obj in slices.values():
        if obj.get("addressType") not in ("IPv4", "IPv6"):
            continue  # FQDN slices name hosts, not pods
        number = slice_port(obj.get("ports"), port_name, port)
        if number is None:
            continue
        for ep in obj.get("endpoints") or ():
            conditions = ep.get("conditions") or {}
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            ref = ep.get("targetRef") or {}
            pod = ref.get("name") if ref.get("kind", "Pod") == "Pod" else None
            for address in ep.get("addresses") or ():
                out.setdefault((address, number), pod)
    return sorted((host, number, pod) for (host, number), pod in out.items())


def pod_metadata(pod):
    """(weight, cluster or None, problem or None) from a Pod object's annotation and label."""
    meta = pod.get("metadata") or {}
    cluster = (meta.get("labels") or {}).get(CLUSTER_LABEL)
    raw = (meta.get("annotations") or {}).get(WEIGHT_ANNOTATION)
    if raw is None:
        return 1, cluster, None
    try:
        weight = int(str(raw).strip())
    except ValueError:
        weight = 0
    if not 1 <= weight <= MAX_WEIGHT:
        return 1, cluster, f"annotation {WEIGHT_ANNOTATION}={raw!r} is not an integer 1..{MAX_WEIGHT}; weight 1"
    return weight, cluster, None


def slice_members(endpoints, cluster, pods=None):
    """{label: EndpointConfig} of ``ready_endpoints`` for the cluster named ``cluster``;
    ``pods``: pod name -> (weight, cluster label) where known."""
    pods = pods or {}
    out = {}
    for host, port, pod in endpoints:
        weight, owner = pods.get(pod, (1, None))
        if owner is not None and owner != cluster:
            continue
        spec = member(host, port, weight)
        out[spec.label] = spec
    return out
