"""Every response the proxy makes itself, data port and admin port, rendered in one place.

On the data port every error has the OpenAI shape that SDKs parse
(``{"error": {"message", "type", "param", "code"}}``), the proxy's own ``/health`` included;
an error after a stream began is vLLM's in-band event (``sse_error_event``). Fixed bytes are
built once at import.
"""

import orjson

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    417: b"Expectation Failed",
    421: b"Misdirected Request",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

JSON = b"application/json"
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def response(status, body, content_type=JSON, request_id=b"", close=False, headers=b""):
    """A complete HTTP/1.1 response with a body of known length; ``headers``: extra fields,
    each ending in CRLF."""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            % (status, REASONS.get(status, b"Unknown"), content_type, len(body)),
            b"x-request-id: " + request_id + b"\r\n" if request_id else b"",
            headers,
            b"connection: close\r\n\r\n" if close else b"\r\n",
            body,
        )
    )


def head_only(response):
    """``response`` without its body: the answer to a HEAD request (RFC 9110 9.3.2; the
    Content-Length it would have had stays)."""
    return response[:response.find(b"\r\n\r\n") + 4]


def json_response(status, payload, request_id=b"", close=False):
    """``payload``: anything orjson encodes, or bytes already encoded."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return response(status, body, JSON, request_id, close)


# -- errors ----------------------------------------------------------------------------------


def error_body(message, type, status):
    return orjson.dumps({"error": {"message": message, "type": type, "param": None, "code": status}})


def error(err, request_id=b"", close=True, headers=b""):
    """The response for ``err`` (any errors.ProxyError); ``headers`` as in ``response``."""
    body = error_body(err.public or err.message, err.type, err.status)
    return response(err.status, body, JSON, request_id, close, headers)


def sse_error_event(message, type="upstream_error", status=502):
    """vLLM's in-band stream error: the openai SDK raises APIError on it."""
    return b"data: " + error_body(message, type, status) + b"\n\n"


# -- the data port's own answers -------------------------------------------------------------

HEALTH_OK = orjson.dumps({"status": "ok"})
HEALTH_DOWN = error_body("no healthy backend", "service_unavailable", 503)


def health(ready, close=False):
    """``GET /health`` on the data port: 200 while any endpoint may take traffic."""
    if ready:
        return response(200, HEALTH_OK, JSON, b"", close)
    return response(503, HEALTH_DOWN, JSON, b"", close)


def models_body(models):
    """``GET /v1/models`` as vLLM answers it, listing the configured models."""
    return orjson.dumps(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fleetproxy"} for m in models],
        }
    )
