# Augmenting declarations for framing_c.py, the copy of framing.py that setup.py compiles.
#
# Nothing here changes what the code does; it only gives Cython C types for the names the
# source already uses (the aiohttp `reader_c.pxd` pattern). The public names of the module
# (HEAD, DONE, ERROR, EVENT, NONE, LENGTH, CHUNKED, UNTIL_CLOSE, ResponseFramer) stay Python
# objects; the private state constants and helpers become C. `buf` / `lbuf` are the data's own
# bytes seen through a pointer: borrowed from a `bytes` object the function holds a reference
# to, never stored beyond the call.

cimport cython

cdef int _HEAD, _DONE, _ERROR, _EVENT
cdef int S_HEAD, S_LENGTH, S_SIZE, S_DATA, S_DATA_CRLF, S_TRAILER, S_CLOSE, S_DONE, S_ERROR
cdef Py_ssize_t MAX_HEAD, MAX_SIZE_LINE, MAX_TRAILER, MAX_LENGTH_DIGITS, MAX_INTERIM
cdef bytes _TCHAR, _TCHARS, _HEXDIG
cdef bint _COMPILED, _NATIVE
cdef str _BARE, _SWITCH, _UNSUPPORTED_TE
cdef bytes _OK

cdef bint _sse_tail_is_boundary(unsigned int tail) noexcept

@cython.locals(i=Py_ssize_t)
cdef unsigned int _tail_after(unsigned int tail, const unsigned char *buf,
                              Py_ssize_t end, Py_ssize_t take) noexcept

@cython.locals(i=Py_ssize_t, c=int)
cdef bint _matches(const unsigned char *buf, Py_ssize_t at, const char *literal, Py_ssize_t n,
                   bint fold) noexcept

@cython.locals(i=Py_ssize_t, c=int, found="const unsigned char *")
cdef Py_ssize_t _blank_line(const unsigned char *buf, Py_ssize_t start, Py_ssize_t end) noexcept

