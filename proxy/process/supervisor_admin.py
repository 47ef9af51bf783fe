"""The public admin listener, served once by the supervisor for all workers.

It answers what it knows itself (liveness, workers, scaling) and fans everything else out to
each live worker's private admin port: ``/readyz`` is ready when any worker is, and
``/admin/backends`` lists each backend once, with its in-flight and request counts summed
over the workers and every worker's own view beside them.

Both listeners apply the same rules (``admin.AdminProtocol``): reads are open, ``GET
/admin/backends`` and ``GET /admin/workers`` included (read-only state); every POST needs the
admin token. A POST is checked here, then fanned out with the token in its Authorization
field, and each worker checks it again against its own copy (same environment, same file,
read at each check). Why the token rather than a private supervisor-to-worker secret: a
worker's private port is on 127.0.0.1, so any local process can reach it, and it must refuse
what the public port refuses; carrying the one token keeps a single rule and a single secret
on both listeners, and a worker started without a supervisor (``--single-process``, the demo)
is guarded by the very same code. The fan-out names the worker's own address in Host, so the
workers' Host check holds too.
"""

import asyncio

import orjson

from ..routing.load import Report
from . import metrics
from .admin import READ_ONLY, AdminProtocol

FANOUT_TIMEOUT = 2.0  # s for one worker's admin answer


def request_head(port, method, path, body_len, token=None):
    """The head of a fan-out request to the worker admin port ``port``: its own address in
    Host, the admin token when there is one, and the JSON content type when there is a body."""
    return b"".join(
        (
            b"%s %s HTTP/1.1\r\n" % (method.encode(), path.encode()),
            b"Host: 127.0.0.1:%d\r\nConnection: close\r\n" % port,
            b"Authorization: Bearer %s\r\n" % token.encode() if token else b"",
            b"Content-Type: application/json\r\n" if body_len else b"",
            b"Content-Length: %d\r\n\r\n" % body_len,
        )
    )


async def fetch(port, method, path, body=b"", token=None):
    """(status, parsed JSON or None) from a worker's private admin port."""
    try:
        async with asyncio.timeout(FANOUT_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_head(port, method, path, len(body), token) + body)
            raw = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return 0, None
    head, _, payload = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
        return status, orjson.loads(payload) if payload else None
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return 0, None


async def fan_out(sup, method, path, body=b""):
    """Ask every live worker; a mutating request carries the admin token (checked already)."""
    workers = sup.live_workers()
    token = None
    if method not in READ_ONLY:
        try:
            token = sup.cfg.admin.token()
        except ValueError:  # the file went bad since the check: the workers will refuse too
            token = None
    results = await asyncio.gather(*(fetch(w.admin_port, method, path, body, token) for w in workers))
    return [(w, status, payload) for w, (status, payload) in zip(workers, results)]


def workers_state(sup):
    return {
        "target": sup.target,
        "generation": sup.generation.number,
        "reuseport": sup.reuseport,
        "workers": [
            {
                "slot": w.slot,
                "pid": w.pid,
                "generation": w.generation.number,
                "ready": w.ready,
                "draining": w.draining,
            }
            for w in sorted(sup.all_workers(), key=lambda w: (w.generation.number, w.slot))
        ],
    }


async def backends_state(sup):
    answers = [(w, p) for w, status, p in await fan_out(sup, "GET", "/admin/backends") if status == 200]
    merged = {}  # by name: discovered members may come and go in a different order per worker
    for worker, payload in answers:
        for backend in payload.get("backends", []):
            entry = merged.get(backend.get("name"))
            if entry is None:
                entry = merged[backend.get("name")] = {
                    "name": backend.get("name"),
                    "url": backend.get("url"),
                    "source": backend.get("source", "static"),
                    "healthy": False,
                    "in_flight": 0,
                    "requests": 0,
                    "workers": [],
                }
            entry["healthy"] = entry["healthy"] or bool(backend.get("healthy"))
            entry["in_flight"] += backend.get("in_flight", 0)
            entry["requests"] += backend.get("requests", 0)
            entry["in_flight_shared"] = backend.get("in_flight_all", 0)
            load = backend.get("load")
            if load is not None and (entry.get("load") is None or load["age_s"] < entry["load"]["age_s"]):
                entry["load"] = load  # the same shared report every worker reads; the freshest view
            entry["workers"].append({"slot": worker.slot, "pid": worker.pid, **backend})
    out = dict(answers[0][1]) if answers else {}
    out["backends"] = list(merged.values())
    out["workers"] = len(answers)
    return out


def report(counters, endpoint):
    """The freshest load report on ``endpoint`` in shared memory, or None."""
    cell = counters.freshest_report(endpoint)
    return Report(*counters.report_fields(cell)) if cell >= 0 else None


async def metrics_text(sup):
    """Prometheus text for the whole process group, from the generation's shared memory.

    The backend counters live in the current generation's segment: a reload (SIGHUP) starts
    them from zero, which Prometheus reads as a counter reset. The request metrics live in the
    supervisor's own table and totals, and never restart (``observe/exposition.py``).
    """
    gen = sup.generation
    counters = gen.counters
    health = {b["name"]: b["healthy"] for b in (await backends_state(sup)).get("backends", [])}
    rows = [
        metrics.endpoint_row(label, counters.in_flight(i), counters.requests(i), health.get(label), report(counters, i))
        for i, label in enumerate(gen.labels)
    ]
    merged = sup.totals.merged(sup.metrics) if sup.metrics is not None else None
    return metrics.exposition(rows, len(sup.live_workers()), sup.restarts, gen.number, gen.cfg, merged, sup.tenants)


async def handle(sup, method, path, body):
    if path == "/healthz":
        return 200, {"status": "ok", "workers": len(sup.live_workers())}
    if path == "/readyz":
        if sup.stopping:
            return 503, {"status": "draining"}
        statuses = [status for _, status, _ in await fan_out(sup, "GET", "/readyz")]
        if 200 in statuses:
            return 200, {"status": "ok", "ready_workers": statuses.count(200)}
        return 503, {"status": "unavailable", "reason": "no worker is ready"}
    if path == "/admin/workers":
        if method == "POST":
            try:
                target = int(orjson.loads(body)["workers"])
            except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
                return 400, {"error": 'expected a JSON body {"workers": N}'}
            await sup.scale(target)
        return 200, workers_state(sup)
    if path == "/metrics" and method == "GET":
        return 200, await metrics_text(sup)
    if path == "/admin/backends" and method == "GET":
        return 200, await backends_state(sup)
    if path.startswith("/admin/"):
        answers = await fan_out(sup, method, path, body)
        if not answers:
            return 503, {"error": "no live worker"}
        status = max(s for _, s, _ in answers)
        return status, {"workers": [{"slot": w.slot, "pid": w.pid, "status": s, "body": p} for w, s, p in answers]}
    return 404, {"error": f"no admin route {method} {path}"}


async def start(sup, sock):
    host = sup.cfg.admin_address[0]

    async def handle_request(method, path, body):
        return await handle(sup, method, path, body)

    def settings():
        return sup.cfg.admin  # the current generation's (a reload may change the token file)

    return await sup.loop.create_server(lambda: AdminProtocol(handle_request, settings, host), sock=sock)
