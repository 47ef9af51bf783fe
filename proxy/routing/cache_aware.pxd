# Types for Cython's compile of cache_aware.py (the native build; see _speedups/__init__.py): the
# policy's state, read per request as struct members, and the two calls a cluster makes per
# request (blocks, pick) as C calls. Its __slots__ say the same for the pure build.
cimport cython

from proxy.routing.fields cimport Prompt, prompt_of
from proxy.routing.policies cimport Snapshot, least_request


cdef class CacheAware:
    cdef public object bound, spread, block, depth, table, ttl_ms, recent, window, groups, placed
    cdef public object conversations
    cdef public dict decisions

    @cython.locals(prompt=Prompt)
    cpdef blocks(self, fields)
    cpdef pick(self, Snapshot snap, blocks, exclude=*, limit=*, now=*)
