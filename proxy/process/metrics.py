"""Prometheus text exposition of what the process group knows, for the admin ``/metrics``.

The supervisor renders it from the generation's shared memory (summed over workers, load from
the freshest report); a single process (``--single-process``, ``fleetproxy demo``) from its own
router. Either way the same families, names and labels. The request families (latency,
tokens, outcomes, pools, demand) come from ``observe.exposition``: unlike the per-generation
families here, they survive reloads and worker restarts.
"""

import time

from ..observe import exposition as requests_text


def _escape(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def endpoint_row(name, in_flight, requests, healthy, report):
    """One endpoint's values; ``report``: its freshest routing.load.Report, or None."""
    return name, in_flight, requests, healthy, report


def exposition(endpoints, workers, restarts, generation, cfg=None, merged=None, tenants=None):
    """``endpoints``: rows made by ``endpoint_row``; ``merged``: ``Totals.merged`` of the
    request metrics table (None: request metrics are off), ``cfg`` the current config;
    ``tenants``: the tenants' shared table (None: no tenants: section)."""
    now = time.monotonic()  # the clock load reports are stamped with
    labels = [f'{{backend="{_escape(e[0])}"}}' for e in endpoints]
    lines = []

    def family(name, kind, help, values):
        lines.extend((f"# HELP {name} {help}", f"# TYPE {name} {kind}"))
        lines.extend(f"{name}{label} {value}" for label, value in values if value is not None)

    family("fleetproxy_backend_in_flight", "gauge", "Requests in flight on a backend, over all workers.",
           zip(labels, (e[1] for e in endpoints)))
    family("fleetproxy_backend_requests_total", "counter", "Requests sent to a backend (retries included).",
           zip(labels, (e[2] for e in endpoints)))
    family("fleetproxy_backend_healthy", "gauge", "1 while any worker sees the backend healthy.",
           zip(labels, (int(bool(e[3])) for e in endpoints)))
    reports = [(label, e[4]) for label, e in zip(labels, endpoints) if e[4] is not None]
    family("fleetproxy_backend_queue", "gauge", "Requests waiting in the backend's own queue, as it last reported.",
           ((label, r.waiting) for label, r in reports))
    family("fleetproxy_backend_running", "gauge",
           "Requests the backend runs, as its last /metrics scrape said (its in-band report has none), "
           "up to the load's max_age old.", ((label, r.running) for label, r in reports))
    family("fleetproxy_backend_kv_cache_usage", "gauge", "The backend's KV-cache usage (0-1), as it last reported.",
           ((label, r.kv) for label, r in reports))
    family("fleetproxy_backend_load_age_seconds", "gauge", "Age of the backend's last load report.",
           ((label, round(max(0.0, now - r.at), 3)) for label, r in reports))
    family("fleetproxy_workers", "gauge", "Worker processes serving (not draining).", [("", workers)])
    family("fleetproxy_worker_restarts_total", "counter", "Workers respawned after dying.", [("", restarts)])
    family("fleetproxy_config_generation", "gauge", "Config generation (1 at start, +1 per reload).",
           [("", generation)])
    if merged is not None:
        reports = {e[0]: e[4] for e in endpoints}
        demand = requests_text.demand_rows(
            cfg, reports, requests_text.pool_waiting(merged), now, requests_text.fair_waiting(merged))
        requests_text.render(lines, merged, demand)
    if tenants is not None:
        from ..tenants.shared import exposition as tenants_text

        lines.extend(tenants_text(tenants))
    return ("\n".join(lines) + "\n").encode()
