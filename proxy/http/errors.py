"""Typed errors with a status hint. Whoever raises decides whose fault it is.

A ``ClientError`` is a 4xx (the request broke a rule), an ``UpstreamError`` a 5xx (an endpoint
failed us), an ``InternalError`` a 500 (the proxy failed itself). ``responses.error`` turns any
of them into the bytes the client reads; nothing else renders an error.

What an endpoint did wrong is the operator's business, not the client's: its address and the
OS error go to the log (``message``), while the client reads ``public``, a fixed sentence, and
the request id that finds the log line. Errors the proxy decides on its own (a 4xx, no endpoint
left) say why to the client; they have no ``public``.
"""


class ProxyError(Exception):
    status = 500
    type = "internal_error"
    public = None  # what the client reads instead of ``message``; None: the message itself

    def __init__(self, message, status=None, type=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type


class ClientError(ProxyError):
    """The request broke a rule; the connection is closed after the answer."""

    status = 400
    type = "invalid_request_error"


class UpstreamError(ProxyError):
    """An endpoint failed before the response started: refused, reset, bad framing."""

    status = 502
    type = "upstream_error"
    public = "the backend failed to answer this request; the proxy's log has the details under its x-request-id"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_timeout"
    public = "the backend did not answer in time; the proxy's log has the details under its x-request-id"


class NoBackend(UpstreamError):
    status = 503
    type = "service_unavailable"
    public = None  # the router's own decision (which clusters, which limit), fit to be read


class InternalError(ProxyError):
    """A bug in the proxy caught at a protocol entry point: the request ends, the process lives."""


RETRY_AFTER = 1  # s: told to a connection turned away or refused for the worker's queued bytes


class Overloaded(NoBackend):
    """The worker is at a bound it shares among clients (connections, queued bytes): a 503
    with ``Retry-After``; the client did nothing wrong and may retry, here or elsewhere."""

    retry_after = RETRY_AFTER
