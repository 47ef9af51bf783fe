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

from _speedups import ResponseFramer

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
REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-forwarded-proto", b"x-request-id"}
# A chunked response goes to an HTTP/1.1 client as it came, chunk framing included.
_RESPONSE_DROP_CHUNKED = HOP_BY_HOP - {b"transfer-encoding"}
# A response's framing fields stay whatever its Connection names: the proxy forwards the body
# as the upstream framed it, so the client needs them to find its end (a backend's
# ``Connection: content-length`` would otherwise leave a body with no length on a kept-alive
# connection: the client would wait for the close, or read the next response as this body).
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))
# What a client says about where the request came from: believed only from a trusted peer.
FORWARDING = frozenset((b"x-forwarded-for", b"forwarded", b"x-real-ip", b"x-forwarded-host", b"x-forwarded-port"))

# vLLM's in-band load report (routing/load.py): asked for on the request, read and removed
# from the response, unless the client asked for it itself.
LOAD_FORMAT = b"endpoint-load-metrics-format"
# upstream_head's last fields: the body's length, after a request for the load report or not.
_LENGTH = b"\r\ncontent-length: "
_LENGTH_ASK = b"\r\n" + LOAD_FORMAT + b": text" + _LENGTH
_LENGTH_STR, _LENGTH_ASK_STR = _LENGTH.decode(), _LENGTH_ASK.decode()
_COMPILED = not __file__.endswith(".py")  # this module runs as its Cython build (heads.pxd)
LOAD_REPORT = b"endpoint-load-metrics"
_REQUEST_ID = b"x-request-id"
_RATELIMIT = b"x-ratelimit-"

_MAX_CACHED = 512  # entries in each of the caches below, by the bytes that come in


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
        if len(name) == 10 and name.lower() == b"connection":
            connection_tokens(value, tokens)
    return tokens


def upstream_head(
    method, target, headers, host, forwarded_for, request_id, body_len, extra=(), ask_load=False, trusted=True,
    body=b"",
):
    """The request head sent to an endpoint: our framing, our Host, forwarding headers added.

    ``headers`` hold lower-cased names as the client sent them (an endpoint's adapter may have
    rewritten them), or are bytes: the client's fields already written as this writes them,
    what it drops left out (``plainrequest.Fields.forwarded``); ``host`` is the endpoint's authority; ``forwarded_for`` the client address
    (the peer); ``extra`` fields the proxy adds after the client's were filtered (a provider's
    API key: a client's Connection option cannot remove it); ``ask_load``: ask the endpoint
    for its load report (only when the client did not). ``trusted``: the peer is a trusted
    proxy (``peer_trusted``), so its X-Forwarded-For is extended with ``forwarded_for`` and its
    Forwarded, X-Real-IP, X-Forwarded-Host and -Port pass; else they are dropped and
    X-Forwarded-For is ``forwarded_for`` alone. ``body``: bytes sent right after the head (a
    small request body), joined to it: one copy, one write.
    """
    sized = body_len or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS")  # a length field goes
    if _COMPILED and type(headers) is bytes and not extra:  # a plain request's: one C write (heads.pxd)
        written = fleetproxy_upstream_plain(  # noqa: F821
            method, target, host, headers, forwarded_for, request_id, body_len, sized, ask_load, body)
        if written is not None:
            return written
    # From the Host field on, a line's CRLF goes with the line after it, so that a field is two
    # parts and the head's end one: few parts to join.
    line = _host_lines.get(host)
    if line is None:
        line = _host_line(host)
    parts = [method, b" ", target, line]
    named = None
    xff = None
    # ``Connection: keep-alive``, what clients send, names a field dropped anyway: the walk over
    # every field for the options (``_named``) is for any other value, or for a Connection
    # field whose name is not in lower case (an adapter's), whose options count too.
    keep_alive = odd = False
    if type(headers) is bytes:
        parts.append(headers)
        headers = ()
    for name, value in headers:
        field = _request_fields.get(name)
        if field is None:
            field = _request_field(name)
        if type(field) is not bytes:  # a kind (_Q_*)
            kind = field
            if kind == _Q_CONNECTION:
                if value != b"keep-alive":
                    if named is None:
                        named = _named(headers)
                else:
                    keep_alive = True
                continue
            if kind == _Q_DROP or not trusted:
                continue
            if kind == _Q_XFF:
                xff = value if xff is None else xff + b", " + value
                continue
            field = b"\r\n" + name + b": "  # a forwarding field, from a trusted peer
        elif len(name) == 10 and (name[0] == 67 or name[0] == 99) and name.lower() == b"connection":
            odd = True
        parts.append(field)
        parts.append(value)
    if named is None and keep_alive and odd:
        named = _named(headers)
    if named:
        # Drop the fields the Connection header named, including ones seen before it (an
        # X-Forwarded-For so named is hop-by-hop too: not extended, not forwarded).
        parts = _drop_fields(parts, 4, named)
        if b"x-forwarded-for" in named:
            xff = None
    if xff is None:
        line = _peer_lines.get(forwarded_for)
        if line is None:
            line = _peer_line(forwarded_for)
        parts.append(line)
    else:
        parts.append(b"\r\nx-forwarded-for: ")
        parts.append(xff + b", " + forwarded_for)
        parts.append(_PROTO_ID)
    parts.append(request_id)
    for name, value in extra:
        parts += (b"\r\n", name, b": ", value)
    if sized:
        if _COMPILED:  # the number written into one bytes object in C (heads.pxd)
            parts.append(fleetproxy_length_line(_LENGTH_ASK if ask_load else _LENGTH, body_len))  # noqa: F821
        else:  # a str encoded: cheaper interpreted than bytes %
            parts.append((f"{_LENGTH_ASK_STR if ask_load else _LENGTH_STR}{body_len}\r\n\r\n").encode())
    else:
        parts.append(b"\r\n" + LOAD_FORMAT + b": text\r\n\r\n" if ask_load else b"\r\n\r\n")
    if body:
        parts.append(body)
    return _join(parts)


