"""The supervisor's side of the request metrics: totals kept across workers and reloads, and
their Prometheus text.

``Totals`` holds, in the supervisor's own memory, what workers that have exited had counted
(``fold``), keyed by label set; ``merged`` adds every live row of the shared table on top. A
series is summed by its key text, so the same label set in two workers (or two generations)
is one series.
"""

from .table import (
    CLASSES, HIST_AT, HISTOGRAMS, OUTCOMES, R_CONNECTIONS, R_DROPPED, R_STREAMS, S_BYTES, S_ERR_EVENTS, S_IN_FLIGHT,
    S_POOL_OPEN, S_POOL_REFUSED, S_POOL_WAITING, S_REQ, S_TOK, S_TOK_FLIGHT, SERIES_CELLS, TOKEN_KINDS, add_into,
)


def _escape(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Totals:
    def __init__(self):
        self.series = {}  # (model, backend, tenant) -> cells
        self.dropped = 0

    def fold(self, table, row):
        """A worker that owned ``row`` exited: keep its counts, free its row."""
        series, header = table.read_row(row)
        for key, cells in series.items():
            add_into(self.series.setdefault(key, [0] * SERIES_CELLS), cells)
        self.dropped += header[R_DROPPED]
        table.free_row(row)

    def merged(self, table):
        """(series, dropped, open connections, open streams) over the kept totals and every
        live row."""
        out = {key: list(cells) for key, cells in self.series.items()}
        dropped, connections, streams = self.dropped, 0, 0
        if table is not None:
            for row in table.live_rows():
                series, header = table.read_row(row)
                dropped += header[R_DROPPED]
                connections += header[R_CONNECTIONS]
                streams += header[R_STREAMS]
                for key, cells in series.items():
                    total = out.get(key)
                    if total is None:
                        out[key] = cells
                    else:
                        for i in range(S_REQ, SERIES_CELLS):
                            total[i] += cells[i]
        return out, dropped, connections, streams


def render(lines, merged, demand=()):
    """Append the request families to ``lines``. ``demand``: (model, cluster, waiting+running,
    proxy queue) rows for the autoscaler families."""
    series, dropped, connections, streams = merged
    # Tenant "": a pool-only series; a series with no request yet (the overflow one) is left out.
    requests = sorted((k, c) for k, c in series.items() if k[2] and any(c[S_REQ:S_TOK]))
    pools = {}
    flight = {}  # model -> prompt tokens in flight, over backends and tenants
    for (model, backend, tenant), cells in series.items():
        if tenant:
            if cells[S_TOK_FLIGHT]:
                flight[model] = flight.get(model, 0) + cells[S_TOK_FLIGHT]
        elif backend:
            p = pools.setdefault(backend, [0, 0, 0])
            p[0] += cells[S_POOL_WAITING]
            p[1] += cells[S_POOL_OPEN]
            p[2] += cells[S_POOL_REFUSED]

    def head(name, kind, help):
        lines.extend((f"# HELP {name} {help}", f"# TYPE {name} {kind}"))

    def labels(model, backend, tenant=None):
        out = f'model="{_escape(model)}",backend="{_escape(backend or "none")}"'
        return out if tenant is None else out + f',tenant="{_escape(tenant)}"'

    head("fleetproxy_requests_total", "counter", "Requests by model, backend, tenant, status class and outcome.")
    for (model, backend, tenant), cells in requests:
        base = labels(model, backend, tenant)
        for ci, cls in enumerate(CLASSES):
            for oi, outcome in enumerate(OUTCOMES):
                value = cells[S_REQ + ci * len(OUTCOMES) + oi]
                if value:
                    lines.append(f'fleetproxy_requests_total{{{base},code="{cls}",outcome="{outcome}"}} {value}')
    head("fleetproxy_tokens_total", "counter", "Tokens by model, backend, tenant and kind (from the responses' usage).")
    for (model, backend, tenant), cells in requests:
        base = labels(model, backend, tenant)
        for ki, kind in enumerate(TOKEN_KINDS):
            lines.append(f'fleetproxy_tokens_total{{{base},kind="{kind}"}} {cells[S_TOK + ki]}')
    head("fleetproxy_stream_errors_total", "counter",
         "Event streams that carried an in-band error event: the backend's, or the proxy's own "
         "when the stream broke.")
    for (model, backend, tenant), cells in requests:
        lines.append(f"fleetproxy_stream_errors_total{{{labels(model, backend, tenant)}}} {cells[S_ERR_EVENTS]}")
    head("fleetproxy_response_bytes_total", "counter", "Response body bytes relayed from backends.")
    for (model, backend, tenant), cells in requests:
        lines.append(f"fleetproxy_response_bytes_total{{{labels(model, backend, tenant)}}} {cells[S_BYTES]}")

    # Histograms by model and backend (tenant summed: it would multiply the buckets).
    by_mb = {}
    for (model, backend, tenant), cells in requests:
        total = by_mb.get((model, backend))
        if total is None:
            by_mb[(model, backend)] = list(cells)
        else:
            for i in range(SERIES_CELLS):
                total[i] += cells[i]
    for h, (name, help, bounds) in enumerate(HISTOGRAMS):
        full = "fleetproxy_" + name
        head(full, "histogram", help)
        at = HIST_AT[h]
        for (model, backend), cells in sorted(by_mb.items()):
            base = labels(model, backend)
            running = 0
            for i, bound in enumerate(bounds):
                running += cells[at + i]
                lines.append(f'{full}_bucket{{{base},le="{bound:g}"}} {running}')
            running += cells[at + len(bounds)]
            lines.append(f'{full}_bucket{{{base},le="+Inf"}} {running}')
            lines.append(f"{full}_sum{{{base}}} {cells[at + len(bounds) + 1] / 1e6}")
            lines.append(f"{full}_count{{{base}}} {running}")

    head("fleetproxy_pool_waiting", "gauge", "Requests waiting for a pooled connection to the backend now.")
    lines.extend(f'fleetproxy_pool_waiting{{backend="{_escape(b)}"}} {p[0]}' for b, p in sorted(pools.items()))
    head("fleetproxy_pool_connections", "gauge", "Open connections to the backend (in use and idle).")
    lines.extend(f'fleetproxy_pool_connections{{backend="{_escape(b)}"}} {p[1]}' for b, p in sorted(pools.items()))
    head("fleetproxy_pool_refused_total", "counter",
         "Requests the backend's connection pool turned away (503): too many waiting, or waited too long.")
    lines.extend(f'fleetproxy_pool_refused_total{{backend="{_escape(b)}"}} {p[2]}' for b, p in sorted(pools.items()))
    head("fleetproxy_open_connections", "gauge", "Client connections open, over all workers.")
    lines.append(f"fleetproxy_open_connections {connections}")
    head("fleetproxy_open_streams", "gauge", "Event streams being relayed, over all workers.")
    lines.append(f"fleetproxy_open_streams {streams}")
    head("fleetproxy_metrics_overflow_total", "counter",
         "Requests counted under the _other label set: a worker's observe.max_series was full.")
    lines.append(f"fleetproxy_metrics_overflow_total {dropped}")

    head("fleetproxy_model_demand", "gauge",
         "Requests waiting + running for a model across its backends, as vLLM last reported them.")
    lines.extend(f'fleetproxy_model_demand{{model="{_escape(m)}",cluster="{_escape(c)}"}} {d:g}' for m, c, d, _ in demand)
    head("fleetproxy_model_queued", "gauge",
         "Requests for a model waiting in the proxy: for a backend connection, or in the tenants' fair queue.")
    lines.extend(f'fleetproxy_model_queued{{model="{_escape(m)}",cluster="{_escape(c)}"}} {q}' for m, c, _, q in demand)
    head("fleetproxy_model_tokens_in_flight", "gauge",
         "Prompt tokens of requests admitted and not finished, estimated from the body (bytes / 4), over all workers.")
    lines.extend(f'fleetproxy_model_tokens_in_flight{{model="{_escape(m)}"}} {t}' for m, t in sorted(flight.items()))


def demand_rows(cfg, reports, pools, now, fair=None):
    """(model, cluster, vLLM's waiting + running, proxy queue) per configured model;
    ``reports``: backend label -> its freshest routing.load.Report or None; ``pools``:
    backend label -> requests waiting in the proxy for a connection; ``fair``: cluster ->
    requests held by the tenants' fair queue (``fair_waiting``). The catch-all cluster's model is "*".
    A report older than the load's max_age at ``now`` (monotonic seconds) counts nothing, as
    routing ignores it: a backend that went down or away would otherwise hold its last queue in
    the demand an autoscaler reads, for good."""
    oldest = now - cfg.load.max_age
    rows = []
    for cluster in cfg.all_clusters():
        members = [b.label for b in getattr(cluster, "backends", ())]
        if not members:
            continue
        demand = 0.0
        for label in members:
            r = reports.get(label)
            if r is not None and r.at >= oldest:
                demand += r.waiting + (r.running or 0)
        queued = sum(pools.get(label, 0) for label in members) + (fair or {}).get(cluster.name, 0)
        for model in cluster.models or ["*"]:
            rows.append((model, cluster.name, demand, queued))
    return rows


def fair_waiting(merged):
    """cluster -> requests the tenants' fair queue holds, over workers (series (cluster, "", ""))."""
    out = {}
    for (cluster, backend, tenant), cells in merged[0].items():
        if cluster and not backend and not tenant:
            out[cluster] = out.get(cluster, 0) + cells[S_POOL_WAITING]
    return out


def pool_waiting(merged):
    out = {}
    for (_, backend, _), cells in merged[0].items():
        out[backend] = out.get(backend, 0) + cells[S_POOL_WAITING]
    return out


assert S_IN_FLIGHT < S_POOL_WAITING
