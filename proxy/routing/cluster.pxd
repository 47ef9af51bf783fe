# Types for Cython's compile of cluster.py (the native build; see _speedups/__init__.py): a
# cluster, picked from per request as struct members. Its __slots__ say the same for the pure
# build.


cdef class Cluster:
    cdef public object name, models, endpoints, policy, hashed, cached, keys, limit, vnodes, snapshot
    cdef public object fallback, points, provider, choose, panic
