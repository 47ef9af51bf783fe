# Types for Cython's compile of metrics.py (the native build, see _speedups/__init__.py): the
# recorder adds into its row through a typed view of the shared table, C integer arithmetic
# instead of Python ints. The .py stays the whole specification; the pure build runs it as is.
cimport cython

from _speedups.framing_c cimport ResponseFramer as NativeFramer
from proxy.observe.streamusage cimport after, find, rfind, rfind_event_open
from proxy.routing.bodywalk cimport Walked

cdef Py_ssize_t _E2E_AT, _RESP_AT, _REQ_AT, _TTFT_AT, _ITL_AT, _NCLASS, _BYTES_PER_TOKEN
cdef bytes _BOUND_BYTES
cdef Py_ssize_t _E2E_FIRST, _RESP_FIRST, _REQ_FIRST, _TTFT_FIRST, _ITL_FIRST
cdef Py_ssize_t _E2E_N, _RESP_N, _REQ_N, _TTFT_N, _ITL_N
cdef bint _COMPILED
cdef int _TAKEN
cdef str DEFAULT_TENANT
cdef bytes _ERROR_EVENT, _USAGE_KEY, _USAGE_SKIP, _USAGE_OPEN
cdef Py_ssize_t _S_REQ, _S_BYTES, _S_TOK, _S_ERR, _S_FLIGHT

cdef extern from *:
    '''
    #include <time.h>
    static inline double fleetproxy_monotonic(void) {  /* time.monotonic()'s clock */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    '''
    double fleetproxy_monotonic() nogil

cdef extern from *:
    '''
    #include <string.h>
    /* bisect_left over the doubles at b[lo:hi] (the bytes of an array("d")): the first index
       whose bound is not below x, hi for none. No bounds check per step, where a typed view's
       index has one. */
    static inline Py_ssize_t fleetproxy_bisect(const char *b, Py_ssize_t lo, Py_ssize_t hi, double x) {
        while (lo < hi) {
            Py_ssize_t mid = (lo + hi) >> 1;
            double bound;
            memcpy(&bound, b + mid * (Py_ssize_t)sizeof(double), sizeof(double));
            if (bound < x)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo;
    }
    '''
    Py_ssize_t fleetproxy_bisect(const char *b, Py_ssize_t lo, Py_ssize_t hi, double x) noexcept nogil

# _vllm_usage's walk in C: each literal a memcmp of a size the compiler knows, the digits added in
# place; 1 with the counts in out[], 0 where the walk in metrics.py returns None (a test holds the
# two, and both to the regex).
cdef extern from *:
    '''
    #include <string.h>
    #define FLEETPROXY_AT(s, n, pos, lit) \\
        ((pos) >= 0 && (pos) + (Py_ssize_t)(sizeof(lit) - 1) <= (n) && memcmp((s) + (pos), (lit), sizeof(lit) - 1) == 0 \\
         ? (pos) + (Py_ssize_t)(sizeof(lit) - 1) : -1)
    static inline Py_ssize_t fleetproxy_usage_number(const unsigned char *s, Py_ssize_t n, Py_ssize_t pos,
                                                     long long *value) {
        /* The decimal number at s[pos] (1 to 18 digits) into *value, and where its digits end
           (all of them: _skip_digits); -1 for none or too many. */
        long long v = 0;
        Py_ssize_t end = pos;
        while (end < n && s[end] >= 0x30 && s[end] <= 0x39) {
            if (end - pos == 18)
                return -1;
            v = v * 10 + (s[end] - 0x30);
            end++;
        }
        if (end == pos)
            return -1;
        *value = v;
        return end;
    }
    static int fleetproxy_vllm_usage(const unsigned char *s, Py_ssize_t n, Py_ssize_t at, long long *out) {
        long long total;
        Py_ssize_t pos = FLEETPROXY_AT(s, n, at, "\\"usage\\":{\\"prompt_tokens\\":");
        if (pos < 0 || (pos = fleetproxy_usage_number(s, n, pos, &out[0])) < 0)
            return 0;
        pos = FLEETPROXY_AT(s, n, pos, ",\\"total_tokens\\":");
        if (pos < 0 || (pos = fleetproxy_usage_number(s, n, pos, &total)) < 0)
            return 0;
        pos = FLEETPROXY_AT(s, n, pos, ",\\"completion_tokens\\":");
        if (pos < 0 || (pos = fleetproxy_usage_number(s, n, pos, &out[1])) < 0)
            return 0;
        out[2] = 0;
        if (pos < n && s[pos] == 0x7D)  /* "}": no details */
            return 1;
        pos = FLEETPROXY_AT(s, n, pos, ",\\"prompt_tokens_details\\":");
        if (pos < 0)
            return 0;
        if (FLEETPROXY_AT(s, n, pos, "null") >= 0)
            return 1;
        pos = FLEETPROXY_AT(s, n, pos, "{\\"cached_tokens\\":");
        return pos >= 0 && fleetproxy_usage_number(s, n, pos, &out[2]) >= 0;
    }
    '''
    int fleetproxy_vllm_usage(const unsigned char *s, Py_ssize_t n, Py_ssize_t at, long long *out) nogil

