"""Sans-IO HTTP/1.1 head rules for what crosses the proxy: which fields are hop-by-hop, and how
the heads we send are serialized, upstream and back to the client (RFC 9110 7.6.1, RFC 9112).

Nothing here touches a socket. The request-side refusals (what a client may not send) live in
``request.py``; this module only rewrites heads that were already accepted.

Forwarding headers are believed only from a trusted peer (``trusted``, from
``Config.trusted_proxies``): from anyone else X-Forwarded-For, Forwarded, X-Real-IP,
X-Forwarded-Host and X-Forwarded-Port are what the client claims about itself, so they are
dropped and X-Forwarded-For is the peer's address alone (Envoy's default at the edge; a
backend that logs, rate-limits or authorizes by client address would otherwise believe it).
"""

import functools
import ipaddress

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
# A response's framing fields stay whatever its Connection names: the proxy forwards the body
# as the upstream framed it, so the client needs them to find its end (a backend's
# ``Connection: content-length`` would otherwise leave a body with no length on a kept-alive
# connection: the client would wait for the close, or read the next response as this body).
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))
# What a client says about where the request came from: believed only from a trusted peer.
_FORWARDING = frozenset((b"x-forwarded-for", b"forwarded", b"x-real-ip", b"x-forwarded-host", b"x-forwarded-port"))

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


def upstream_head(
    method, target, headers, host, forwarded_for, request_id, body_len, extra=(), ask_load=False, trusted=True
):
    """The request head sent to an endpoint: our framing, our Host, forwarding headers added.

    ``headers`` hold lower-cased names as the client sent them (an endpoint's adapter may have
    rewritten them); ``host`` is the endpoint's authority; ``forwarded_for`` the client address
    (the peer); ``extra`` fields the proxy adds after the client's were filtered (a provider's
    API key: a client's Connection option cannot remove it); ``ask_load``: ask the endpoint
    for its load report (only when the client did not). ``trusted``: the peer is a trusted
    proxy (``peer_trusted``), so its X-Forwarded-For is extended with ``forwarded_for`` and its
    Forwarded, X-Real-IP, X-Forwarded-Host and -Port pass; else they are dropped and
    X-Forwarded-For is ``forwarded_for`` alone.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    named = None
    xff = None
    for name, value in headers:
        if name in _REQUEST_DROP:
            if name == b"connection" and named is None:
                named = _named(headers)
            continue
        if name in _FORWARDING:
            if not trusted:
                continue
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
                continue
        parts += (name, b": ", value, b"\r\n")
    if named:
        # Drop the fields the Connection header named, including ones seen before it (an
        # X-Forwarded-For so named is hop-by-hop too: not extended, not forwarded).
        parts = parts[:6] + _drop(parts, 6, named)
        if b"x-forwarded-for" in named:
            xff = None
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


def peer_trusted(peer, proxies):
    """Whether ``peer`` (the client's address, bytes as ``Downstream.peer``) is one of
    ``proxies`` (``Config.trusted_proxies``: addresses or CIDRs). An IPv4 peer seen through a
    dual-stack socket (``::ffff:a.b.c.d``) is matched as IPv4; a peer that is no address (a
    Unix socket) is not trusted. Cached per peer: a worker sees few distinct front proxies."""
    if not proxies:
        return False
    return _peer_trusted(peer, tuple(proxies))


@functools.lru_cache(maxsize=4096)
def _peer_trusted(peer, proxies):
    try:
        address = ipaddress.ip_address(peer.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in trusted_networks(proxies))


@functools.lru_cache(maxsize=16)
def trusted_networks(proxies):
    """``proxies`` (a tuple of addresses or CIDRs) as networks; ValueError names a bad entry.
    Config validation can call it at load, so a typo never reaches a request."""
    networks = []
    for entry in proxies:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or CIDR") from None
    return tuple(networks)


def client_head(framer, request_id, close, dechunk, asked_load=True, rechunk=False, extra=b""):
    """(the response head sent to the client from what the upstream sent, the upstream's load
    report or None).

    ``close``: this response ends the client connection (say so). ``dechunk``: the client is
    HTTP/1.0, so the body goes de-chunked and the end of the body is the close.
    ``rechunk``: the upstream's body is close-delimited and goes chunked to this HTTP/1.1 client.
    ``asked_load``: the client asked for the load report; else it is removed. Options of the
    upstream's Connection drop the fields they name, never the framing ones (``_FRAMING``).
    ``extra``: fields the proxy adds, CRLF-terminated (a tenant's x-ratelimit-* fields).
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
        if extra and lname.startswith(b"x-ratelimit-"):
            continue  # a provider's own limits: the client is told its tenant's (``extra``)
        if lname == b"x-request-id":
            has_id = True
        elif lname == LOAD_REPORT:
            report = value
            if not asked_load:
                continue
        parts += (name, b": ", value, b"\r\n")
    if named:
        named -= _FRAMING
        if named:
            parts = parts[:3] + _drop(parts, 3, named)
    if request_id and not has_id:
        parts += (b"x-request-id: ", request_id, b"\r\n")
    if rechunk:
        parts.append(b"transfer-encoding: chunked\r\n")
    if extra:
        parts.append(extra)
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
