"""Prometheus text exposition of what the process group knows, for the admin ``/metrics``.

The supervisor renders it from the generation's shared counters (summed over workers); a single
process (``--single-process``, ``fleetproxy demo``) from its own router. Either way the same
families, names and labels.
"""


def _escape(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(endpoints, workers, restarts, generation):
    """``endpoints``: (name, in flight, requests sent, healthy) for each endpoint."""
    labels = [f'{{backend="{_escape(e[0])}"}}' for e in endpoints]
    lines = []

    def family(name, kind, help, values):
        lines.extend((f"# HELP {name} {help}", f"# TYPE {name} {kind}"))
        lines.extend(f"{name}{label} {value}" for label, value in values)

    family("fleetproxy_backend_in_flight", "gauge", "Requests in flight on a backend, over all workers.",
           zip(labels, (e[1] for e in endpoints)))
    family("fleetproxy_backend_requests_total", "counter", "Requests sent to a backend (retries included).",
           zip(labels, (e[2] for e in endpoints)))
    family("fleetproxy_backend_healthy", "gauge", "1 while any worker sees the backend healthy.",
           zip(labels, (int(bool(e[3])) for e in endpoints)))
    family("fleetproxy_workers", "gauge", "Worker processes serving (not draining).", [("", workers)])
    family("fleetproxy_worker_restarts_total", "counter", "Workers respawned after dying.", [("", restarts)])
    family("fleetproxy_config_generation", "gauge", "Config generation (1 at start, +1 per reload).",
           [("", generation)])
    return ("\n".join(lines) + "\n").encode()
