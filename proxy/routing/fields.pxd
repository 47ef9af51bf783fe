# Types for Cython's compile of fields.py (the native build; see _speedups/__init__.py): the
# prompt walk's counters as C integers, and the Prompt cache_aware reads as struct members. Its
# __slots__ say the same for the pure build.
cimport cython


cdef class Prompt:
    cdef public bytes text
    cdef public Py_ssize_t opening
    cdef public bint later


@cython.locals(size=Py_ssize_t, opening=Py_ssize_t, later=bint, parts=list, joined=str)
cpdef prompt_of(fields, Py_ssize_t limit, Py_ssize_t least=*)

cpdef decode(body, model_only=*)

cpdef prompt_prefix(fields, size)


# scan: a body's model-only fields in one walk over its bytes through a pointer.
cdef class Scanned:
    cdef public object model, stream, n

cdef bint _COMPILED
cdef int _DEEPEST
cdef Scanned _last
cdef bytes _last_model

cdef extern from *:
    '''
    #include <stdint.h>
    #include <string.h>
    /* fields._string_end: where the JSON string whose first byte is at pos ends (its closing
       quote), or -1 (no end, a control byte, a \\u or malformed escape); plain (_key_end): -1
       at any backslash. Eight bytes a step, each tested for a quote, a backslash or a byte
       below 0x20 at once (the "has a zero byte" and "has a byte less than" word tricks); a
       borrow only runs upwards from a byte that is one of them, so on a little-endian machine
       the first is the lowest flag's. */
    static inline Py_ssize_t fleetproxy_string_end(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n,
                                                   int plain) {
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        for (;;) {
            while (pos + 8 <= n) {
                uint64_t v, q, b, found;
                memcpy(&v, s + pos, 8);
                q = v ^ (ones * 0x22);
                b = v ^ (ones * 0x5C);
                found = (((q - ones) & ~q) | ((b - ones) & ~b) | ((v - ones * 0x20) & ~v)) & highs;
                if (found) {
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                    pos += __builtin_ctzll(found) >> 3;
    #endif
                    break;
                }
                pos += 8;
            }
            while (pos < n && s[pos] != 0x22 && s[pos] != 0x5C && s[pos] >= 0x20)
                pos++;
            if (pos >= n)
                return -1;
            if (s[pos] == 0x22)
                return pos;
            if (plain || s[pos] != 0x5C || pos + 1 >= n)
                return -1;  /* plain: a key, where any escape is msgspec's */
            switch (s[pos + 1]) {
            case 0x22: case 0x5C: case 0x2F: case 0x62: case 0x66: case 0x6E: case 0x72: case 0x74:  /* "\\/bfnrt */
                pos += 2;
                break;
            default:
                return -1;
            }
        }
    }
    '''
    Py_ssize_t fleetproxy_string_end(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n, int plain) nogil

@cython.locals(n=Py_ssize_t, buf="const unsigned char *", seen=int, pos=Py_ssize_t, at=Py_ssize_t,
               size=Py_ssize_t, first=int, model_at=Py_ssize_t, model_end=Py_ssize_t, fields=Scanned)
cpdef scan(bytes body)

# The walk's helpers inline: called a dozen times per body, each a few instructions of work.
cdef inline Py_ssize_t _space(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) noexcept

@cython.locals(c=int)
cdef inline Py_ssize_t _string_end(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) noexcept

cdef inline Py_ssize_t _key_end(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) noexcept

cdef inline bint _printable(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t end) noexcept

@cython.locals(i=Py_ssize_t)
cdef inline bint _same(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n, const unsigned char *word,
                Py_ssize_t size) noexcept

@cython.locals(c=int, close=int)
cdef Py_ssize_t _skip(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n, int depth) noexcept

@cython.locals(at=Py_ssize_t)
cdef Py_ssize_t _number_end(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) noexcept
