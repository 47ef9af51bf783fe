# Types for Cython's compile of health.py (the native build; see _speedups/__init__.py): an
# endpoint's health, read on every response it answers (Endpoint.answered) as struct members.
# Its __slots__ say the same for the pure build.


cdef class HealthState:
    cdef public object up, passes, fails, ejected_until, ejections, returned_at, drained
    cdef public Py_ssize_t failures  # tested on every response: a C int, not an object's truth