cpdef double clock() noexcept
cdef double _held
@cython.locals(held=double, t=double)
cpdef double now() noexcept
cpdef void hold() noexcept
cpdef void release() noexcept


cdef class Timing:
    # Read or written on every read of a response (relay.upstream_data): first (relay.pxd).
    cdef public double t_body
    cdef public object tail, prev
    cdef public Py_ssize_t tail_at
    cdef public double t0, t_sent, t_head, t_resp, t_wait
    cdef public object tenant, span, model, flight_label
    cdef public int usage
    cdef public Py_ssize_t flight
    cdef public long long flight_tokens
    cdef public bint counted
    cdef public long long prompt_tokens, completion_tokens, cached_tokens


@cython.locals(timing=Timing)
cpdef Timing new_timing(double t0)


cdef class Recorder:
    cdef public object table
    cdef long long[::1] cells
    cdef public Py_ssize_t row, base, used, overflow
    cdef public dict index
    cdef object last_model, last_backend, last_tenant
    cdef Py_ssize_t last_base

    cpdef observe(self, Py_ssize_t base, Py_ssize_t hist, double seconds)

    @cython.locals(lo=Py_ssize_t)
    cdef void _add(self, Py_ssize_t at, Py_ssize_t first, Py_ssize_t n, double seconds)

    @cython.locals(base=Py_ssize_t, at=Py_ssize_t, seconds=double, t0=double, t_head=double, t_body=double,
                   cls=Py_ssize_t, completion=cython.longlong)
    cpdef record(self, Timing obs, Py_ssize_t attempts, bint fallback, NativeFramer framer, int status,
                 Py_ssize_t outcome, double now, model, backend)

    @cython.locals(tokens=cython.longlong, base=Py_ssize_t)
    cpdef admitted(self, Timing obs, bytes body, label, str model)

    cpdef Py_ssize_t series(self, model, backend, tenant, Py_ssize_t dropped=*) except -1


@cython.locals(counts=Timing)
cpdef _vllm_usage(bytes data, Py_ssize_t at)

@cython.locals(n=Py_ssize_t, pos=Py_ssize_t, buf="const unsigned char *", prompt="long long",
               completion="long long", cached="long long", counts="long long[3]")
cpdef bint _vllm_walk(bytes data, Py_ssize_t at, Timing out) except -1

@cython.locals(value="long long", end=Py_ssize_t)
cdef long long _digits(const unsigned char *buf, Py_ssize_t n, Py_ssize_t pos) noexcept

cdef Py_ssize_t _skip_digits(const unsigned char *buf, Py_ssize_t n, Py_ssize_t pos) noexcept


# What the observer calls per request, as C calls (observer.pxd cimports them).
cpdef count_tokens(Timing timing)

cpdef tuple tokens_of(Timing timing)

@cython.locals(counts=Timing)
cpdef tuple usage(tail, prev=*)

@cython.locals(at=Py_ssize_t)
cdef bint _count(Timing out, tail, prev) except -1

@cython.locals(at=Py_ssize_t)
cdef Py_ssize_t _usage_at(bytes data, Py_ssize_t lo) except -3

@cython.locals(walked=Walked)
cpdef model_of(bytes body, fields)
