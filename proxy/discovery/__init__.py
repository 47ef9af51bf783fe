"""Members found at run time, beside the static ``backends:``, in the order they are used:

- ``members``   sans-IO: DNS answers and EndpointSlices -> endpoint configs; membership diffs
- ``columns``   which shared-memory column a discovered member uses, agreed by the workers
- ``api``       a minimal Kubernetes API client (GET, watch) on asyncio streams
- ``dns``, ``kubernetes``   the loops: resolve / list + watch, then ``Router.set_members``

Every worker runs the loops of its own router (``start``). Why not the supervisor, telling the
workers: a worker then needs no channel from the supervisor besides its boot spec, a
single-process proxy discovers with the very same code, and a worker that restarts catches up
by itself. The cost is one watch (or one lookup per interval) per worker, a few per pod, which
the API server's watch cache serves without effort; the workers agree on the ring because the
ring depends only on members' labels, and on the shared columns through ``columns``.
"""

import logging

from ..periodic import tick
from .columns import TOUCH

log = logging.getLogger("fleetproxy.discovery")


def sources(router, resolve=None, env=None):
    """One loop object per cluster with ``discovery:``, publishing into ``router``."""
    # Imported where a cluster uses them: the supervisor imports this package for ``columns``
    # alone, and a worker without discovery should not hold the Kubernetes client in memory.
    out = []
    for spec in router.cfg.all_clusters():
        discovery = getattr(spec, "discovery", None)
        if discovery is None:
            continue
        if discovery.dns is not None:
            from .dns import DnsWatch

            watch = DnsWatch(discovery.dns, spec.name, None, resolve)
        else:
            from .kubernetes import SliceWatch

            watch = SliceWatch(discovery.kubernetes, spec.name, None, env)
        watch.publish = _publisher(router, spec.name, watch.source)
        out.append(watch)
    router.discovery = out  # their state() goes into the router's (/admin/backends)
    return out


def _publisher(router, cluster, source):
    def publish(members):
        added, removed, changed, _ = router.set_members(cluster, source, members)
        if added or removed or changed:
            log.info(
                "%s: cluster %s: +%s -%s ~%s (%d member(s))",
                source, cluster, added or "[]", removed or "[]", changed or "[]", len(members),
            )

    return publish


def start(router, loop, resolve=None, env=None):
    """Start the discovery loops of ``router`` (and the refresh of its column claims); returns
    their tasks, for the caller to cancel."""
    watches = sources(router, resolve, env)
    if not watches:
        return []
    return [loop.create_task(w.run()) for w in watches] + [loop.create_task(_touch_forever(router))]


async def _touch_forever(router):
    while True:
        router.columns.touch(router.discovered())
        await tick(TOUCH)
