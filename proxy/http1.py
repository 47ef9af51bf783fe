"""Sans-IO HTTP/1.1 rules for the proxy: which request heads to refuse, which headers are
hop-by-hop, and how the heads we send are serialized (RFC 9110, RFC 9112).

Nothing here touches a socket; ``downstream`` and ``upstream`` call in with bytes.
"""

from .errors import ClientError

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded. Content-Length and
# Transfer-Encoding are dropped too: the proxy frames the body it read itself.
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
_RESPONSE_DROP_CHUNKED = HOP_BY_HOP - {b"transfer-encoding"}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def connection_tokens(headers):
    """Lower-cased tokens of every Connection header: those fields are hop-by-hop too."""
    tokens = set()
    for name, value in headers:
        if name == b"connection":
            for token in value.split(b","):
                tokens.add(token.strip().lower())
    return tokens


def check_transfer_encoding(value, seen):
    """A request may only use chunked, once and last (RFC 9112 6.1); a proxy that cannot
    decode another coding must not guess the length."""
    if seen or value.strip().lower() != b"chunked":
        raise ClientError("unsupported or repeated Transfer-Encoding")


def check_version(version):
    if version == "1.1" or version == "1.0":
        return
    if version == "0.9":
        raise ClientError("HTTP/0.9 requests are not supported")
    raise ClientError(f"HTTP version {version} not supported", status=505)


def upstream_head(method, target, headers, host, forwarded_for, request_id, body_len, extra=()):
    """The request head sent to a backend: our framing, our Host, forwarding headers added.

    ``headers`` hold lower-cased names as the client sent them; ``host`` is the backend's
    authority; ``forwarded_for`` the client address to append to X-Forwarded-For.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    named = None
    xff = None
    for name, value in headers:
        if name in _REQUEST_DROP:
            if name == b"connection":
                named = connection_tokens(headers)
            continue
        if name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
            continue
        if named is not None and name in named:
            continue
        parts += (name, b": ", value, b"\r\n")
    if named:
        # Drop the fields the Connection header named, including ones seen before it.
        parts = _drop_named(parts, named)
    xff = forwarded_for if xff is None else xff + b", " + forwarded_for
    parts += (b"x-forwarded-for: ", xff, b"\r\nx-forwarded-proto: http\r\nx-request-id: ", request_id, b"\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    if body_len or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        parts.append(b"content-length: %d\r\n\r\n" % body_len)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def _drop_named(parts, named):
    # parts after the request line come in (name, ": ", value, "\r\n") quads.
    head = parts[:6]
    out = head
    for i in range(6, len(parts), 4):
        if parts[i] not in named:
            out += parts[i : i + 4]
    return out


def client_head(framer, request_id, close, dechunk):
    """The response head sent to the client from what the upstream sent.

    ``close``: this response ends the client connection (say so). ``dechunk``: the client is
    HTTP/1.0, so the body goes de-chunked and the end of the body is the close.
    """
    parts = [b"HTTP/1.1 %d " % framer.status, framer.reason, b"\r\n"]
    named = None
    has_id = False
    drop = HOP_BY_HOP if dechunk else _RESPONSE_DROP_CHUNKED
    for name, value in framer.headers:
        lname = name.lower()
        if lname in drop:
            if lname == b"connection":
                named = {t.strip().lower() for t in value.split(b",")}
            continue
        if lname == b"x-request-id":
            has_id = True
        parts += (name, b": ", value, b"\r\n")
    if named:
        parts = parts[:3] + [
            p for i in range(3, len(parts), 4) if parts[i].lower() not in named for p in parts[i : i + 4]
        ]
    if request_id and not has_id:
        parts += (b"x-request-id: ", request_id, b"\r\n")
    parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    return b"".join(parts)


def chunk(payload):
    """One chunk in chunked coding."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)
