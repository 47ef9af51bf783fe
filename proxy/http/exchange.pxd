# Types for Cython's compile of exchange.py: its state is declared on relay.Relay (relay.pxd).
from proxy.http.relay cimport Relay
from proxy.process.context cimport Context


cdef class Exchange(Relay):
    cpdef start(self)
    cpdef _route(self, Context ctx)
    cpdef _connect_or_send(self)
    cpdef on_status(self, status, reusable)
    cpdef complete(self, reusable)
    cpdef break_stream(self, message, err=*)
    cpdef upstream_failed(self, message, timeout=*, retryable=*)
    cpdef fail(self, err)
    cpdef finish(self, reusable)
