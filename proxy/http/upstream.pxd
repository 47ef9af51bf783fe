# Types for Cython's compile of upstream.py (the native build; see _speedups/__init__.py).


cdef class UpstreamConnection:
    cdef public object pool, transport, exchange, closed, idle_since, requests, rx
