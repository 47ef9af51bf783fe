# Types for Cython's compile of request.py (the native build; see _speedups/__init__.py): the
# reader's fields as struct members, read and written by llhttp's callbacks per header.
cimport cython

from proxy.http.plainrequest cimport Bounds, read_plain
from proxy.observe.metrics cimport now as monotonic


cdef int _IDLE, _HEAD, _BODY


cdef class Sink:
    cpdef on_request(self, method, target, headers, body, http10, keep_alive, bytes request_id)


cdef class RequestReader:
    cdef public Bounds bounds
    cdef public Sink sink  # on_request: a C call
    cdef public object limits, clock, parser, _url, _headers, _body
    cdef public double since
    cdef public int phase  # IDLE, READING_HEAD, READING_BODY: read after every feed
    cdef public object _request_id, _length, _upgrade, _h2c, _resume
    # Counts and flags as C values: each header's callback adds and tests them.
    cdef public Py_ssize_t _body_size, _head_bytes, _head_wire, _gap, _fields
    cdef public bint _host, _te, _expect, asks_load, _http10, fast, _plain_seen

    cpdef double now(self) except? -1.0
    cpdef _reset(self)
    @cython.locals(rest=bytes, phase=int, now=int, size=Py_ssize_t)
    cpdef feed(self, data)

    @cython.locals(headers=list)
    cpdef on_header(self, name, value)
    cpdef _unfinished_head(self, data, spanned)
    cpdef _special_header(self, name, value, limits)
    cpdef _no_http09(self)
    @cython.locals(start=Py_ssize_t, n=Py_ssize_t)
    cpdef _plain(self, bytes data)
