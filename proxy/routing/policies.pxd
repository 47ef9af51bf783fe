# Types for Cython's compile of policies.py (the native build; see _speedups/__init__.py): a
# cluster's snapshot, the bound and the policies' state, read by every pick as struct members,
# and the picks and walks (the ring, least request) C calls with C indices. Their __slots__ say
# the same for the pure build. The members stay duck-typed (any object with label, weight,
# load(), pressure()).
cimport cython

cdef bint _COMPILED


cdef class Snapshot:
    cdef public tuple members, weights, schedule
    cdef public list points, owners
    cdef public object total_weight


cdef class Bound:
    # Read by every pick, for every member: C numbers (a load, a cap compared as C doubles,
    # exact for any count of requests).
    cdef public double load_factor
    cdef public Py_ssize_t floor

    @cython.locals(total=double, load=double)
    cpdef double scale(self, list pressures, double total_weight) except? -1.0
    cpdef bint room(self, double load, queueing, double cap, bint sticky) noexcept


cdef class RoundRobin:
    cdef public object next

    cpdef pick(self, Snapshot snap, exclude=*, limit=*)


cdef class ConsistentHash:
    cdef public Bound bound

    @cython.locals(members=tuple, npoints=Py_ssize_t, i=Py_ssize_t, weights=tuple, pressures=list)
    cpdef pick(self, Snapshot snap, key_hash, exclude=*, limit=*, now=*)


cpdef hash_bytes(data)

@cython.locals(snap=Snapshot, n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t)
cpdef least_request(snap, exclude=*, limit=*, rand=*)

@cython.locals(snap=Snapshot, points=list, owners=list, npoints=Py_ssize_t, n=Py_ssize_t, i=Py_ssize_t,
               j=Py_ssize_t, seen=bytearray, order=list)
cpdef list ring_order(snap, unsigned long long key_hash)

# The points are 32-bit hashes: C integers of 64 bits hold any of them, the key included.
@cython.locals(key="unsigned long long", point="unsigned long long", lo=Py_ssize_t, hi=Py_ssize_t, mid=Py_ssize_t)
cpdef Py_ssize_t successor(list points, unsigned long long key_hash) except -1

@cython.locals(n=Py_ssize_t)
cpdef Py_ssize_t _ceil(double x) noexcept