cdef extern from "string.h":
    const unsigned char *memchr(const void *s, int c, size_t n) nogil

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* framing._line_end in one pass: eight bytes a step, each tested for being below 0x0E at
       once (the "has a byte less than" word trick: a borrow runs only upwards from a byte
       that is one, so on a little-endian machine the lowest flag is the first such byte);
       a CR, LF or NUL found is judged, any other control byte (a tab) passed over. It was
       three vector searches per line (CR, then LF and NUL before it). */
    static inline Py_ssize_t fleetproxy_line_end(const unsigned char *s, Py_ssize_t i, Py_ssize_t end) {
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        for (;;) {
            while (i + 8 <= end) {
                uint64_t v, found;
                memcpy(&v, s + i, 8);
                found = (v - ones * 0x0E) & ~v & highs;
                if (found) {
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                    i += __builtin_ctzll(found) >> 3;
    #endif
                    break;
                }
                i += 8;
            }
            while (i < end && s[i] >= 0x0E)
                i++;
            if (i >= end)
                return end;
            if (s[i] == 0x0D)
                return i + 1 < end && s[i + 1] == 0x0A ? i : -1;
            if (s[i] == 0x0A || s[i] == 0)
                return -1;
            i++;
        }
    }
    """
    Py_ssize_t fleetproxy_line_end(const unsigned char *s, Py_ssize_t i, Py_ssize_t end) nogil

cdef extern from *:
    """
    /* framing._name_is: eight bytes a step (n >= 8; the last step overlaps the one before),
       0x20 OR-ed into the name's bytes, the literal already lower case. */
    static inline int fleetproxy_name_is(const unsigned char *s, const char *lit, Py_ssize_t n) {
        const uint64_t fold = 0x2020202020202020ULL;
        uint64_t a, b;
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&a, s + i, 8);
            memcpy(&b, lit + i, 8);
            if ((a | fold) != b)
                return 0;
        }
        if (i < n) {
            memcpy(&a, s + n - 8, 8);
            memcpy(&b, lit + n - 8, 8);
            if ((a | fold) != b)
                return 0;
        }
        return 1;
    }
    """
    bint fleetproxy_name_is(const unsigned char *s, const char *lit, Py_ssize_t n) nogil

cdef bint _name_is(const unsigned char *buf, Py_ssize_t at, const char *literal, Py_ssize_t n) noexcept

@cython.locals(c=int)
cdef Py_ssize_t _line_end(const unsigned char *buf, Py_ssize_t i, Py_ssize_t end) noexcept

@cython.locals(i=Py_ssize_t)
cdef bint _bare_byte(const unsigned char *buf, Py_ssize_t start, Py_ssize_t end) noexcept

@cython.locals(codings=list)
cdef bint _one_final_chunked(bytes value) except -1

@cython.locals(colon=Py_ssize_t, eol=Py_ssize_t, i=Py_ssize_t)
cdef _fields(bytes data, Py_ssize_t pos, Py_ssize_t stop, list out)

cdef inline Py_ssize_t _ows_after(const unsigned char *buf, Py_ssize_t i, Py_ssize_t j) noexcept
cdef inline Py_ssize_t _ows_before(const unsigned char *buf, Py_ssize_t i, Py_ssize_t j) noexcept

@cython.locals(tokens=list)
cdef bint _keep_alive_after(bytes value, bint keep_alive, bint http10) except -1

@cython.locals(size="long long", i=Py_ssize_t, c="unsigned char", d=int)
cdef long long _chunk_size(const unsigned char *buf, Py_ssize_t start,
                           Py_ssize_t end) noexcept


cdef class ResponseFramer:
    # What ``feed`` and the relay read and write on every read of a body, first and together:
    # in two cache lines, not spread over four (proxy/http/relay.pxd says why).
    cdef int state
    cdef public bint event_stream
    cdef unsigned int _tail
    cdef public int kind
    cdef Py_ssize_t _units
    cdef public Py_ssize_t head_end
    cdef public Py_ssize_t safe_end
    cdef public Py_ssize_t msg_end
    cdef public long long body_bytes
    cdef bytes _line
    cdef Py_ssize_t _unit[4]
    cdef long long _remaining
    cdef bint _hold
    cdef public bint keep_alive
    # The head's, and the rest.
    cdef public bint head_request
    cdef bytearray _head_buf
    cdef public int status
    cdef public bytes version
    cdef public bytes reason
    cdef list _headers
    cdef bint _lazy
    cdef Py_ssize_t _walk_from, _walked
    cdef public bytes raw_head
    cdef public long long content_length
    cdef public str error
    cdef Py_ssize_t _trailer
    cdef int _interim

    @cython.locals(buf="const unsigned char *", lbuf="const unsigned char *", line=bytes,
                   n=Py_ssize_t, flags=int, pos=Py_ssize_t, state=int, sse=bint,
                   take=Py_ssize_t, have=Py_ssize_t, limit=Py_ssize_t, stop=Py_ssize_t,
                   nl=Py_ssize_t, start=Py_ssize_t, end=Py_ssize_t, size="long long", i=Py_ssize_t, hexdig="const unsigned char *",
                   chunk=bytes)
    cpdef int feed(self, data) except -1

    @cython.locals(acc=bytearray, prior=Py_ssize_t, end=Py_ssize_t, pos=Py_ssize_t,
                   head=bytes, start=Py_ssize_t, err=str, kind=int, state=int, skip=Py_ssize_t)
    cdef Py_ssize_t _head(self, bytes data, Py_ssize_t n) except -2

    # Compiled but not run here (_COMPILED): _scan_head is.
    @cython.locals(head=bytes, lines=list, count=Py_ssize_t, parts=list, version=bytes,
                   code=bytes, keep_alive=bint, chunked=bint, length="long long",
                   size="long long", headers=list, i=Py_ssize_t, line=bytes, colon=Py_ssize_t,
                   name=bytes, value=bytes, lname=bytes, digits=bytes, verbatim=bint)
    cdef str _parse_head(self, bytes data, Py_ssize_t start, Py_ssize_t end)

    @cython.locals(version=bytes, reason=bytes, stream=bint, err=str)
    cdef str _scan_head(self, bytes data, Py_ssize_t start, Py_ssize_t end)

    @cython.locals(buf="const unsigned char *", tchar="const unsigned char *", c=int,
                   i=Py_ssize_t, j=Py_ssize_t, n=Py_ssize_t, eol=Py_ssize_t, pos=Py_ssize_t,
                   colon=Py_ssize_t, http10=bint, keep_alive=bint, chunked=bint,
                   length="long long", size="long long", plain=bint, verbatim=bint, first=Py_ssize_t)
    cdef str _walk_head(self, bytes data, Py_ssize_t start, Py_ssize_t end)

    @cython.locals(status=int)
    cdef str _framing(self, bint keep_alive, bint chunked, long long length)

    cdef int _fail(self, str message) noexcept

    cpdef forget_head(self)

    @cython.locals(k=Py_ssize_t, i=Py_ssize_t, start=Py_ssize_t)
    cpdef Py_ssize_t unit_of(self, Py_ssize_t at)

    @cython.locals(buf="const unsigned char *", tail="unsigned int", best=Py_ssize_t,
                   i=Py_ssize_t, stop=Py_ssize_t, cut=Py_ssize_t)
    cdef int _sse_plain(self, bytes data, Py_ssize_t start, Py_ssize_t end) except -1

    cdef int _setup(self, bint head_request) except -1
    cdef list _field_list(self)


@cython.locals(framer=ResponseFramer)
cpdef ResponseFramer new_framer(bint head_request)
