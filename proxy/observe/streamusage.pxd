# Types for Cython's compile of streamusage.py (the native build; see _speedups/__init__.py): the
# byte walks (a JSON string, the chunks of vLLM's end of a stream) in C.
cimport cython
from libc.string cimport memcmp
from proxy.routing.bodywalk cimport Walked

cdef extern from "string.h":  # GNU extensions; Python.h's pyconfig.h defines _GNU_SOURCE
    const unsigned char *memmem(const void *haystack, size_t n, const void *needle, size_t size) nogil
    const unsigned char *memrchr(const void *s, int c, size_t n) nogil

cdef extern from *:
    """
    #ifndef FLEETPROXY_ENDS_WITH  /* here, and in the relay that cimports it */
    #define FLEETPROXY_ENDS_WITH
    /* Whether the n bytes at s end with the m bytes at t: eight bytes a compare from the end,
       the first eight last (overlapping the one before), inline where it is called (a token
       event's end is some 30-45 bytes: a few loads, no call). */
    static inline int fleetproxy_ends_with(const char *s, Py_ssize_t n, const char *t, Py_ssize_t m) {
        unsigned long long a, b;
        Py_ssize_t i;
        if (m > n)
            return 0;
        s += n - m;
        if (m < 8)
            return memcmp(s, t, (size_t)m) == 0;
        for (i = m - 8;; i = i > 8 ? i - 8 : 0) {
            memcpy(&a, s + i, 8);
            memcpy(&b, t + i, 8);
            if (a != b)
                return 0;
            if (i == 0)
                return 1;
        }
    }
    #endif

    /* a[:at] + ins + a[at:], one allocation: usage_body's option inserted into the body. */
    static PyObject *fleetproxy_insert(const char *a, Py_ssize_t n, Py_ssize_t at, const char *ins, Py_ssize_t m) {
        PyObject *out = PyBytes_FromStringAndSize(NULL, n + m);
        if (out != NULL) {
            char *d = PyBytes_AS_STRING(out);
            memcpy(d, a, at);
            memcpy(d + at, ins, m);
            memcpy(d + at + m, a + at, n - at);
        }
        return out;
    }

    /* _strip_vllm's result in one allocation: t[:finish], the finish chunk's new size line
       (lower-case hex, as "%x"), its payload t[at:usage - 5] and the fingerprint t[found:stop],
       the event closed ("}\\n\\n\\r\\n"), then t[done:n]. */
    static PyObject *fleetproxy_refinish(const unsigned char *t, Py_ssize_t n, Py_ssize_t finish, Py_ssize_t at,
                                         Py_ssize_t usage, Py_ssize_t found, Py_ssize_t stop, Py_ssize_t done) {
        Py_ssize_t payload = usage - 5 - at, print = stop - found, size = payload + print + 3;
        char hex[2 * sizeof(Py_ssize_t)];
        int digits = 0;
        do { hex[digits++] = "0123456789abcdef"[size & 15]; size >>= 4; } while (size);
        PyObject *out = PyBytes_FromStringAndSize(NULL, finish + digits + 2 + payload + print + 5 + (n - done));
        if (out != NULL) {
            char *d = PyBytes_AS_STRING(out);
            memcpy(d, t, finish); d += finish;
            while (digits) *d++ = hex[--digits];
            *d++ = '\\r'; *d++ = '\\n';
            memcpy(d, t + at, payload); d += payload;
            memcpy(d, t + found, print); d += print;
            memcpy(d, "}\\n\\n\\r\\n", 5); d += 5;
            memcpy(d, t + done, n - done);
        }
        return out;
    }
    """
    bint fleetproxy_ends_with(const char *s, Py_ssize_t n, const char *t, Py_ssize_t m) noexcept nogil
    bytes fleetproxy_insert(const char *a, Py_ssize_t n, Py_ssize_t at, const char *ins, Py_ssize_t m)
    bytes fleetproxy_refinish(const unsigned char *t, Py_ssize_t n, Py_ssize_t finish, Py_ssize_t at, Py_ssize_t usage,
                              Py_ssize_t found, Py_ssize_t stop, Py_ssize_t done)