# What upstream_head does with a client's field, by its (lower-cased) name: a kind (_Q_*) for
# those of REQUEST_DROP and FORWARDING (which pass only from a trusted peer), else the
# field's start as written, CRLF first (learned per name, up to _MAX_CACHED more: a client's
# names are few).
_Q_DROP = 1
_Q_CONNECTION = 2  # dropped, and names more
_Q_FORWARDING = 3
_Q_XFF = 4  # extended
_request_fields = {**dict.fromkeys(FORWARDING, _Q_FORWARDING), b"x-forwarded-for": _Q_XFF}
_request_fields.update(dict.fromkeys(REQUEST_DROP, _Q_DROP))
_request_fields[b"connection"] = _Q_CONNECTION
_PRESET = len(_request_fields)
_PROTO_ID = b"\r\nx-forwarded-proto: http\r\nx-request-id: "
# {an endpoint's authority: the request line's end and the Host field} and {a peer: its
# X-Forwarded-For field and what follows up to the request id}, each up to _MAX_CACHED.
_host_lines = {}
_peer_lines = {}


def _request_field(name):
    field = b"\r\n" + name + b": "
    if len(_request_fields) < _PRESET + _MAX_CACHED:
        _request_fields[name] = field
    return field


def _host_line(host):
    line = b" HTTP/1.1\r\nhost: " + host
    if len(_host_lines) < _MAX_CACHED:
        _host_lines[host] = line
    return line


def _peer_line(peer):
    line = b"\r\nx-forwarded-for: " + peer + _PROTO_ID
    if len(_peer_lines) < _MAX_CACHED:
        _peer_lines[peer] = line
    return line


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


