"""Sans-IO HTTP/1.1 head rules for what crosses the proxy: which fields are hop-by-hop, and how
the heads we send are serialized, upstream and back to the client (RFC 9110 7.6.1, RFC 9112).

Nothing here touches a socket. The request-side refusals (what a client may not send) live in
``request.py``; this module only rewrites heads that were already accepted.
"""

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded. Transfer-Encoding too:
# the proxy frames the request body it read itself (and de-chunks for HTTP/1.0 clients).
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)
# What the proxy sets itself on the upstream request.
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-forwarded-proto", b"x-request-id"}
# A chunked response goes to an HTTP/1.1 client as it came, chunk framing included.
_RESPONSE_DROP_CHUNKED = HOP_BY_HOP - {b"transfer-encoding"}

# vLLM's in-band load report (routing/load.py): asked for on the request, read and removed
# from the response, unless the client asked for it itself.
LOAD_FORMAT = b"endpoint-load-metrics-format"
LOAD_REPORT = b"endpoint-load-metrics"


def connection_tokens(value, tokens=None):
    """The lower-cased options of one Connection field value, added to ``tokens``: the fields
    they name are hop-by-hop too (RFC 9110 7.6.1). The one parser of Connection."""
    if tokens is None:
        tokens = set()
    for token in value.split(b","):
        token = token.strip()
        if token:
            tokens.add(token.lower())
    return tokens


def _named(headers):
    """Options of every Connection field among ``headers`` (names compared lower-cased)."""
    tokens = set()
    for name, value in headers:
        if name.lower() == b"connection":
            connection_tokens(value, tokens)
    return tokens


def upstream_head(method, target, headers, host, forwarded_for, request_id, body_len, extra=(), ask_load=False):
    """The request head sent to an endpoint: our framing, our Host, forwarding headers added.

    ``headers`` hold lower-cased names as the client sent them (an endpoint's adapter may have
    rewritten them); ``host`` is the endpoint's authority; ``forwarded_for`` the client address
    to append to X-Forwarded-For; ``extra`` fields the proxy adds after the client's were
    filtered (a provider's API key: a client's Connection option cannot remove it);
    ``ask_load``: ask the endpoint for its load report (only when the client did not).
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    named = None
    xff = None
    for name, value in headers:
        if name in _REQUEST_DROP:
            if name == b"connection" and named is None:
                named = _named(headers)
            continue
        if name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
            continue
        parts += (name, b": ", value, b"\r\n")
    if named:
        # Drop the fields the Connection header named, including ones seen before it.
        parts = parts[:6] + _drop(parts, 6, named)
    xff = forwarded_for if xff is None else xff + b", " + forwarded_for
    parts += (b"x-forwarded-for: ", xff, b"\r\nx-forwarded-proto: http\r\nx-request-id: ", request_id, b"\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    if ask_load:
        parts += (LOAD_FORMAT, b": text\r\n")
    if body_len or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        parts.append(b"content-length: %d\r\n\r\n" % body_len)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def client_head(framer, request_id, close, dechunk, asked_load=True):
    """(the response head sent to the client from what the upstream sent, the upstream's load
    report or None).

    ``close``: this response ends the client connection (say so). ``dechunk``: the client is
    HTTP/1.0, so the body goes de-chunked and the end of the body is the close.
    ``asked_load``: the client asked for the load report; else it is removed.
    """
    parts = [b"HTTP/1.1 %d " % framer.status, framer.reason, b"\r\n"]
    named = None
    has_id = False
    report = None
    drop = HOP_BY_HOP if dechunk else _RESPONSE_DROP_CHUNKED
    for name, value in framer.headers:
        lname = name.lower()
        if lname in drop:
            if lname == b"connection" and named is None:
                named = _named(framer.headers)
            continue
        if lname == b"x-request-id":
            has_id = True
        elif lname == LOAD_REPORT:
            report = value
            if not asked_load:
                continue
        parts += (name, b": ", value, b"\r\n")
    if named:
        parts = parts[:3] + _drop(parts, 3, named)
    if request_id and not has_id:
        parts += (b"x-request-id: ", request_id, b"\r\n")
    parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    return b"".join(parts), report


def _drop(parts, start, named):
    # parts[start:] come in (name, ": ", value, "\r\n") quads; keep those Connection did not name.
    out = []
    for i in range(start, len(parts), 4):
        if parts[i].lower() not in named:
            out += parts[i : i + 4]
    return out


def chunk(payload):
    """One chunk in chunked coding."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)
