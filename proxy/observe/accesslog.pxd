# Types for Cython's compile of accesslog.py (the native build; see _speedups/__init__.py): the
# request's fields read as struct members of its exchange (a Relay), the times in C doubles.
cimport cython

from _speedups.framing_c cimport ResponseFramer as NativeFramer
from proxy.http.relay cimport Relay
from proxy.observe.metrics cimport Timing


cdef class AccessLog:
    cdef public object loop, fd, timer
    cdef public list buf

    @cython.locals(obs=Timing, framer=NativeFramer, t0=double, t_body=double, ts=double, ms="long long")
    cpdef write(self, Relay ex, int status, Py_ssize_t outcome, double now, tuple tokens, model, backend)

    cpdef flush(self)


@cython.locals(us="long long")
cpdef double _ms(double seconds)

cpdef str _text(bytes data)
