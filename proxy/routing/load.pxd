# Types for Cython's compile of load.py (the native build; see _speedups/__init__.py): a load
# report, read on every response (Endpoint.observe_in_band) and by every pick that weighs
# pressure, as struct members. Its __slots__ say the same for the pure build.
cimport cython


cdef class Report:
    cdef public object waiting, running, kv, source, running_at
    cdef public double at


@cython.locals(report=Report)
cpdef pressure(report, in_flight, now, max_age)
