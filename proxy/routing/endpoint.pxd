# Types for Cython's compile of endpoint.py (the native build; see _speedups/__init__.py): an
# endpoint's state, read and counted per request as struct members, and the accounting the
# router and the policies call per request as C calls. Its __slots__ say the same for the pure
# build.
cimport cython

from proxy.http.connection_pool cimport ConnectionPool
from proxy.observe.metrics cimport clock, now as arrived
from proxy.process.shm cimport SharedCounters
from proxy.routing.health cimport HealthState
from proxy.routing.load cimport Report, pressure

cdef double _IN_BAND_EVERY


cdef class Endpoint:
    cdef public ConnectionPool pool  # None for an endpoint without a loop (tests, tools)
    cdef public object spec, key, label, host, port, authority, weight, ssl, server_hostname
    cdef public object health_path, health_cfg, outlier, eligible, clusters, owner
    cdef public object adapter, provider
    # The worker group's shared counters (None: unattached), read per pick as C calls.
    cdef public SharedCounters counters
    cdef public Py_ssize_t index
    cdef public long long report_at
    # Counted on every request: C integers, and the shared row's cells through a typed view
    # (an add in place, no int object read out, made and stored back).
    cdef public Py_ssize_t in_flight, peak, requests, cell, req_cell
    cdef public long long[::1] cells
    cdef public object report_cell, max_age, ask_load, health_cell
    cdef public HealthState health
    cdef public Report report

    @cython.locals(n=Py_ssize_t)
    cpdef acquire(self)
    cpdef release(self)
    @cython.locals(counters=SharedCounters)
    cpdef load(self)
    @cython.locals(counters=SharedCounters, cell=Py_ssize_t, at=cython.longlong)
    cpdef current_report(self)
    cpdef pressure(self, now)
    @cython.locals(report=Report, now=double)
    cpdef observe_in_band(self, value)
    @cython.locals(health=HealthState)
    cpdef answered(self, status, loop)
