"""Beside the data path, never blocking it: what the proxy tells operators about requests.

``Observer`` (observer.py) is the one object the data path talks to (``Context.observe``; None when metrics,
access log and tracing are all off, so the hot path then pays a None test per hook). The
exchange makes a ``metrics.Timing`` per request only when there is an observer, stamps it at
a few points, and calls ``done`` once, from whichever ending ran.
"""

from .table import CLIENT_ABORT, OK, OUTCOMES, REFUSED, RETRIED, TIMEOUT, UPSTREAM_ERROR  # noqa: F401

__all__ = ["Observer", "Timing", "OK", "CLIENT_ABORT", "REFUSED", "TIMEOUT", "UPSTREAM_ERROR", "outcome_of"]


def __getattr__(name):
    # On first use, not with the package: the compiled observer reads exchanges as structs
    # (observer.pxd), so importing it imports the data path, which the supervisor, reading
    # only the metrics table and exposition, must not load (tests/test_supervisor_lean.py).
    if name in ("Observer", "outcome_of"):
        from . import observer

        return getattr(observer, name)
    if name == "Timing":  # metrics.py brings the body walk and the stream's usage reader with it
        from .metrics import Timing

        return Timing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
