# Types for Cython's compile of request.py (the native build; see _speedups/__init__.py): the
# reader's fields as struct members, read and written by llhttp's callbacks per header.


cdef class RequestReader:
    cdef public object limits, sink, clock, parser, phase, since, _url, _headers, _body, _body_size, _head_bytes
    cdef public object _head_wire, _host, _te, _expect, _request_id, asks_load, _length, _upgrade, _h2c, _resume
    cdef public object _gap, _fields, _http10

    cpdef _reset(self)
    cpdef _unfinished_head(self, data, spanned)
    cpdef _special_header(self, name, value, limits)
    cpdef _no_http09(self)
