# Types for Cython's compile of context.py (the native build; see _speedups/__init__.py): a
# worker's shared state as struct members, read by every request. Its fields are listed here
# and nowhere else: the pure build's Context has a __dict__.

from proxy.observe.observer cimport Observer


cdef class Context:
    cdef public Observer observe
    cdef public object cfg, loop, router, models_body, connections, turned_away, queued_bytes, warned, draining
    cdef public object access_log, read_limits, tenants, tick, first_byte_ticks, idle_ticks, watchdog
    cdef public object timer_cap, _rid_prefix, _rid
