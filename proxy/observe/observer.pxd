# Types for Cython's compile of observer.py (the native build; see _speedups/__init__.py): the
# observer the data path calls four times per request, as C calls (Context.observe is typed),
# reading each request's Timing as a struct. Its __slots__ say the same for the pure build.
cimport cython

from proxy.observe.metrics cimport Recorder, Timing, model_of, tokens_of
from proxy.observe.streamusage cimport wants_usage


cdef class Observer:
    cdef public object loop, log, tracer, table, owned, stream_usage
    cdef public Recorder recorder

    @cython.locals(timing=Timing)
    cpdef begin(self, ex)

    @cython.locals(timing=Timing, now=double)
    cpdef done(self, ex, status, outcome)

    @cython.locals(timing=Timing)
    cpdef retried(self, ex, endpoint, status)

    @cython.locals(timing=Timing)
    cpdef admitted(self, ex)

    cpdef waited(self, ex, seconds, fresh)
