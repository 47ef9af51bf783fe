# Types for Cython's compile of cache_aware.py (the native build; see _speedups/__init__.py): the
# policy's state, read per request as struct members. Its __slots__ say the same for the pure
# build.


cdef class CacheAware:
    cdef public object bound, spread, block, depth, table, ttl_ms, recent, window, groups, placed
    cdef public object conversations, decisions