def client_head(framer, request_id, close, dechunk, asked_load=True, rechunk=False, extra=b"", body=b"", body_at=0):
    """(the response head sent to the client from what the upstream sent, the upstream's load
    report or None).

    ``close``: this response ends the client connection (say so). ``dechunk``: the client is
    HTTP/1.0, so the body goes de-chunked and the end of the body is the close.
    ``rechunk``: the upstream's body is close-delimited and goes chunked to this HTTP/1.1 client.
    ``asked_load``: the client asked for the load report; else it is removed. Options of the
    upstream's Connection drop the fields they name, never the framing ones (``_FRAMING``).
    ``extra``: fields the proxy adds, CRLF-terminated (a tenant's x-ratelimit-* fields).
    ``body``: the first body bytes for the client, joined after the head (one copy, one write);
    ``body_at``: where they start in it (the relay passes a whole response's read as it came).

    The head the client gets is mostly the upstream's as it came: where the framer kept it
    (``raw_head``: written as these fields would be), runs of it are copied between the fields
    dropped, rather than the head rebuilt field by field (``_rebuilt_head``, which stays the
    rule: a Connection field, rare from a backend, goes there, and tests hold the two equal).
    """
    if type(framer) is ResponseFramer:  # the relay's (compiled: its slots read in C)
        native = framer
        raw = native.raw_head
        reason = native.reason
    else:  # the other build's, in tests
        raw = framer.raw_head
        reason = framer.reason
    if _COMPILED and raw is not None:  # the walk below in C, one pass and one copy (heads.pxd)
        copied = fleetproxy_client_copy(raw, len(reason) + 15, request_id, close, dechunk, asked_load,  # noqa: F821
                                        rechunk, extra, body, body_at)
        if copied is not None:
            return copied
    if body_at:  # the rarer walks below: the body's bytes as their own object
        body = body[body_at:]
    if raw is None:
        return _rebuilt_head(framer, request_id, close, dechunk, asked_load, rechunk, extra, body)
    buf = raw  # compiled: its bytes, sliced without a slice object
    size = len(raw)
    parts = []
    has_id = False
    report = None
    kept = 0  # raw[kept:at] is still to be copied
    at = len(reason) + 15  # the status line: "HTTP/1.1 200 " reason CRLF
    while at < size:  # each field's line, "name: value" CRLF (raw_head's form), read in place
        colon = _byte_at(buf, at, size, 58)  # ":"
        n = colon - at
        end = _byte_at(buf, colon, size, 13) + 2  # after the CRLF
        # vLLM's two names of a kind, as it writes them, compared in place; any other name of
        # a kind's length, or x-*, made an object and looked up.
        if n == 21 and _name_at(buf, at, LOAD_REPORT, 21):
            kind = _R_REPORT
        elif n == 12 and _name_at(buf, at, _REQUEST_ID, 12):
            kind = _R_ID
        elif buf[at] | 32 == 120:  # x-*: the request id in another case, x-ratelimit-*, or kept
            if n == 12 and _lower_at(buf, at, _REQUEST_ID, 12):
                kind = _R_ID
            elif n >= 12 and _lower_at(buf, at, _RATELIMIT, 12):
                kind = _R_RATELIMIT
            else:
                kind = _R_KEEP
        elif n < _KIND_LENGTHS_END and _KIND_LENGTHS[n]:
            kind = _response_kind(buf[at:colon])
        else:
            kind = _R_KEEP
        if kind:
            if kind == _R_CONNECTION:
                return _rebuilt_head(framer, request_id, close, dechunk, asked_load, rechunk, extra, body)
            if kind == _R_ID:
                has_id = True
            elif kind == _R_REPORT:
                report = buf[colon + 2:end - 2]
            if (
                kind == _R_HOP
                or (kind == _R_TE and dechunk)
                or (kind == _R_RATELIMIT and extra)
                or (kind == _R_REPORT and not asked_load)
            ):
                if at > kept:
                    parts.append(buf[kept:at])
                kept = end
        at = end
    if kept == 0:
        parts.append(raw)
    elif kept < at:
        parts.append(buf[kept:at])
    return _end(parts, request_id and not has_id, request_id, rechunk, extra, close, body), report


def _name_at(buf, pos, name, n):
    """Whether ``buf[pos:pos + n]`` is ``name`` (``n`` bytes; compiled: memcmp in place)."""
    if _COMPILED:
        return memcmp(buf + pos, name, n) == 0  # noqa: F821 (heads.pxd)
    return buf[pos:pos + n] == name


def _lower_at(buf, pos, name, n):
    """Whether ``buf[pos:pos + n]``, a field name (tchars), is ``name`` (lower-case letters and
    "-") ignoring case. Compiled: OR 0x20 makes a byte of such a name only from its two cases
    or itself; no other tchar."""
    if _COMPILED:
        for i in range(n):
            if buf[pos + i] | 32 != name[i]:
                return False
        return True
    return buf[pos:pos + n].lower() == name


def _byte_at(buf, pos, size, byte):
    """Where ``byte`` is next in ``buf[pos:size]`` (compiled: memchr through a pointer); the
    caller's head is raw_head, where it always is."""
    if not _COMPILED:
        return buf.find(byte, pos, size)
    found = memchr(buf + pos, byte, size - pos)  # noqa: F821 (heads.pxd)
    return found - buf if found else -1