cdef bint _COMPILED
cdef bytes OPTION
cdef bytes _CHOICES, _USAGE, _FINGERPRINT, _REASON, _REASON_SKIP, _FINISH_SKIP, _FINGERPRINT_SKIP, _CHOICES_USAGE
cdef bytes _EVENT_START, _VLLM_END, _CHAT, _COMPLETIONS
cdef Py_ssize_t _QUIET_MAX, _quiet_next
cdef list _quiet_ends


@cython.locals(i=Py_ssize_t, n=Py_ssize_t)
cpdef Py_ssize_t finish_at(bytes data)


@cython.locals(n=Py_ssize_t, i=Py_ssize_t, k=Py_ssize_t, end=bytes, ends=list, buf="const unsigned char *")
cpdef bytes quiet_end(bytes data)

cpdef bint quiet(bytes data, bytes end)

@cython.locals(n=Py_ssize_t)
cpdef Py_ssize_t rfind(bytes data, bytes needle, bytes skip, Py_ssize_t lo=*, Py_ssize_t hi=*)

@cython.locals(n=Py_ssize_t, m=Py_ssize_t, first=Py_ssize_t, i=Py_ssize_t, buf="const unsigned char *",
               lit="const unsigned char *", brace="const unsigned char *")
cpdef Py_ssize_t rfind_open(bytes data, bytes key, Py_ssize_t lo=*, Py_ssize_t hi=*)

@cython.locals(i=Py_ssize_t, c=int, first=int, last=int)
cdef Py_ssize_t _back(const unsigned char *buf, Py_ssize_t lo, Py_ssize_t hi, const unsigned char *lit, Py_ssize_t m,
                      const unsigned char *table) noexcept

@cython.locals(n=Py_ssize_t, size=Py_ssize_t, i=Py_ssize_t, buf="const unsigned char *", lit="const unsigned char *")
cpdef Py_ssize_t after(bytes data, Py_ssize_t pos, bytes literal) except -2


@cython.locals(n=Py_ssize_t, buf="const unsigned char *", lit="const unsigned char *", hit="const unsigned char *")
cpdef Py_ssize_t find(bytes data, bytes needle, Py_ssize_t start=*, Py_ssize_t end=*)


@cython.locals(i=Py_ssize_t, c=int)
cpdef Py_ssize_t _string_end(bytes data, Py_ssize_t at, Py_ssize_t n=*)

@cython.locals(n=Py_ssize_t, finish=Py_ssize_t, usage=Py_ssize_t, done=Py_ssize_t, pos=Py_ssize_t, end=Py_ssize_t,
               at=Py_ssize_t, found=Py_ssize_t, stop=Py_ssize_t, size=Py_ssize_t, buf="const unsigned char *",
               event=bytes)
cpdef _strip_vllm(bytes tail, Py_ssize_t start=*)

cpdef tuple strip(bytes data, bint chunked, Py_ssize_t start=*)

@cython.locals(n=Py_ssize_t, pos=Py_ssize_t, end=Py_ssize_t)
cpdef Py_ssize_t unit_start(bytes data, Py_ssize_t at, bint chunked)

@cython.locals(size=Py_ssize_t, i=Py_ssize_t, c=int, stop=Py_ssize_t)
cdef Py_ssize_t _chunk_end(const unsigned char *buf, Py_ssize_t n, Py_ssize_t pos) noexcept

cdef Py_ssize_t _payload(const unsigned char *buf, Py_ssize_t chunk) noexcept

@cython.locals(at=Py_ssize_t)
cpdef bytes usage_body(bytes body)

@cython.locals(query=Py_ssize_t, path=bytes, walked=Walked)
cpdef bint wants_usage(method, bytes target, fields)  # per request, from the observer (a C call there)
