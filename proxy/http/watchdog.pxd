# Types for Cython's compile of watchdog.py (the native build; see _speedups/__init__.py): every
# request joins and leaves the watched set once, as C calls from the relay (Context.watchdog is
# typed). Its __slots__ say the same for the pure build.


cimport cython

from proxy.http.relay cimport Relay


cdef class Watchdog:
    cdef public object loop, tick, timer
    cdef public list watched
    cdef public Py_ssize_t count

    @cython.locals(at=Py_ssize_t)
    cpdef add(self, Relay relay)
    @cython.locals(at=Py_ssize_t, last=Relay)
    cpdef discard(self, Relay relay)
