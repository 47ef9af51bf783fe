# Types for Cython's compile of cluster.py (the native build; see _speedups/__init__.py): a
# cluster, picked from per request as struct members, and its pick a C call into the policy and
# the request's Selection. Its __slots__ say the same for the pure build.
cimport cython

from proxy.routing.cache_aware cimport CacheAware
from proxy.routing.fields cimport prompt_prefix
from proxy.routing.policies cimport ConsistentHash, Snapshot, hash_bytes
from proxy.routing.router cimport Selection


cdef class Cluster:
    cdef public object name, models, endpoints, policy, keys, limit, vnodes, fallback, points, provider, choose
    cdef public bint hashed, cached
    cdef public Snapshot snapshot, panic

    cpdef key_hash(self, Selection selection)
    @cython.locals(snap=Snapshot, policy=CacheAware, ring=ConsistentHash)
    cpdef pick(self, Selection selection, exclude, now, Snapshot snapshot=*)
