# Types for Cython's compile of observer.py (the native build; see _speedups/__init__.py): the
# observer the data path calls four times per request, as C calls (Context.observe is typed),
# reading each request's Timing as a struct. Its __slots__ say the same for the pure build.
cimport cython

from proxy.http.relay cimport Relay
from proxy.observe.accesslog cimport AccessLog
from proxy.observe.metrics cimport Recorder, Timing, clock, count_tokens, model_of, new_timing, now, tokens_of
from proxy.observe.streamusage cimport wants_usage
from proxy.routing.endpoint cimport Endpoint
from proxy.routing.router cimport Selection


cdef class Observer:
    cdef public object loop, tracer, table, owned, stream_usage
    cdef public AccessLog log
    cdef public Recorder recorder

    # An exchange (http/exchange.py) is a Relay: its fields are struct reads here.
    @cython.locals(timing=Timing)
    cpdef begin(self, Relay ex)

    @cython.locals(timing=Timing, now=double, selection=Selection, endpoint=Endpoint, clusters=tuple,
                   attempts=Py_ssize_t, fallback=bint)
    cpdef done(self, Relay ex, status, outcome)

    @cython.locals(timing=Timing)
    cpdef retried(self, Relay ex, endpoint, status)

    @cython.locals(timing=Timing, selection=Selection)
    cpdef admitted(self, Relay ex)

    cpdef waited(self, Relay ex, seconds, fresh)
