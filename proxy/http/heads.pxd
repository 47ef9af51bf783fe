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
    /* prefix, then n in decimal, then CRLF CRLF, as one bytes object (upstream_head's end). */
    static PyObject *fleetproxy_length_line(PyObject *prefix, Py_ssize_t n) {
        char digits[24];
        int k = 0;
        do { digits[k++] = (char)('0' + n % 10); n /= 10; } while (n > 0);
        Py_ssize_t size = PyBytes_GET_SIZE(prefix);
        PyObject *out = PyBytes_FromStringAndSize(NULL, size + k + 4);
        if (out != NULL) {
            char *d = PyBytes_AS_STRING(out);
            memcpy(d, PyBytes_AS_STRING(prefix), size);
            d += size;
            while (k) *d++ = digits[--k];
            memcpy(d, "\\r\\n\\r\\n", 4);
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

@cython.locals(line=bytes, parts=list, name=bytes, value=bytes, field=object, kind=int, keep_alive=bint, odd=bint)
cpdef bytes upstream_head(method, target, headers, host, forwarded_for, request_id, Py_ssize_t body_len, extra=*,
                          bint ask_load=*, bint trusted=*, bytes body=*)

cdef bytes _request_field(bytes name)
cdef bytes _host_line(bytes host)
cdef bytes _peer_line(bytes peer)

@cython.locals(native=NativeFramer, reason=bytes, raw=bytes, buf="const char *", parts=list, has_id=bint, kept=Py_ssize_t, at=Py_ssize_t,
               end=Py_ssize_t, n=Py_ssize_t, kind=int, size=Py_ssize_t, colon=Py_ssize_t)
cpdef tuple client_head(framer, request_id, bint close, bint dechunk, bint asked_load=*, bint rechunk=*, extra=*,
                        bytes body=*)

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
