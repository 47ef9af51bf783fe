# Types for Cython's compile of endpoint.py (the native build; see _speedups/__init__.py): an
# endpoint's state, read and counted per request as struct members, and the accounting the
# router and the policies call per request as C calls. Its __slots__ say the same for the pure
# build.


cdef class Endpoint:
    cdef public object spec, key, label, host, port, authority, weight, pool, ssl, server_hostname, health
    cdef public object health_path, health_cfg, outlier, eligible, clusters, in_flight, peak, requests, owner
    cdef public object adapter, provider, counters, index, cells, cell, req_cell, report, report_at
    cdef public object report_cell, max_age, ask_load, health_cell

    cpdef acquire(self)
    cpdef release(self)
    cpdef load(self)
    cpdef current_report(self)
    cpdef pressure(self, now)
