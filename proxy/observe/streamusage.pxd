# Types for Cython's compile of streamusage.py (the native build; see _speedups/__init__.py): the
# byte walks (a JSON string, the chunks of vLLM's end of a stream) in C.
cimport cython
from libc.string cimport memcmp
from proxy.routing.bodywalk cimport Walked

cdef extern from "string.h":  # memmem is GNU's; Python.h's pyconfig.h defines _GNU_SOURCE
    const unsigned char *memmem(const void *haystack, size_t n, const void *needle, size_t size) nogil
    const unsigned char *memchr(const void *s, int c, size_t n) nogil

cdef extern from *:
    """
    #ifndef FLEETPROXY_ENDS_WITH  /* here, and in the relay that cimports it */
    #define FLEETPROXY_ENDS_WITH
    /* Whether the n bytes at s end with the m bytes at t: sixteen bytes a compare from the end
       (SSE2; else eight), the first sixteen last (overlapping the one before), inline where it
       is called (a token event's end is some 30-45 bytes: three compares, no call). */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    static inline int fleetproxy_ends_with(const char *s, Py_ssize_t n, const char *t, Py_ssize_t m) {
        unsigned long long a, b;
        Py_ssize_t i;
        if (m > n)
            return 0;
        s += n - m;
    #if defined(__SSE2__)
        if (m >= 16) {
            for (i = m - 16;; i = i > 16 ? i - 16 : 0) {
                __m128i x = _mm_loadu_si128((const __m128i *)(s + i)), y = _mm_loadu_si128((const __m128i *)(t + i));
                if (_mm_movemask_epi8(_mm_cmpeq_epi8(x, y)) != 0xFFFF)
                    return 0;
                if (i == 0)
                    return 1;
            }
        }
    #endif
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

    /* rfind's search (Horspool's, backwards): the m bytes of lit in s[lo:hi], or -1. The
       window moves back by table[the byte it starts on] (skips(lit)); its first and last bytes
       are compared before the rest. Where the needle is near the end and most bytes after it
       are not in it (a key of a JSON event read from its end), a few reads. */
    static inline Py_ssize_t fleetproxy_back(const unsigned char *s, Py_ssize_t lo, Py_ssize_t hi,
                                             const unsigned char *lit, Py_ssize_t m, const unsigned char *table) {
        Py_ssize_t i = hi - m;
        unsigned char first, last, c;
        if (m == 0)
            return i >= lo ? i : -1;
        first = lit[0];
        last = lit[m - 1];
        while (i >= lo) {
            c = s[i];
            if (c == first && s[i + m - 1] == last && memcmp(s + i, lit, (size_t)m) == 0)
                return i;
            i -= table[c];
        }
        return -1;
    }

    /* rfind_open's search: the m bytes of lit, which end with "{", in s[lo:hi], or -1; the
       braces found from the end by memrchr, the key compared before each. */
    static inline Py_ssize_t fleetproxy_rfind_open(const unsigned char *s, Py_ssize_t lo, Py_ssize_t hi,
                                                   const unsigned char *lit, Py_ssize_t m) {
        Py_ssize_t first = lo + m - 1, i;  /* where the first brace that can end a match is */
        const unsigned char *brace;
        while (hi > first) {
            brace = memrchr(s + first, 0x7B, (size_t)(hi - first));
            if (brace == NULL)
                return -1;
            i = brace - s - m + 1;
            if (memcmp(s + i, lit, (size_t)m) == 0)
                return i;
            hi = brace - s;
        }
        return -1;
    }

    /* rfind_event_open's search: fleetproxy_rfind_open's, except that the brace of an SSE data
       event's start ("data: {" at lo or after a line feed) ends it: -2 - that event's offset. */
    static inline Py_ssize_t fleetproxy_rfind_event_open(const unsigned char *s, Py_ssize_t lo, Py_ssize_t hi,
                                                         const unsigned char *lit, Py_ssize_t m) {
        Py_ssize_t b, i;
        const unsigned char *brace;
        while (hi > lo) {
            brace = memrchr(s + lo, 0x7B, (size_t)(hi - lo));
            if (brace == NULL)
                return -1;
            b = brace - s;
            i = b - m + 1;
            if (i >= lo && memcmp(s + i, lit, (size_t)m) == 0)
                return i;
            if (b - 6 >= lo && s[b - 1] == 0x20 && s[b - 2] == 0x3A && memcmp(s + b - 6, "data", 4) == 0
                    && (b - 6 == lo || s[b - 7] == 0x0A))
                return -2 - (b - 6);
            hi = b;
        }
        return -1;
    }

    /* _chunk_end: where the chunk whose size line starts at s[pos] ends (after its payload's
       CRLF); 0 for the last chunk; -1 where no chunk starts there. */
    static inline Py_ssize_t fleetproxy_chunk_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t pos) {
        Py_ssize_t size = 0, i = pos, stop;
        int c;
        for (; i < n; i++) {
            c = s[i];
            if (c >= 0x30 && c <= 0x39) c -= 0x30;
            else if (c >= 0x61 && c <= 0x66) c -= 0x57;
            else if (c >= 0x41 && c <= 0x46) c -= 0x37;
            else break;
            size = size * 16 + c;
            if (size > n)
                return -1;
        }
        if (i == pos || i + 1 >= n || s[i] != 0x0D || s[i + 1] != 0x0A)
            return -1;
        if (size == 0)
            return 0;
        stop = i + 2 + size;
        if (stop + 2 > n || s[stop] != 0x0D || s[stop + 1] != 0x0A)
            return -1;
        return stop + 2;
    }

    /* _string_end: the offset after the JSON string whose opening quote is at s[at], in
       s[:n] (n if it does not end there). The next quote by memchr, then whether a backslash
       comes before it (a fingerprint has none): two vectorized searches, not a byte loop. */
    static inline Py_ssize_t fleetproxy_string_close(const unsigned char *s, Py_ssize_t at, Py_ssize_t n) {
        Py_ssize_t i = at + 1, end;
        const unsigned char *quote, *slash;
        while (i < n) {
            quote = memchr(s + i, 0x22, (size_t)(n - i));
            end = quote != NULL ? quote - s : n;
            slash = memchr(s + i, 0x5C, (size_t)(end - i));
            if (slash == NULL)
                return quote != NULL ? end + 1 : n;
            i = slash - s + 2;  /* the escaped byte, a quote or not, is skipped */
        }
        return n;
    }

    static inline int fleetproxy_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t pos, const char *lit, Py_ssize_t m) {
        return pos >= 0 && pos + m <= n && memcmp(s + pos, lit, (size_t)m) == 0;
    }

    /* _strip_vllm's reading of vLLM's own end of a chunked stream, the finish chunk's size
       line at s[start] or after it: the same checks in the same order, through pointers and
       with no call out of C. 0: not vLLM's end (_strip's to read). Else where[] holds the
       finish chunk, its payload, the usage chunk, the [DONE] chunk, the fingerprint's key and
       the end of its value, and the usage event's bytes (start, end); 1, or 2 where the usage
       event has no fingerprint. (The literals are streamusage.py's, passed in.) */
    static int fleetproxy_vllm_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t start,
                                   const char *vllm_end, Py_ssize_t end_size, const char *event, Py_ssize_t event_size,
                                   const unsigned char *print, Py_ssize_t print_size, const unsigned char *print_skip,
                                   const unsigned char *pair, Py_ssize_t pair_size,
                                   const unsigned char *finish_key, Py_ssize_t finish_size,
                                   const unsigned char *finish_skip, Py_ssize_t *where) {
        Py_ssize_t finish = -1, usage = -1, done = -1, pos = start, end, at, found, stop;
        if (n - start < 40 || !fleetproxy_at(s, n, n - end_size, vllm_end, end_size))
            return 0;
        for (;;) {
            end = fleetproxy_chunk_end(s, n, pos);
            if (end < 0)
                return 0;
            if (end == 0)
                break;
            finish = usage;
            usage = done;
            done = pos;
            pos = end;
        }
        if (finish < 0 || pos != n - 5 || done != n - end_size || s[done - 3] != 0x0A || s[done - 4] != 0x0A)
            return 0;
        at = usage;
        while (s[at] != 0x0D)
            at++;
        at += 2;
        end = done - 2;
        if (!fleetproxy_at(s, n, at, event, event_size))
            return 0;
        found = fleetproxy_back(s, at, end, print, print_size, print_skip);
        if (fleetproxy_rfind_open(s, at, found >= 0 ? found : end, pair, pair_size) < 0)
            return 0;
        where[2] = usage;
        where[3] = done;
        where[6] = at;
        where[7] = end - 2;
        if (found < 0)
            return 2;
        stop = fleetproxy_string_close(s, found + print_size, end);
        at = finish;
        while (s[at] != 0x0D)
            at++;
        at += 2;
        if (s[usage - 5] != 0x7D || s[usage - 4] != 0x0A || s[usage - 3] != 0x0A || !fleetproxy_at(s, n, at, event, event_size)
                || fleetproxy_back(s, at, usage, finish_key, finish_size, finish_skip) < 0
                || (finish > start && memmem(s + start, (size_t)(finish - start), finish_key, (size_t)finish_size) != NULL))
            return 0;
        where[0] = finish;
        where[1] = at;
        where[4] = found;
        where[5] = stop;
        return 1;
    }

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
    Py_ssize_t fleetproxy_back(const unsigned char *s, Py_ssize_t lo, Py_ssize_t hi, const unsigned char *lit,
                               Py_ssize_t m, const unsigned char *table) noexcept nogil
    Py_ssize_t fleetproxy_rfind_open(const unsigned char *s, Py_ssize_t lo, Py_ssize_t hi, const unsigned char *lit,
                                     Py_ssize_t m) noexcept nogil
    Py_ssize_t fleetproxy_rfind_event_open(const unsigned char *s, Py_ssize_t lo, Py_ssize_t hi,
                                           const unsigned char *lit, Py_ssize_t m) noexcept nogil
    Py_ssize_t fleetproxy_chunk_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t pos) noexcept nogil
    Py_ssize_t fleetproxy_string_close(const unsigned char *s, Py_ssize_t at, Py_ssize_t n) noexcept nogil
    int fleetproxy_vllm_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t start, const char *vllm_end,
                            Py_ssize_t end_size, const char *event, Py_ssize_t event_size, const unsigned char *print,
                            Py_ssize_t print_size, const unsigned char *print_skip, const unsigned char *pair,
                            Py_ssize_t pair_size, const unsigned char *finish_key, Py_ssize_t finish_size,
                            const unsigned char *finish_skip, Py_ssize_t *where) noexcept nogil
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

@cython.locals(k=Py_ssize_t, n=Py_ssize_t, m=Py_ssize_t, end=bytes, ends=list)
cpdef bytes known(bytes data)

cpdef bint quiet(bytes data, bytes end)

@cython.locals(n=Py_ssize_t)
cpdef Py_ssize_t rfind(bytes data, bytes needle, bytes skip, Py_ssize_t lo=*, Py_ssize_t hi=*)

@cython.locals(n=Py_ssize_t)
cpdef Py_ssize_t rfind_open(bytes data, bytes key, Py_ssize_t lo=*, Py_ssize_t hi=*)

@cython.locals(event=Py_ssize_t, opened=Py_ssize_t)
cpdef Py_ssize_t rfind_event_open(bytes data, bytes key, Py_ssize_t lo=*)

@cython.locals(n=Py_ssize_t, size=Py_ssize_t, i=Py_ssize_t, buf="const unsigned char *", lit="const unsigned char *")
cpdef Py_ssize_t after(bytes data, Py_ssize_t pos, bytes literal) except -2


@cython.locals(n=Py_ssize_t, buf="const unsigned char *", lit="const unsigned char *", hit="const unsigned char *")
cpdef Py_ssize_t find(bytes data, bytes needle, Py_ssize_t start=*, Py_ssize_t end=*)


@cython.locals(i=Py_ssize_t, c=int, n=Py_ssize_t)
cpdef Py_ssize_t _string_end(bytes data, Py_ssize_t at, Py_ssize_t n=*)

@cython.locals(n=Py_ssize_t, finish=Py_ssize_t, usage=Py_ssize_t, done=Py_ssize_t, pos=Py_ssize_t, end=Py_ssize_t,
               at=Py_ssize_t, found=Py_ssize_t, stop=Py_ssize_t, size=Py_ssize_t, buf="const unsigned char *",
               event=bytes, kind=int, where="Py_ssize_t[8]")
cpdef _strip_vllm(bytes tail, Py_ssize_t start=*)

cpdef tuple strip(bytes data, bint chunked, Py_ssize_t start=*)

@cython.locals(n=Py_ssize_t, pos=Py_ssize_t, end=Py_ssize_t)
cpdef Py_ssize_t unit_start(bytes data, Py_ssize_t at, bint chunked)

@cython.locals(size=Py_ssize_t, i=Py_ssize_t, c=int, stop=Py_ssize_t)
cdef Py_ssize_t _chunk_end(const unsigned char *buf, Py_ssize_t n, Py_ssize_t pos) noexcept

cdef Py_ssize_t _payload(const unsigned char *buf, Py_ssize_t chunk) noexcept

@cython.locals(at=Py_ssize_t)
cpdef bytes usage_body(bytes body)

@cython.locals(buf="const unsigned char *", hit="const unsigned char *")
cdef inline Py_ssize_t _index(bytes data, int byte) noexcept

@cython.locals(query=Py_ssize_t, path=bytes, walked=Walked)
cpdef bint wants_usage(method, bytes target, fields)  # per request, from the observer (a C call there)
