# Types for Cython's compile of exchange.py: its state is declared on relay.Relay (relay.pxd).
from proxy.http.relay cimport Relay
from proxy.process.context cimport Context
from proxy.routing.endpoint cimport Endpoint

cimport cython


cdef class Exchange(Relay):
    cpdef _setup(self, down, method, target, headers, body, http10, keep_alive, request_id, error)
    cpdef start(self)
    cpdef _route(self, Context ctx)
    @cython.locals(endpoint=Endpoint)
    cpdef _connect_or_send(self)
    @cython.locals(endpoint=Endpoint, ctx=Context)
    cpdef on_status(self, status, reusable)
    cpdef complete(self, reusable)
    cpdef break_stream(self, message, err=*)
    cpdef upstream_failed(self, message, timeout=*, retryable=*)
    cpdef fail(self, err)
    cpdef finish(self, reusable)


@cython.locals(ex=Exchange)
cpdef Exchange new_exchange(down, method, target, headers, body, http10, keep_alive, request_id)
