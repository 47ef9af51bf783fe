# Types for Cython's compile of connection_pool.py (the native build; see _speedups/__init__.py):
# a pool, taken from and given back to per request as struct members. Its __slots__ say the same
# for the pure build.
cimport cython

from proxy.http.upstream cimport UpstreamConnection
from proxy.observe.metrics cimport clock, now


cdef class ConnectionPool:
    cdef public object loop, host, port, max_connections, max_idle, connect_timeout, high_water
    cdef public double idle_timeout
    cdef public object conns, waiters, opened, ssl, server_hostname, closing, max_waiters, wait_timeout
    cdef public object queued, wait_timeouts, refused, spares
    cdef public Py_ssize_t spare, opening
    cdef public list idle

    @cython.locals(conn=UpstreamConnection, t=double)
    cpdef take_idle(self)
    cpdef release(self, UpstreamConnection conn)
