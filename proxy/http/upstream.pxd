# Types for Cython's compile of upstream.py (the native build; see _speedups/__init__.py): every
# read of a response is handed to its exchange by a C call (``exchange`` a relay.Relay).
from proxy.http.connection_pool cimport ConnectionPool
from proxy.http.direct cimport Sender
from proxy.http.relay cimport Relay
from proxy.observe.metrics cimport hold, release


cdef class UpstreamConnection:
    # Read on every read of a response: first, on one cache line (relay.pxd says why).
    cdef public Relay exchange
    cdef public Py_ssize_t rx
    cdef public ConnectionPool pool
    cdef public object transport, closed
    cdef public Sender sender  # how write reaches the socket (http/direct.py)
    cdef public double idle_since
    cdef public Py_ssize_t requests

    cpdef write(self, data)
