# Types for Cython's compile of cache_aware.py (the native build; see _speedups/__init__.py): the
# policy's state, read per request as struct members; the two calls a cluster makes per request
# (blocks, pick) and every call a placement makes C calls. Its __slots__ say the same for the
# pure build.
cimport cython

from proxy.routing.bodywalk cimport Prompt
from proxy.routing.fields cimport prompt_of
from proxy.routing.policies cimport Bound, Snapshot, _ceil, least_request, ring_order


cdef class CacheAware:
    cdef public object bound, spread, block, depth, table, ttl_ms, recent, window, groups, placed
    cdef public object conversations
    cdef public dict decisions

    @cython.locals(prompt=Prompt)
    cpdef blocks(self, fields)
    @cython.locals(members=tuple, weights=tuple, pressures=list, ranked=list, cached=list, bound=Bound,
                   j=Py_ssize_t)
    cpdef pick(self, Snapshot snap, blocks, exclude=*, limit=*, now=*)
    @cython.locals(weights=tuple, usable=list, roomy=list, best=Py_ssize_t, chosen=Py_ssize_t)
    cpdef _place(self, tuple members, list ranked, matches, group, Bound bound, scale, list pressures, exclude,
                 limit, now, Snapshot snap)


@cython.locals(elapsed=double)
cpdef aged(list cell, double now, double window)

cpdef _usable(member, exclude, limit)

cpdef _has_room(Bound bound, pressure, share)

@cython.locals(best=Py_ssize_t, i=Py_ssize_t)
cpdef _least(list items, list keys)
