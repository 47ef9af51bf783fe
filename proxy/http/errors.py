"""Typed errors with a status hint. Whoever raises decides whose fault it is.

A ``ClientError`` is a 4xx (the request broke a rule), an ``UpstreamError`` a 5xx (an endpoint
failed us), an ``InternalError`` a 500 (the proxy failed itself). ``responses.error`` turns any
of them into the bytes the client reads; nothing else renders an error.
"""


class ProxyError(Exception):
    status = 500
    type = "internal_error"

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


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_timeout"


class NoBackend(UpstreamError):
    status = 503
    type = "service_unavailable"


class InternalError(ProxyError):
    """A bug in the proxy caught at a protocol entry point: the request ends, the process lives."""
