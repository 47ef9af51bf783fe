# Types for Cython's compile of context.py (the native build; see _speedups/__init__.py): a
# worker's shared state as struct members, read by every request. Its fields are listed here
# and nowhere else: the pure build's Context has a __dict__.

from proxy.http.watchdog cimport Watchdog
from proxy.observe.observer cimport Observer
from proxy.routing.router cimport Router

cdef bint _COMPILED

cdef extern from *:
    """
    /* prefix + n in lower-case hex, one allocation (Context.next_request_id). */
    static PyObject *fleetproxy_request_id(PyObject *prefix, unsigned long long n) {
        char hex[2 * sizeof n];
        int k = 0;
        do { hex[k++] = "0123456789abcdef"[n & 15]; n >>= 4; } while (n);
        Py_ssize_t size = PyBytes_GET_SIZE(prefix);
        PyObject *out = PyBytes_FromStringAndSize(NULL, size + k);
        if (out != NULL) {
            char *d = PyBytes_AS_STRING(out);
            memcpy(d, PyBytes_AS_STRING(prefix), size);
            d += size;
            while (k) *d++ = hex[--k];
        }
        return out;
    }
    """
    bytes fleetproxy_request_id(bytes prefix, unsigned long long n)


cdef class Context:
    cdef public Observer observe
    cdef public Router router  # select/prepare/place per request: C calls
    cdef public object cfg, loop, models_body, connections, turned_away, queued_bytes, warned, draining
    cdef public object access_log, read_limits, tenants, tick, first_byte_ticks, idle_ticks
    cdef public Watchdog watchdog
    cdef public object timer_cap
    cdef public bytes _rid_prefix
    cdef public unsigned long long _rid
    cdef public Py_ssize_t max_pipelined, max_queued_bytes

    cpdef bytes next_request_id(self)
