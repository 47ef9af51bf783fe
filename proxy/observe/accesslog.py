"""One JSON line per proxied request (``observe.access_log``; ``--access-log``), off by default.

Lines are buffered in memory and written with one ``os.write`` when the buffer passes
``FLUSH_BYTES`` or at the latest ``FLUSH_EVERY`` after the first line waiting, so a busy
worker makes one system call per few hundred requests. A worker that is killed loses at most
that last second; a draining one flushes on its way out (``close``). Fields: ``ts`` (Unix s),
``id``, ``tenant``, ``model``, ``backend``, ``attempts``, ``method``, ``path``, ``status``,
``outcome`` (as the ``outcome`` label of ``fleetproxy_requests_total``), ``ttft_ms`` (null
without a response body), ``total_ms``, ``prompt_tokens``, ``completion_tokens``,
``cached_tokens``, ``bytes`` (response body bytes from upstream).
"""

import os
import time

import orjson

from .table import OUTCOMES

FLUSH_BYTES = 64 * 1024  # bytes
FLUSH_EVERY = 1.0  # s


class AccessLog:
    def __init__(self, loop, path):
        self.loop = loop
        # "-": the worker's stdout, which the supervisor's own stdout is.
        self.fd = 1 if path == "-" else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.buf = []
        self.size = 0
        self.timer = None

    def write(self, ex, status, outcome, now, tokens, model, backend):
        obs = ex.obs
        selection = ex.selection
        line = orjson.dumps(
            {
                "ts": round(time.time(), 3),
                "id": ex.request_id.decode(errors="replace"),
                "tenant": obs.tenant,
                "model": model,
                "backend": backend or None,
                "attempts": selection.attempts if selection is not None else 0,
                "method": ex.method.decode(errors="replace"),
                "path": ex.target.decode(errors="replace"),
                "status": status,
                "outcome": OUTCOMES[outcome],
                "ttft_ms": round((obs.t_body - obs.t0) * 1000, 3) if obs.t_body > 0.0 else None,
                "total_ms": round((now - obs.t0) * 1000, 3),
                "prompt_tokens": tokens[0],
                "completion_tokens": tokens[1],
                "cached_tokens": tokens[2],
                "bytes": ex.framer.body_bytes if ex.framer is not None else 0,
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        self.buf.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(FLUSH_EVERY, self.flush)

    def flush(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.buf:
            return
        data = b"".join(self.buf)
        self.buf.clear()
        self.size = 0
        try:
            while data:  # a pipe or a file: a short write is possible, never a lost line
                data = data[os.write(self.fd, data):]
        except OSError:
            pass  # a log that cannot be written must not fail requests

    def close(self):
        self.flush()
        if self.fd != 1:
            os.close(self.fd)
