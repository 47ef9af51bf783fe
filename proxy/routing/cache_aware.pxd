# Types for Cython's compile of cache_aware.py (the native build; see _speedups/__init__.py): the
# policy's state, read per request as struct members; the two calls a cluster makes per request
# (blocks, pick) and every call a placement makes C calls, its counts C doubles, its lists of
# members' positions walked by C indices. Its __slots__ say the same for the pure build.
cimport cython

from _speedups.prefix_c cimport PrefixTable
from proxy.routing.bodywalk cimport Prompt
from proxy.routing.fields cimport prompt_of
from proxy.routing.policies cimport Bound, Snapshot, _ceil, least_request, ring_order

cdef bint _COMPILED
cdef long long _M32
cdef double OVER, SLACK, PRIOR, OVER_PRIOR  # read per placement: C doubles, not module look-ups
cdef Py_ssize_t KEPT, SHED, CACHED, HOT, OVER_SHARE, NEW, SHORT

cdef extern from "math.h":
    double fleetproxy_exp "exp" (double x) nogil


cdef class Cell:
    cdef public double value, when


cdef class CacheAware:
    cdef public Bound bound
    cdef public double spread, window
    cdef public PrefixTable table  # _speedups.PrefixTable in the native build: matches and records are C calls
    cdef public object block, depth, ttl_ms, groups
    cdef public list recent, conversations
    cdef public Cell placed
    cdef public list counts

    @cython.locals(prompt=Prompt)
    cpdef blocks(self, fields)
    @cython.locals(members=tuple, weights=tuple, n=Py_ssize_t, j=Py_ssize_t, chosen=Py_ssize_t,
                   index=Py_ssize_t, indices=list, cell=Cell, scale=double, first="long long", cached=list,
                   ranked=list, pressures=list, matches=list, holders=list, bound=Bound, table=PrefixTable)
    cpdef pick(self, Snapshot snap, blocks, exclude=*, limit=*, now=*)
    @cython.locals(weights=tuple, usable=list, roomy=list, best=Py_ssize_t, chosen=Py_ssize_t, n=Py_ssize_t,
                   j=Py_ssize_t, total=double, fair=double, placed=double, group_share=double, hot=bint,
                   over=bint, conversations=list, recent=list, window=double, total_weight=double,
                   started=list, loads=list, shares=list, group_cell=Cell, cell=Cell, weight=double)
    cdef Py_ssize_t _place(self, tuple members, list indices, list ranked, list cached, group, Bound bound,
                           double scale, list pressures, exclude, limit, double now, Snapshot snap) except -2


@cython.locals(elapsed=double)
cdef double aged(Cell cell, double now, double window) noexcept

cdef double _exp(double x) noexcept

cdef Cell _cell(list cells, Py_ssize_t index)

@cython.locals(ranked=list, holding=Py_ssize_t, n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, k=Py_ssize_t,
               c=Py_ssize_t)
cpdef list _ranked(list order, list cached)

@cython.locals(j=Py_ssize_t)
cdef list _roomy(list usable, Bound bound, list pressures, double scale, tuple weights)

cpdef _usable(member, exclude, limit)

@cython.locals(load=double, queueing=object)
cdef bint _has_room(Bound bound, tuple pressure, double scale, double weight) except -1

@cython.locals(best=Py_ssize_t, i=Py_ssize_t)
cdef Py_ssize_t _least(list keys, list ties) except -1
