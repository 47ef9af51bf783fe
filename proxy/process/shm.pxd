# Types for Cython's compile of shm.py (the native build; see _speedups/__init__.py): the
# shared counters' reads that every pick makes (a column's in-flight sum, the freshest load
# report) as C loops over a typed view of the mapping.
cimport cython


cdef class Segment:
    cdef public object mm, name, path, cells
    cdef public bint owner


cdef class SharedCounters(Segment):
    cdef public Py_ssize_t slots, endpoints, row
    cdef long long[::1] view

    @cython.locals(view=cython.longlong[::1], row=Py_ssize_t, i=Py_ssize_t, end=Py_ssize_t,
                   total=cython.longlong)
    cpdef long long in_flight(self, Py_ssize_t endpoint) except? -1
    @cython.locals(view=cython.longlong[::1], row=Py_ssize_t, i=Py_ssize_t, end=Py_ssize_t, best=Py_ssize_t,
                   best_at=cython.longlong, at=cython.longlong)
    cpdef Py_ssize_t freshest_report(self, Py_ssize_t endpoint) except? -2