# What client_head does with a response field, by its name: 0 (_R_KEEP) forwards it.
_R_KEEP = 0
_R_HOP = 1  # hop-by-hop (Connection and Transfer-Encoding have their own)
_R_CONNECTION = 2
_R_TE = 3  # Transfer-Encoding: hop-by-hop only where the body goes de-chunked
_R_RATELIMIT = 4  # x-ratelimit-*: replaced where the proxy sends its own (``extra``)
_R_ID = 5  # x-request-id: the upstream's stands
_R_REPORT = 6  # the load report: kept only for a client that asked for it
_response_kinds = {}  # {name as sent: its kind}, up to _MAX_CACHED names


def _kind_lengths(names):
    lengths = {len(name) for name in names}
    return bytes(i in lengths for i in range(max(lengths) + 1))


# Every name of a kind but _R_KEEP is x-* (x-request-id, x-ratelimit-*: told apart in place) or
# has one of these lengths (1 at its index): a field of any other name is kept without a look-up.
_KIND_LENGTHS = _kind_lengths(HOP_BY_HOP | {LOAD_REPORT})
_KIND_LENGTHS_END = len(_KIND_LENGTHS)


def _response_kind(name):
    """The kind of a response field named ``name`` (_R_*), a name client_head could not tell in
    place: not x-*, and of a hop-by-hop name's length or the load report's (in another case than
    vLLM's). Remembered by the name as sent: an upstream sends the same few names in the same
    case, so that a field costs one look-up, not a lower-cased copy (bounded: a backend
    inventing names gets them lower-cased each time)."""
    known = _response_kinds.get(name)
    if known is not None:
        return known
    lname = name.lower()
    if lname == b"connection":
        kind = _R_CONNECTION
    elif lname == b"transfer-encoding":
        kind = _R_TE
    elif lname in HOP_BY_HOP:
        kind = _R_HOP
    elif lname == LOAD_REPORT:
        kind = _R_REPORT
    else:
        kind = _R_KEEP
    if len(_response_kinds) < _MAX_CACHED:
        _response_kinds[name] = kind
    return kind


def _rebuilt_head(framer, request_id, close, dechunk, asked_load, rechunk, extra, body=b""):
    """client_head's result written field by field from what the framer parsed: the rules of
    the response head, for every head (client_head's copy is held to it)."""
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
            parts = _drop(parts, 3, named)
    return _end(parts, request_id and not has_id, request_id, rechunk, extra, close, body), report


def _end(parts, add_id, request_id, rechunk, extra, close, body):
    """The head in ``parts`` with what the proxy adds after the upstream's fields, and
    ``body`` after it, joined."""
    if add_id:
        parts.append(b"x-request-id: ")
        parts.append(request_id)
        parts.append(b"\r\n")
    if rechunk:
        parts.append(b"transfer-encoding: chunked\r\n")
    if extra:
        parts.append(extra)
    parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    if body:
        parts.append(body)
    return _join(parts)


def _join(parts):
    """``b"".join(parts)``; compiled, sized and copied in C (heads.pxd): a head is a dozen parts."""
    if _COMPILED:
        return fleetproxy_join(parts)  # noqa: F821 (heads.pxd)
    return b"".join(parts)


def _drop(parts, start, named):
    # parts[start:] come in (name, ": ", value, "\r\n") quads: parts less those Connection named.
    # Most often it names none of them (a client's "keep-alive"): the same list, no copy, and no
    # name lower-cased unless its length is one of theirs.
    lengths = {len(name) for name in named}
    out = None
    for i in range(start, len(parts), 4):
        name = parts[i]
        if len(name) in lengths and name.lower() in named:
            if out is None:
                out = parts[:i]
        elif out is not None:
            out += parts[i : i + 4]
    return parts if out is None else out


def _drop_fields(parts, start, named):
    # _drop for upstream_head's parts: from ``start`` they come in (CRLF name ": ", value) pairs.
    lengths = {len(name) + 4 for name in named}
    out = None
    for i in range(start, len(parts), 2):
        field = parts[i]
        if len(field) in lengths and field[2:-2].lower() in named:
            if out is None:
                out = parts[:i]
        elif out is not None:
            out += parts[i : i + 2]
    return parts if out is None else out


def chunk(payload):
    """One chunk in chunked coding."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)
