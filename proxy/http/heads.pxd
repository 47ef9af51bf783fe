# Types for Cython's compile of heads.py (the native build; see _speedups/__init__.py): two
# heads per request are built here, so lengths, offsets and the field kinds are C ints, the
# fields' names and values bytes, and the upstream's head is sliced through a pointer.
cimport cython

from _speedups.framing_c cimport ResponseFramer as NativeFramer

cdef Py_ssize_t _MAX_CACHED, _KIND_LENGTHS_END
cdef int _R_KEEP, _R_HOP, _R_CONNECTION, _R_TE, _R_RATELIMIT, _R_ID, _R_REPORT
cdef int _Q_DROP, _Q_CONNECTION, _Q_FORWARDING, _Q_XFF
cdef dict _response_kinds, _request_fields, _host_lines, _peer_lines
cdef Py_ssize_t _PRESET
cdef bytes _PROTO_ID
cdef bytes _KIND_LENGTHS
cdef bytes _LENGTH, _LENGTH_ASK
cdef bint _COMPILED

cdef extern from "string.h":
    const char *memchr(const char *s, int c, size_t n) nogil
    int memcmp(const void *a, const void *b, size_t n) nogil

cdef bint _name_at(const char *buf, Py_ssize_t pos, const char *name, Py_ssize_t n) noexcept

@cython.locals(i=Py_ssize_t)
cdef bint _lower_at(const char *buf, Py_ssize_t pos, const char *name, Py_ssize_t n) noexcept
@cython.locals(found="const char *")
cdef Py_ssize_t _byte_at(const char *buf, Py_ssize_t pos, Py_ssize_t size, int byte) noexcept

cdef extern from *:
    """
    /* The heads' writers: n bytes put at d, the end returned; n >= 0 in decimal, its digits
       (fleetproxy_digits, backwards: the count returned) put in order. */
    #ifndef FLEETPROXY_PUT  /* the same in heads.pxd and accesslog.pxd: a module that cimports both gets one */
    #define FLEETPROXY_PUT
    static inline char *fleetproxy_put(char *p, const char *s, Py_ssize_t n) {
        memcpy(p, s, (size_t)n);
        return p + n;
    }
    #endif

    static inline char *fleetproxy_put_bytes(char *d, PyObject *b) {
        return fleetproxy_put(d, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
    }

    static inline int fleetproxy_digits(char *digits, Py_ssize_t n) {
        int k = 0;
        do { digits[k++] = (char)('0' + n % 10); n /= 10; } while (n > 0);
        return k;
    }

    static inline char *fleetproxy_put_digits(char *d, const char *digits, int k) {
        while (k)
            *d++ = digits[--k];
        return d;
    }

    /* prefix, then n in decimal, then CRLF CRLF, as one bytes object (upstream_head's end). */
    static PyObject *fleetproxy_length_line(PyObject *prefix, Py_ssize_t n) {
        char digits[24];
        int k = fleetproxy_digits(digits, n);
        PyObject *out = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(prefix) + k + 4);
        if (out != NULL) {
            char *d = fleetproxy_put_bytes(PyBytes_AS_STRING(out), prefix);
            fleetproxy_put(fleetproxy_put_digits(d, digits, k), "\\r\\n\\r\\n", 4);
        }
        return out;
    }
    """
    bytes fleetproxy_length_line(bytes prefix, Py_ssize_t n)

cdef extern from *:
    """
    /* b"".join(parts) for a list of bytes, sized first and copied once: no buffer acquired
       and released per part (bytes.join's way). Anything else in the list: bytes.join. */
    static PyObject *fleetproxy_join(PyObject *parts) {
        Py_ssize_t n = PyList_GET_SIZE(parts), size = 0, i;
        for (i = 0; i < n; i++) {
            PyObject *part = PyList_GET_ITEM(parts, i);
            if (!PyBytes_CheckExact(part)) {
                PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
                PyObject *out = empty ? _PyBytes_Join(empty, parts) : NULL;
                Py_XDECREF(empty);
                return out;
            }
            size += PyBytes_GET_SIZE(part);
        }
        PyObject *out = PyBytes_FromStringAndSize(NULL, size);
        if (out != NULL) {
            char *d = PyBytes_AS_STRING(out);
            for (i = 0; i < n; i++) {
                PyObject *part = PyList_GET_ITEM(parts, i);
                Py_ssize_t k = PyBytes_GET_SIZE(part);
                memcpy(d, PyBytes_AS_STRING(part), k);
                d += k;
            }
        }
        return out;
    }
    """
    bytes fleetproxy_join(list parts)

