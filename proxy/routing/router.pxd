# Types for Cython's compile of router.py (the native build; see _speedups/__init__.py): the
# router, its routes and a request's routing state as struct members, and every call of a
# routing decision, from select down to the policy and the endpoint's count, a C call. Their
# __slots__ say the same for the pure build (the Router has a __dict__ there).
cimport cython

from proxy.routing.cache_aware cimport CacheAware
from proxy.routing.cluster cimport Cluster
from proxy.routing.endpoint cimport Endpoint
from proxy.routing.fields cimport decode
from proxy.routing.retry cimport RetryPolicy
from proxy.observe.metrics cimport now as monotonic

cdef object _MONOTONIC


cdef class Route:
    cdef public tuple clusters
    cdef public object name, max_body


cdef class Selection:
    cdef public Route route
    cdef public Endpoint endpoint
    cdef public object headers, body, decoded, tried, attempts, counted
    cdef public bint model_only
    cdef public object blocks_of, prompt_blocks

    cpdef fields(self)
    cpdef blocks(self, CacheAware policy)
    cpdef release(self)


cdef class Router:
    cdef public object cfg, loop, clock, endpoints, sources, discovery, counters, slot, columns, table, clusters
    cdef public object by_model, model_only, models, ready_endpoints, on_request, gate
    cdef public Py_ssize_t short_body
    cdef public dict routes
    cdef public Route catch_all, default_route
    cdef public RetryPolicy retry

    cpdef double now(self) except? -1.0
    cpdef select(self, headers, body)
    @cython.locals(selection=Selection, route=Route)
    cpdef prepare(self, headers, bytes body)
    @cython.locals(route=Route, endpoint=Endpoint)
    cpdef place(self, Selection selection)
    @cython.locals(cluster=Cluster, endpoint=Endpoint)
    cpdef _pick(self, Route route, Selection selection, exclude, now)
    @cython.locals(retry=RetryPolicy, current=Endpoint, endpoint=Endpoint)
    cpdef reselect(self, Selection selection, now)
    cpdef _route(self, Selection selection)
