"""Typed errors with a status hint, rendered to bytes in one place.

Whoever raises decides whose fault it is: a ClientError is a 4xx (the request was wrong), an
UpstreamError is a 5xx (a backend failed us). ``render`` turns either into a complete HTTP/1.1
response whose body has the OpenAI error shape that SDKs parse
(``{"error": {"message", "type", "param", "code"}}``), and ``sse_error_event`` into the in-band
event vLLM itself sends when a stream fails after its 200.
"""

import orjson

REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


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
    """A backend failed before the response started: refused, reset, bad framing."""

    status = 502
    type = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_timeout"


class NoBackend(UpstreamError):
    status = 503
    type = "service_unavailable"


def error_body(message, type, status):
    return orjson.dumps({"error": {"message": message, "type": type, "param": None, "code": status}})


def render(err, request_id=b"", close=True):
    """A complete HTTP/1.1 error response for ``err`` (any ProxyError)."""
    body = error_body(err.message, err.type, err.status)
    head = [
        b"HTTP/1.1 %d %s\r\n" % (err.status, REASONS.get(err.status, b"Error")),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
    ]
    if request_id:
        head.append(b"x-request-id: " + request_id + b"\r\n")
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    head.append(body)
    return b"".join(head)


def sse_error_event(message, type="upstream_error", status=502):
    """vLLM's in-band stream error: the openai SDK raises APIError on it."""
    return b"data: " + error_body(message, type, status) + b"\n\n"