cdef extern from *:
    """
    /* upstream_head for a plain request (its fields already written, Fields.forwarded; nothing
       the proxy adds but its own fields): the request line, Host, the fields, X-Forwarded-For,
       -Proto, X-Request-Id, the load report ask and the length written into one bytes object,
       sized first. The parts and the rules are upstream_head's (a test holds the two paths to
       one another); None for arguments of another type, which take that path. */
    static PyObject *fleetproxy_upstream_plain(PyObject *method, PyObject *target, PyObject *host,
                                               PyObject *fields, PyObject *peer, PyObject *request_id,
                                               Py_ssize_t body_len, int with_length, int ask_load,
                                               PyObject *body) {
        static const char line[] = " HTTP/1.1\\r\\nhost: ", xff[] = "\\r\\nx-forwarded-for: ",
            proto[] = "\\r\\nx-forwarded-proto: http\\r\\nx-request-id: ",
            ask[] = "\\r\\nendpoint-load-metrics-format: text", length[] = "\\r\\ncontent-length: ";
        PyObject *parts[7] = {method, target, host, fields, peer, request_id, body};
        Py_ssize_t total = 0;
        for (int i = 0; i < 7; i++) {
            if (!PyBytes_CheckExact(parts[i]))
                Py_RETURN_NONE;
            total += PyBytes_GET_SIZE(parts[i]);
        }
        char digits[24];
        int k = with_length ? fleetproxy_digits(digits, body_len) : 0;
        total += 1 + (sizeof line - 1) + (sizeof xff - 1) + (sizeof proto - 1) + (ask_load ? sizeof ask - 1 : 0)
            + (with_length ? sizeof length - 1 + k : 0) + 4;
        PyObject *out = PyBytes_FromStringAndSize(NULL, total);
        if (out == NULL)
            return NULL;
        char *d = fleetproxy_put_bytes(PyBytes_AS_STRING(out), method);
        *d++ = ' ';
        d = fleetproxy_put_bytes(d, target);
        d = fleetproxy_put(d, line, sizeof line - 1);
        d = fleetproxy_put_bytes(d, host);
        d = fleetproxy_put_bytes(d, fields);
        d = fleetproxy_put(d, xff, sizeof xff - 1);
        d = fleetproxy_put_bytes(d, peer);
        d = fleetproxy_put(d, proto, sizeof proto - 1);
        d = fleetproxy_put_bytes(d, request_id);
        if (ask_load)
            d = fleetproxy_put(d, ask, sizeof ask - 1);
        if (with_length)
            d = fleetproxy_put_digits(fleetproxy_put(d, length, sizeof length - 1), digits, k);
        d = fleetproxy_put(d, "\\r\\n\\r\\n", 4);
        fleetproxy_put_bytes(d, body);
        return out;
    }
    """
    object fleetproxy_upstream_plain(method, target, host, fields, peer, request_id, Py_ssize_t body_len,
                                     bint with_length, bint ask_load, body)

@cython.locals(line=bytes, parts=list, name=bytes, value=bytes, field=object, kind=int, keep_alive=bint, odd=bint,
               written=object, sized=bint)
cpdef bytes upstream_head(method, target, headers, host, forwarded_for, request_id, Py_ssize_t body_len, extra=*,
                          bint ask_load=*, bint trusted=*, bytes body=*)

cdef bytes _request_field(bytes name)
cdef bytes _host_line(bytes host)
cdef bytes _peer_line(bytes peer)

