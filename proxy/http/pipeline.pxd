# Types for Cython's compile of pipeline.py (the native build; see _speedups/__init__.py). A
# client connection's whole state is declared here, on the first class of the chain Pipeline ->
# downstream.Downstream, so that reading and dispatching requests are struct accesses rather than
# attribute lookups; deadlines.Deadlines stays a Python mixin. Downstream's __slots__ say the
# same for the pure build.
cimport cython

from proxy.http.direct cimport Sender
from proxy.http.request cimport RequestReader, Sink
from proxy.process.context cimport Context

cdef extern from "string.h":
    const unsigned char *memchr(const void *s, int c, size_t n) nogil

cdef bint _COMPILED
cdef int _IDLE, _ERROR


@cython.locals(n=Py_ssize_t, seen=Py_ssize_t, i=Py_ssize_t, buf="const unsigned char *", lf="const unsigned char *")
cpdef bint few_blank_lines(bytes data, Py_ssize_t room)


cdef class Pipeline(Sink):
    # What a write reads (``Downstream.write``, once per token event of a stream): first, on
    # the object's first cache line, which the relay has just touched (relay.pxd says why).
    cdef public Sender sender  # how write reaches the socket (http/direct.py)
    cdef public bint closed, writing_paused
    cdef public Context ctx
    cdef public RequestReader reader  # fed every read: C calls and struct reads
    cdef public object loop, transport, peer, trusted, active
    cdef public object timer, stall_since, stall_size
    # Tested on every request: typed, so a test is a C comparison, not a call of PyObject_IsTrue.
    cdef public list queue  # exchanges parsed, waiting for their turn
    cdef public bytes unparsed  # or None
    cdef public bint advancing
    # Read and counted on every read and request: C ints (the pure build's are Python ints).
    cdef public int paused  # PAUSE_* bits
    cdef public bint feeding, completed
    cdef public Py_ssize_t requests, queued_size, partial, queued_bytes

    @cython.locals(ctx=Context, waiting=Py_ssize_t)
    cpdef Py_ssize_t _room(self) except? -1
    @cython.locals(n=Py_ssize_t, pos=Py_ssize_t, end=Py_ssize_t, room=Py_ssize_t)
    cpdef _parse(self, data)
    @cython.locals(size=Py_ssize_t, delta=Py_ssize_t)
    cpdef _account(self)
    # Downstream's, called by the exchange at its end: through the type's table, not by name.
    cpdef exchange_done(self, exchange)
    cpdef write(self, data)  # Downstream's: every byte to the client
