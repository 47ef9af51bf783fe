# Types for Cython's compile of accesslog.py (the native build; see _speedups/__init__.py): the
# request's fields read as struct members of its exchange (a Relay), the times in C doubles, and
# the line of a plain request written in C into the buffer (``fleetproxy_access_put``).
cimport cython

from _speedups.framing_c cimport ResponseFramer as NativeFramer
from proxy.http.relay cimport Relay
from proxy.observe.metrics cimport Timing, clock

cdef bint _COMPILED
cdef tuple _OUTCOMES
cdef Py_ssize_t _FLUSH_LINES, _FULL

cdef extern from *:
    '''
    #include <string.h>
    /* A request's line, written into the bytearray buf at used: its length, or 0 where it is
       msgspec's to write (buf unchanged; also where fewer than room + 512 bytes are left, more
       than the rest of a line takes). Every string must be printable ASCII without a quote or a
       backslash (written as it is, as msgspec would: nothing to escape); a number of
       thousandths n (0 <= n < 10^13) is written as n / 1000 with its trailing zeros dropped
       and at least one decimal, which is the shortest text of the double n / 1000.0 (what
       msgspec writes for it). Anything else: 0, and the caller has msgspec write the line. */
    /* The object each of the line's string slots last passed the check with, held: the
       tenant, model, backend, method and outcome of most lines are the same objects line after
       line (the router's labels, the body scan's model), so they are checked once, not per
       line. Strings and bytes are immutable, and the reference keeps the address from being
       reused by another object. */
    static PyObject *fleetproxy_text_seen[7];
    static int fleetproxy_text(PyObject *o, const char **s, Py_ssize_t *n, int slot) {
        const unsigned char *b;
        Py_ssize_t i, size;
        if (PyBytes_CheckExact(o)) {
            b = (const unsigned char *)PyBytes_AS_STRING(o);
            size = PyBytes_GET_SIZE(o);
        } else if (PyUnicode_CheckExact(o) && PyUnicode_IS_ASCII(o)) {
            b = (const unsigned char *)PyUnicode_DATA(o);
            size = PyUnicode_GET_LENGTH(o);
        } else {
            return 0;
        }
        *s = (const char *)b;
        *n = size;
        if (o == fleetproxy_text_seen[slot])
            return 1;
        /* Eight bytes a step: the high bit of a byte set (0x80 or more), or set by one of the
           bit tricks for a byte below 0x20, or equal to 0x7F, 0x22 or 0x5C. The last step
           reads the rest padded with "a"s (most of these strings are shorter than eight). */
        const unsigned long long ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        for (i = 0; i < size; i += 8) {
            unsigned long long x, d, q, e;
            if (size - i >= 8) {
                memcpy(&x, b + i, 8);
            } else {
                x = 0x61 * ones;
                memcpy(&x, b + i, (size_t)(size - i));
            }
            d = x ^ (0x7F * ones);
            q = x ^ (0x22 * ones);
            e = x ^ (0x5C * ones);
            if ((x | ((x - 0x20 * ones) & ~x) | ((d - ones) & ~d) | ((q - ones) & ~q) | ((e - ones) & ~e)) & highs)
                return 0;
        }
        Py_INCREF(o);
        Py_XSETREF(fleetproxy_text_seen[slot], o);
        return 1;
    }
    static const char fleetproxy_pairs[] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    static const unsigned long long fleetproxy_tens[20] = {
        1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL, 100000000ULL,
        1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL, 10000000000000ULL,
        100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL, 100000000000000000ULL,
        1000000000000000000ULL, 10000000000000000000ULL};
    static char *fleetproxy_int(char *p, long long v) {
        /* One or two digits (most of a line's counts: attempts, cached tokens) at once; else
           the digits counted from the bit length (log10(2) ~ 1233 / 4096, then one compare),
           written in place from the last, two a step. */
        unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
        int size, t;
        char *end;
        if (v < 0)
            *p++ = '-';
        if (u < 10) {
            *p = (char)('0' + u);
            return p + 1;
        }
        if (u < 100) {
            p[0] = fleetproxy_pairs[2 * u];
            p[1] = fleetproxy_pairs[2 * u + 1];
            return p + 2;
        }
        t = ((64 - __builtin_clzll(u)) * 1233) >> 12;  /* |v| <= 2^63: at most 19 digits */
        size = t + 1 - (u < fleetproxy_tens[t]);
        end = p + size;
        p = end;
        while (u >= 100) {
            unsigned int r = (unsigned int)(u % 100);
            u /= 100;
            p -= 2;
            p[0] = fleetproxy_pairs[2 * r];
            p[1] = fleetproxy_pairs[2 * r + 1];
        }
        if (u >= 10) {
            p[-2] = fleetproxy_pairs[2 * u];
            p[-1] = fleetproxy_pairs[2 * u + 1];
        } else {
            p[-1] = (char)('0' + u);
        }
        return end;
    }
    static char *fleetproxy_thousandths(char *p, long long n) {
        int frac = (int)(n % 1000);
        p = fleetproxy_int(p, n / 1000);
        *p++ = '.';
        *p++ = (char)('0' + frac / 100);
        if (frac % 100) {
            *p++ = (char)('0' + frac / 10 % 10);
            if (frac % 10)
                *p++ = (char)('0' + frac % 10);
        }
        return p;
    }
    #ifndef FLEETPROXY_PUT  /* the same in heads.pxd and accesslog.pxd: a module that cimports both gets one */
    #define FLEETPROXY_PUT
    static inline char *fleetproxy_put(char *p, const char *s, Py_ssize_t n) {
        memcpy(p, s, (size_t)n);
        return p + n;
    }
    #endif
    #define FLEETPROXY_KEY(p, key) fleetproxy_put((p), (key), (Py_ssize_t)sizeof(key) - 1)
    /* The line's middle (tenant to outcome) as the last line wrote it, and what it was written
       from: most lines of a worker repeat it (one tenant, model, backend and route), so it is
       copied whole when its objects are the ones fleetproxy_text_seen holds (the path: the
       same bytes, a new object per request), with the same attempts and status. */
    static char fleetproxy_mid[640];
    static Py_ssize_t fleetproxy_mid_size = 0;  /* 0: none kept */
    static long long fleetproxy_mid_attempts, fleetproxy_mid_status;
    static int fleetproxy_mid_bare;  /* written without a backend (null) */
    static int fleetproxy_same_mid(PyObject *tenant, PyObject *model, PyObject *backend, long long attempts,
                                   PyObject *method, PyObject *path, long long status, PyObject *outcome) {
        PyObject **seen = fleetproxy_text_seen, *last = seen[4];
        if (!fleetproxy_mid_size || attempts != fleetproxy_mid_attempts || status != fleetproxy_mid_status
                || tenant != seen[1] || model != seen[2] || method != seen[3] || outcome != seen[5]
                || (backend == Py_None ? !fleetproxy_mid_bare : fleetproxy_mid_bare || backend != seen[6]))
            return 0;
        if (path == last)
            return 1;
        return PyBytes_CheckExact(path) && PyBytes_CheckExact(last) && PyBytes_GET_SIZE(path) == PyBytes_GET_SIZE(last)
               && memcmp(PyBytes_AS_STRING(path), PyBytes_AS_STRING(last), (size_t)PyBytes_GET_SIZE(path)) == 0;
    }
    static Py_ssize_t fleetproxy_access_put(PyObject *buf, Py_ssize_t used,
            long long ts, PyObject *rid, PyObject *tenant, PyObject *model, PyObject *backend,
            long long attempts, PyObject *method, PyObject *path, long long status, PyObject *outcome,
            long long ttft, long long total, long long prompt, long long completion, long long cached,
            long long size) {
        const char *s[7];
        Py_ssize_t n[7], room = 0;
        PyObject *texts[7];
        char *start, *p, *mid;
        int i, count = backend == Py_None ? 6 : 7;
        int same = fleetproxy_same_mid(tenant, model, backend, attempts, method, path, status, outcome);
        texts[0] = rid; texts[1] = tenant; texts[2] = model; texts[3] = method; texts[4] = path;
        texts[5] = outcome; texts[6] = backend;
        if (!same)  /* the checks below may move fleetproxy_text_seen off the kept middle's objects */
            fleetproxy_mid_size = 0;
        for (i = 0; i < (same ? 1 : count); i++) {  /* the kept middle's texts passed already */
            if (!fleetproxy_text(texts[i], &s[i], &n[i], i))
                return 0;
            room += n[i];
        }
        if (same)
            room += fleetproxy_mid_size;
        if (room > 1024 || ts < 0 || ts >= 10000000000000LL || total < 0 || total >= 10000000000000LL
                || ttft >= 10000000000000LL)
            return 0;
        if (used < 0 || PyByteArray_GET_SIZE(buf) - used < room + 512)
            return 0;
        p = start = PyByteArray_AS_STRING(buf) + used;
        p = FLEETPROXY_KEY(p, "{\\"ts\\":");
        p = fleetproxy_thousandths(p, ts);
        p = FLEETPROXY_KEY(p, ",\\"id\\":\\"");
        p = fleetproxy_put(p, s[0], n[0]);
        if (same) {
            p = fleetproxy_put(p, fleetproxy_mid, fleetproxy_mid_size);
            goto times;
        }
        mid = p;
        p = FLEETPROXY_KEY(p, "\\",\\"tenant\\":\\"");
        p = fleetproxy_put(p, s[1], n[1]);
        p = FLEETPROXY_KEY(p, "\\",\\"model\\":\\"");
        p = fleetproxy_put(p, s[2], n[2]);
        if (count == 7) {
            p = FLEETPROXY_KEY(p, "\\",\\"backend\\":\\"");
            p = fleetproxy_put(p, s[6], n[6]);
            p = FLEETPROXY_KEY(p, "\\",\\"attempts\\":");
        } else {
            p = FLEETPROXY_KEY(p, "\\",\\"backend\\":null,\\"attempts\\":");
        }
        p = fleetproxy_int(p, attempts);
        p = FLEETPROXY_KEY(p, ",\\"method\\":\\"");
        p = fleetproxy_put(p, s[3], n[3]);
        p = FLEETPROXY_KEY(p, "\\",\\"path\\":\\"");
        p = fleetproxy_put(p, s[4], n[4]);
        p = FLEETPROXY_KEY(p, "\\",\\"status\\":");
        p = fleetproxy_int(p, status);
        p = FLEETPROXY_KEY(p, ",\\"outcome\\":\\"");
        p = fleetproxy_put(p, s[5], n[5]);
        fleetproxy_mid_size = 0;
        if (p - mid <= (Py_ssize_t)sizeof(fleetproxy_mid)) {  /* kept for the next line */
            memcpy(fleetproxy_mid, mid, (size_t)(p - mid));
            fleetproxy_mid_size = p - mid;
            fleetproxy_mid_attempts = attempts;
            fleetproxy_mid_status = status;
            fleetproxy_mid_bare = count == 6;
        }
    times:
        if (ttft < 0) {
            p = FLEETPROXY_KEY(p, "\\",\\"ttft_ms\\":null");
        } else {
            p = FLEETPROXY_KEY(p, "\\",\\"ttft_ms\\":");
            p = fleetproxy_thousandths(p, ttft);
        }
        p = FLEETPROXY_KEY(p, ",\\"total_ms\\":");
        p = fleetproxy_thousandths(p, total);
        p = FLEETPROXY_KEY(p, ",\\"prompt_tokens\\":");
        p = fleetproxy_int(p, prompt);
        p = FLEETPROXY_KEY(p, ",\\"completion_tokens\\":");
        p = fleetproxy_int(p, completion);
        p = FLEETPROXY_KEY(p, ",\\"cached_tokens\\":");
        p = fleetproxy_int(p, cached);
        p = FLEETPROXY_KEY(p, ",\\"bytes\\":");
        p = fleetproxy_int(p, size);
        *p++ = '}';
        *p++ = 0x0A;
        return p - start;
    }
    '''
    Py_ssize_t fleetproxy_access_put(bytearray buf, Py_ssize_t used, long long ts, object rid, object tenant,
                                     object model, object backend, long long attempts, object method,
                                     object path, long long status, object outcome, long long ttft,
                                     long long total, long long prompt, long long completion,
                                     long long cached, long long size)


cdef class AccessLog:
    cdef public object loop, fd, timer
    cdef public bytearray buf
    cdef public Py_ssize_t lines, used
    cdef public double offset

    @cython.locals(obs=Timing, framer=NativeFramer, t0=double, t_body=double, ts=double, ms="long long",
                   ttft="long long", total="long long", n=Py_ssize_t, size="long long")
    cpdef write(self, Relay ex, int status, Py_ssize_t outcome, double now, model, str backend)

    cpdef flush(self)


cpdef double _ms(double seconds)

cpdef long long _thousandths(double seconds)

cpdef str _text(bytes data)
