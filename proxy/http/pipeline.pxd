# Types for Cython's compile of pipeline.py (the native build; see _speedups/__init__.py). A
# client connection's whole state is declared here, on the first class of the chain Pipeline ->
# downstream.Downstream, so that reading and dispatching requests are struct accesses rather than
# attribute lookups; deadlines.Deadlines stays a Python mixin. Downstream's __slots__ say the
# same for the pure build.
cimport cython

from proxy.process.context cimport Context

cdef extern from "string.h":
    const unsigned char *memchr(const void *s, int c, size_t n) nogil

cdef bint _COMPILED


@cython.locals(n=Py_ssize_t, seen=Py_ssize_t, i=Py_ssize_t, buf="const unsigned char *", lf="const unsigned char *")
cpdef bint few_blank_lines(bytes data, Py_ssize_t room)


cdef class Pipeline:
    cdef public Context ctx
    cdef public object loop, transport, reader, peer, trusted, queue, active, closed, writing_paused
    cdef public object paused, timer, unparsed, advancing, feeding, completed, requests, queued_size, partial
    cdef public object queued_bytes, stall_since, stall_size

    cpdef _room(self)
    cpdef _parse(self, data)
    cpdef _account(self)
