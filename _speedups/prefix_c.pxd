# The compiled prefix table's declaration, for the modules that call it per request as C calls
# (proxy/routing/cache_aware.pxd: a placement's matches and records). prefix_c.pyx is the
# implementation; _speedups/prefix.py is the specification both follow.

cdef class PrefixTable:
    cdef long long[::1] _cells  # holds the buffer for as long as the table lives
    cdef long long *_p  # &_cells[0]
    cdef readonly Py_ssize_t endpoints
    cdef readonly Py_ssize_t slots
    cdef readonly Py_ssize_t ways
    cdef readonly Py_ssize_t sets
    cdef Py_ssize_t _width  # cells per set

    cdef Py_ssize_t _base(self, endpoint) except -1
    cpdef record(self, endpoint, hashes, now)
    cdef void _record(self, Py_ssize_t base, const long long *hs, Py_ssize_t n, long long now) noexcept nogil
    cpdef list matches(self, hashes, oldest)
    cdef list _matches(self, Py_ssize_t base, Py_ssize_t endpoints, hashes, oldest)
    cdef Py_ssize_t _match(self, Py_ssize_t base, const long long *hs, long long *offsets,
                           Py_ssize_t *known, Py_ssize_t n, long long oldest) noexcept nogil
