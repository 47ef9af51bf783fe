# Types for Cython's compile of policies.py (the native build; see _speedups/__init__.py): a
# cluster's snapshot, read by every pick as struct members. Its __slots__ say the same for the
# pure build. The members stay duck-typed (any object with label, weight, load(), pressure()).
cimport cython


cdef class Snapshot:
    cdef public tuple members, weights, schedule
    cdef public list points, owners
    cdef public object total_weight, full


@cython.locals(snap=Snapshot, n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t)
cpdef least_request(snap, exclude=*, limit=*, rand=*)
