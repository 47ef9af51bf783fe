# Types for Cython's compile of plainrequest.py (the native build; see _speedups/__init__.py):
# the walk over a request's bytes through a pointer, positions and counts as C integers.
cimport cython

cdef bytes CLASSES, _HOST, _LENGTH, _REQUEST_ID, _ASKS_LOAD, _CONNECTION, _KEEP_ALIVE, _VERSION
cdef frozenset _NOT_PLAIN
cdef tuple _BY_SIZE, _CLASS_BY_SIZE, _JOINED
cdef bint _COMPILED
cdef Py_ssize_t _MAX_FIELDS

cdef extern from *:
    """
    #include <string.h>

    static PyObject *fleetproxy_lower(const unsigned char *s, Py_ssize_t n) {
        PyObject *out = PyBytes_FromStringAndSize(NULL, n);
        if (out != NULL) {
            char *d = PyBytes_AS_STRING(out);
            for (Py_ssize_t i = 0; i < n; i++)
                d[i] = (char)((s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i]);
        }
        return out;
    }

    static int fleetproxy_same_lower(const unsigned char *s, const char *lower, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char c = s[i];
            if (c >= 'A' && c <= 'Z')
                c += 32;
            if (c != (unsigned char)lower[i])
                return 0;
        }
        return 1;
    }

    /* Where the name s[0:n] (n < 32), compared ignoring case, is among the names of n bytes
       set end to end in ``names`` (lower-case letters, digits and "-"), or -1. Eight bytes a
       step: a name is tchars, and of the bytes that OR 0x20 makes a letter, a digit or "-",
       the tchars are exactly that letter's two cases, that digit, and "-". */
    static inline unsigned long long fleetproxy_word(const unsigned char *p, Py_ssize_t k) {
        unsigned long long v = 0;
        if (k >= 8)
            memcpy(&v, p, 8);
        else
            memcpy(&v, p, k);
        return v;
    }

    static Py_ssize_t fleetproxy_known(const unsigned char *s, Py_ssize_t n, const char *names, Py_ssize_t size) {
        unsigned long long w[4];
        Py_ssize_t words = (n + 7) >> 3;
        for (Py_ssize_t j = 0; j < words; j++) {
            Py_ssize_t k = n - 8 * j;
            unsigned long long mask = k >= 8 ? ~0ULL : (1ULL << (8 * k)) - 1;
            w[j] = fleetproxy_word(s + 8 * j, k) | (0x2020202020202020ULL & mask);
        }
        for (Py_ssize_t at = 0, i = 0; at < size; at += n, i++) {
            Py_ssize_t j = 0;
            while (j < words && fleetproxy_word((const unsigned char *)names + at + 8 * j, n - 8 * j) == w[j])
                j++;
            if (j == words)
                return i;
        }
        return -1;
    }

    /* The start of the first eight bytes of s[pos:n] with one that may not be a field value's
       (below 0x20, HTAB too, or 0x7f), eight bytes a step, or where fewer than eight are left:
       the caller's byte loop reads on from there (an HTAB is a value's byte, rare enough to
       leave to it). Bit tricks: a byte below 0x20, or equal to 0x7f, sets its high bit in
       ``low`` or ``del``; a byte of 0x80 or more sets neither. */
    static Py_ssize_t fleetproxy_value_run(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) {
        const unsigned long long ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        while (pos + 8 <= n) {
            unsigned long long x, y;
            memcpy(&x, s + pos, 8);
            y = x ^ (0x7f * ones);
            unsigned long long low = (x - 0x20 * ones) & ~x & highs;
            unsigned long long del = (y - ones) & ~y & highs;
            if (low | del)
                break;
            pos += 8;
        }
        return pos;
    }

    /* Fields.forwarded: each field of ``head`` (lines "name:" OWS value CRLF, as read_plain
       checked them) whose kind (two bits of ``kinds`` per line, the first line's lowest) is 0
       (KEEP), or 2 (FORWARDING_FIELD) from a trusted peer, written CRLF, name lower-cased,
       ": ", value. A field grows by at most a byte (its CRLF moves, a colon without OWS gains
       a space), so the head's size plus a byte per field holds them: on the stack for the
       usual head, copied out once. */
    static PyObject *fleetproxy_forward(PyObject *head, Py_ssize_t n, unsigned long long kinds,
                                        Py_ssize_t count, int trusted) {
        const unsigned char *h = (const unsigned char *)PyBytes_AS_STRING(head);
        unsigned char small[2048];
        unsigned char *d = small;
        PyObject *big = NULL;
        if (n + count > (Py_ssize_t)sizeof(small)) {
            big = PyBytes_FromStringAndSize(NULL, n + count);
            if (big == NULL)
                return NULL;
            d = (unsigned char *)PyBytes_AS_STRING(big);
        }
        Py_ssize_t w = 0, pos = 0;
        for (Py_ssize_t i = 0; i < count && pos < n; i++) {
            const unsigned char *line = h + pos;
            const unsigned char *colon = (const unsigned char *)memchr(line, 0x3a, n - pos);
            if (colon == NULL)
                break;  /* not a head read_plain checked: nothing more is written */
            const unsigned char *cr = (const unsigned char *)memchr(colon, 0x0d, h + n - colon);
            if (cr == NULL)
                break;
            unsigned int kind = (unsigned int)(kinds >> (2 * i)) & 3;
            if (kind == 0 || (kind == 2 && trusted)) {
                d[w++] = 0x0d;
                d[w++] = 0x0a;
                for (const unsigned char *c = line; c < colon; c++)
                    d[w++] = (*c >= 0x41 && *c <= 0x5a) ? *c + 32 : *c;
                d[w++] = 0x3a;
                d[w++] = 0x20;
                const unsigned char *v = colon + 1;
                while (v < cr && (*v == 0x20 || *v == 0x09))
                    v++;
                memcpy(d + w, v, cr - v);
                w += cr - v;
            }
            pos = (cr - h) + 2;
        }
        if (big == NULL)
            return PyBytes_FromStringAndSize((const char *)small, w);
        if (_PyBytes_Resize(&big, w) < 0)
            return NULL;
        return big;
    }
    """
    bytes fleetproxy_lower(const unsigned char *s, Py_ssize_t n)
    bytes fleetproxy_forward(bytes head, Py_ssize_t n, unsigned long long kinds, Py_ssize_t count, bint trusted)
    bint fleetproxy_same_lower(const unsigned char *s, const char *lower, Py_ssize_t n)
    Py_ssize_t fleetproxy_value_run(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n)
    Py_ssize_t fleetproxy_known(const unsigned char *s, Py_ssize_t n, const char *names, Py_ssize_t size)


