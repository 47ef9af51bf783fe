"""One line per proxied request (``access_log: true`` / ``--access-log``), beside the data path.

Off by default: the hot path then pays one attribute test per request. The outcome says how the
exchange ended: ``done`` (answered in full), ``error`` (the proxy answered with an error),
``broken`` (the upstream failed mid-response), ``client_gone`` (status 499, nginx's convention).
"""

import logging

log = logging.getLogger("fleetproxy.access")


def write(exchange, status, outcome):
    ctx = exchange.down.ctx
    framer = exchange.framer
    selection = exchange.selection
    endpoint = selection.endpoint if selection is not None else None
    log.info(
        '%s "%s %s" %d %s backend=%s attempts=%d bytes=%d ms=%.1f id=%s',
        exchange.down.peer.decode(),
        exchange.method.decode(errors="replace"),
        exchange.target.decode(errors="replace"),
        status,
        outcome,
        endpoint.label if endpoint is not None else "-",
        selection.attempts if selection is not None else 0,
        framer.body_bytes if framer is not None else 0,
        (ctx.loop.time() - exchange.t0) * 1000.0,
        exchange.request_id.decode(errors="replace"),
    )
