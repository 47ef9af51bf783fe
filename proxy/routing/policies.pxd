# Types for Cython's compile of policies.py (the native build; see _speedups/__init__.py): a
# cluster's snapshot, the bound and the policies' state, read by every pick as struct members,
# and the picks and walks (the ring, least request) C calls with C indices. Their __slots__ say
# the same for the pure build. The members stay duck-typed (any object with label, weight,
# load(), pressure()).
cimport cython


cdef class Snapshot:
    cdef public tuple members, weights, schedule
    cdef public list points, owners
    cdef public object total_weight, full


cdef class Bound:
    cdef public object load_factor, floor

    cpdef scale(self, pressures, total_weight)
    cpdef room(self, load, queueing, cap, sticky)


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

# The ring's indices only: the bit masks (``seen``, ``full``) are Python ints, as wide as the
# cluster is long.
@cython.locals(snap=Snapshot, points=list, owners=list, npoints=Py_ssize_t, i=Py_ssize_t, step=Py_ssize_t)
cpdef ring_order(snap, key_hash)

cpdef _ceil(x)
