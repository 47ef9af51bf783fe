# Types for Cython's compile of watchdog.py (the native build; see _speedups/__init__.py): every
# request joins and leaves the watched set once, as C calls from the relay (Context.watchdog is
# typed). Its __slots__ say the same for the pure build.


cdef class Watchdog:
    cdef public object loop, tick, timer
    cdef public set watched

    cpdef add(self, relay)
    cpdef discard(self, relay)