cpdef bint sane_request_id(bytes value)


cdef class Bounds:
    cdef public Py_ssize_t request_line, head, fields, body


@cython.locals(size=Py_ssize_t, joined=bytes, same=tuple)
cdef Py_ssize_t _known(const unsigned char *buf, Py_ssize_t start, Py_ssize_t end) noexcept


@cython.locals(i=Py_ssize_t)
cdef bytes _lower(const unsigned char *buf, Py_ssize_t start, Py_ssize_t end)


cdef extern from "string.h":
    int memcmp(const void *a, const void *b, size_t n) nogil


cdef bint _at(const unsigned char *buf, Py_ssize_t pos, const char *expected, Py_ssize_t n) noexcept


cdef bint _is_keep_alive(const unsigned char *buf, Py_ssize_t start, Py_ssize_t end) noexcept


@cython.final
cdef class Fields:
    cdef readonly bytes head
    cdef readonly unsigned long long kinds
    cdef readonly Py_ssize_t count
    cdef list _list
    cdef bytes _forwarded
    cdef int _trusted

    cpdef list pairs(self)
    cpdef forwarded(self, bint trusted)


@cython.locals(out=list, pos=Py_ssize_t, n=Py_ssize_t, colon=Py_ssize_t, eol=Py_ssize_t, at=Py_ssize_t)
cdef list _split(bytes head)


cdef _forward(bytes head, unsigned long long kinds, Py_ssize_t count, bint trusted)


@cython.locals(fields=Fields)
cdef Fields _new_fields(bytes head, unsigned long long kinds, Py_ssize_t count)


@cython.locals(n=Py_ssize_t, pos=Py_ssize_t, at=Py_ssize_t, head_bytes=Py_ssize_t, max_head=Py_ssize_t,
               max_fields=Py_ssize_t, hosts=Py_ssize_t, length="long long", asks_load=bint, first=Py_ssize_t,
               known=Py_ssize_t, cls=int, role=int, kind="unsigned long long", kinds="unsigned long long", count=Py_ssize_t, same=bytes,
               headers=Fields,
               buf="const unsigned char *", classes="const unsigned char *", value=bytes)
cpdef read_plain(bytes data, Py_ssize_t start, Bounds bounds)