cdef extern from *:
    """
    /* client_head's copy of raw_head (the upstream's head as "name: value" CRLF lines) in one
       walk and one allocation: each field's kind told from its name in place (the rules of
       heads._response_kind and client_head's x-* branch, a test holds the two builds to one
       another and to _rebuilt_head), the dropped fields' spans noted, then the kept runs, the
       proxy's fields and the first body bytes copied into the one bytes object the client
       gets. Returns (head, load report or None); None where the Python walk must run: a
       Connection field (_rebuilt_head's), more than 16 fields dropped, or arguments of
       another type. */
    enum { FP_KEEP, FP_HOP, FP_CONNECTION, FP_TE, FP_RATELIMIT, FP_ID, FP_REPORT };

    static int fleetproxy_lower_is(const char *s, const char *name, Py_ssize_t n) {
        /* OR 0x20 makes a tchar one of a lower-case letter's two cases, or "-" itself, only
           from those: exact for field names against names of lower-case letters and "-". */
        for (Py_ssize_t i = 0; i < n; i++)
            if ((s[i] | 0x20) != name[i])
                return 0;
        return 1;
    }

    static int fleetproxy_response_kind(const char *s, Py_ssize_t n) {
        if (n == 21 && memcmp(s, "endpoint-load-metrics", 21) == 0)
            return FP_REPORT;  /* vLLM's spelling */
        if (n == 12 && memcmp(s, "x-request-id", 12) == 0)
            return FP_ID;
        if ((s[0] | 0x20) == 'x') {
            if (n == 12 && fleetproxy_lower_is(s, "x-request-id", 12))
                return FP_ID;
            if (n >= 12 && fleetproxy_lower_is(s, "x-ratelimit-", 12))
                return FP_RATELIMIT;
            return FP_KEEP;
        }
        switch (n) {  /* HOP_BY_HOP and the load report, by length */
        case 2: return fleetproxy_lower_is(s, "te", 2) ? FP_HOP : FP_KEEP;
        case 7: return fleetproxy_lower_is(s, "trailer", 7) || fleetproxy_lower_is(s, "upgrade", 7) ? FP_HOP : FP_KEEP;
        case 10:
            if (fleetproxy_lower_is(s, "connection", 10))
                return FP_CONNECTION;
            return fleetproxy_lower_is(s, "keep-alive", 10) ? FP_HOP : FP_KEEP;
        case 16: return fleetproxy_lower_is(s, "proxy-connection", 16) ? FP_HOP : FP_KEEP;
        case 17: return fleetproxy_lower_is(s, "transfer-encoding", 17) ? FP_TE : FP_KEEP;
        case 18: return fleetproxy_lower_is(s, "proxy-authenticate", 18) ? FP_HOP : FP_KEEP;
        case 19: return fleetproxy_lower_is(s, "proxy-authorization", 19) ? FP_HOP : FP_KEEP;
        case 21: return fleetproxy_lower_is(s, "endpoint-load-metrics", 21) ? FP_REPORT : FP_KEEP;
        }
        return FP_KEEP;
    }

    static PyObject *fleetproxy_client_copy(PyObject *raw, Py_ssize_t at, PyObject *request_id, int close,
                                            int dechunk, int asked_load, int rechunk, PyObject *extra,
                                            PyObject *body, Py_ssize_t body_at) {
        if (!PyBytes_CheckExact(raw) || !PyBytes_CheckExact(request_id) || !PyBytes_CheckExact(extra)
                || !PyBytes_CheckExact(body) || body_at < 0 || body_at > PyBytes_GET_SIZE(body))
            Py_RETURN_NONE;
        const char *s = PyBytes_AS_STRING(raw);
        Py_ssize_t size = PyBytes_GET_SIZE(raw), drops[16][2], ndrops = 0, dropped = 0;
        Py_ssize_t report_at = -1, report_end = -1;
        int has_id = 0;
        while (at < size) {
            const char *sep = memchr(s + at, ':', size - at);  /* libc's vector search, not a byte loop */
            Py_ssize_t colon = sep != NULL ? sep - s : size;
            const char *cr = memchr(s + colon, 0x0D, size - colon);
            if (colon >= size || cr == NULL)
                Py_RETURN_NONE;  /* not raw_head's form: the Python walk says what it is */
            Py_ssize_t end = cr - s + 2;
            int kind = fleetproxy_response_kind(s + at, colon - at);
            if (kind != FP_KEEP) {
                if (kind == FP_CONNECTION)
                    Py_RETURN_NONE;
                if (kind == FP_ID)
                    has_id = 1;
                else if (kind == FP_REPORT) {
                    report_at = colon + 2;
                    report_end = end - 2;
                }
                if (kind == FP_HOP || (kind == FP_TE && dechunk)
                        || (kind == FP_RATELIMIT && PyBytes_GET_SIZE(extra))
                        || (kind == FP_REPORT && !asked_load)) {
                    if (ndrops == 16)
                        Py_RETURN_NONE;
                    drops[ndrops][0] = at;
                    drops[ndrops][1] = end;
                    ndrops++;
                    dropped += end - at;
                }
            }
            at = end;
        }
        Py_ssize_t id_size = PyBytes_GET_SIZE(request_id);
        int add_id = id_size > 0 && !has_id;
        Py_ssize_t total = size - dropped + (add_id ? 14 + id_size + 2 : 0) + (rechunk ? 28 : 0)
            + PyBytes_GET_SIZE(extra) + (close ? 21 : 2) + PyBytes_GET_SIZE(body) - body_at;
        PyObject *head = PyBytes_FromStringAndSize(NULL, total);
        if (head == NULL)
            return NULL;
        char *d = PyBytes_AS_STRING(head);
        Py_ssize_t from = 0;
        for (Py_ssize_t i = 0; i < ndrops; i++) {
            d = fleetproxy_put(d, s + from, drops[i][0] - from);
            from = drops[i][1];
        }
        d = fleetproxy_put(d, s + from, size - from);
        if (add_id)
            d = fleetproxy_put(fleetproxy_put_bytes(fleetproxy_put(d, "x-request-id: ", 14), request_id), "\\r\\n", 2);
        if (rechunk)
            d = fleetproxy_put(d, "transfer-encoding: chunked\\r\\n", 28);
        d = fleetproxy_put_bytes(d, extra);
        d = close ? fleetproxy_put(d, "connection: close\\r\\n\\r\\n", 21) : fleetproxy_put(d, "\\r\\n", 2);
        fleetproxy_put(d, PyBytes_AS_STRING(body) + body_at, PyBytes_GET_SIZE(body) - body_at);
        PyObject *report;
        if (report_at >= 0) {
            report = PyBytes_FromStringAndSize(s + report_at, report_end - report_at);
            if (report == NULL) {
                Py_DECREF(head);
                return NULL;
            }
        } else {
            report = Py_None;
            Py_INCREF(report);
        }
        PyObject *out = PyTuple_New(2);
        if (out == NULL) {
            Py_DECREF(head);
            Py_DECREF(report);
            return NULL;
        }
        PyTuple_SET_ITEM(out, 0, head);
        PyTuple_SET_ITEM(out, 1, report);
        return out;
    }
    """
    object fleetproxy_client_copy(bytes raw, Py_ssize_t at, request_id, bint close, bint dechunk, bint asked_load,
                                  bint rechunk, extra, bytes body, Py_ssize_t body_at)

@cython.locals(native=NativeFramer, copied=object, reason=bytes, raw=bytes, buf="const char *", parts=list, has_id=bint, kept=Py_ssize_t, at=Py_ssize_t,
               end=Py_ssize_t, n=Py_ssize_t, kind=int, size=Py_ssize_t, colon=Py_ssize_t)
cpdef tuple client_head(framer, request_id, bint close, bint dechunk, bint asked_load=*, bint rechunk=*, extra=*,
                        bytes body=*, Py_ssize_t body_at=*)

@cython.locals(known=object, lname=bytes, kind=int)
cdef int _response_kind(bytes name) except -1

# A Connection field's work: in every request from clients that send "Connection: keep-alive".
@cython.locals(tokens=set, name=bytes)
cdef set _named(headers)

@cython.locals(lengths=set, out=list, i=Py_ssize_t, name=bytes)
cdef list _drop(list parts, Py_ssize_t start, set named)

cdef bytes _join(list parts)

cdef bytes _end(list parts, bint add_id, request_id, bint rechunk, extra, bint close, bytes body)

@cython.locals(lengths=set, out=list, i=Py_ssize_t, field=bytes)
cdef list _drop_fields(list parts, Py_ssize_t start, set named)
