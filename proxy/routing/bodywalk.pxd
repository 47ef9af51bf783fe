# Types for Cython's compile of bodywalk.py (the native build; see _speedups/__init__.py): a
# body's fields in one walk over its bytes through a pointer, the messages' strings kept as
# spans of the body, and the Prompt cache_aware reads as struct members.
cimport cython


cdef class Prompt:
    cdef public bytes text
    cdef public Py_ssize_t opening
    cdef public bint later


cdef class Walked:
    cdef public object model, user, stream, n, _messages
    cdef public bytes body
    cdef public list spans, prompt_span
    cdef public Py_ssize_t prompt_at, prompt_end

cdef bint _COMPILED
cdef int _DEEPEST
cdef Walked _last
cdef bytes _model_raw
cdef str _model_text

cdef extern from *:
    '''
    #include <stdint.h>
    #include <string.h>
    /* bodywalk._string_end: where the JSON string whose first byte is at pos ends (its closing
       quote), or -1 (no end, a control byte, a \\u or malformed escape); plain (_key_end): -1
       at any backslash. Sixteen bytes a step where SSE2 is (a body's keys and short values end
       in the first), then eight, each tested for a quote, a backslash or a byte below 0x20 at
       once (the "has a zero byte" and "has a byte less than" word tricks); a borrow only runs
       upwards from a byte that is one of them, so on a little-endian machine the first is the
       lowest flag's. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    static inline Py_ssize_t fleetproxy_string_end(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n,
                                                   int plain) {
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        for (;;) {
    #if defined(__SSE2__)
            while (pos + 16 <= n) {
                __m128i v = _mm_loadu_si128((const __m128i *)(s + pos));
                int mask = _mm_movemask_epi8(_mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(0x22)), _mm_cmpeq_epi8(v, _mm_set1_epi8(0x5C))),
                    _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1F)), v)));  /* unsigned: v <= 0x1F */
                if (mask) {
                    pos += __builtin_ctz((unsigned)mask);
                    goto stop;  /* at the byte that ends the run: no second look at it */
                }
                pos += 16;
            }
    #endif
            while (pos + 8 <= n) {
                uint64_t v, q, b, found;
                memcpy(&v, s + pos, 8);
                q = v ^ (ones * 0x22);
                b = v ^ (ones * 0x5C);
                found = (((q - ones) & ~q) | ((b - ones) & ~b) | ((v - ones * 0x20) & ~v)) & highs;
                if (found) {
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                    pos += __builtin_ctzll(found) >> 3;
                    goto stop;
    #endif
                    break;
                }
                pos += 8;
            }
            while (pos < n && s[pos] != 0x22 && s[pos] != 0x5C && s[pos] >= 0x20)
                pos++;
        stop:
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

cdef extern from *:
    '''
    /* bodywalk._space and _number_end, compiled (the .py is the rule); then
       bodywalk._skip(buf, pos, n, depth, False) without its recursion: the offset after the JSON
       value at pos, or -1, by the same rules in the same order (a test holds the two builds' scan
       to one another on fuzzed bodies). What scan skips is every key but the few it reads: a
       chat's messages, a call per value and per string through Cython's optional arguments
       before. The open containers' closing bytes are a stack; depth counts as _skip's does. */
    static inline Py_ssize_t fleetproxy_space(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) {
        /* Most calls find none: a byte above 0x20 answers at once. */
        while (pos < n && s[pos] <= 0x20 && (s[pos] == 0x20 || s[pos] == 0x0A || s[pos] == 0x0D || s[pos] == 0x09))
            pos++;
        return pos;
    }

    /* fleetproxy_string_end where the string's end is in its first 16 bytes without an escape
       before it (keys, roles, short values: most of what the skip and the scan meet), inline at
       the call; anything else is fleetproxy_string_end's, from pos again. */
    static inline Py_ssize_t fleetproxy_short_end(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n, int plain) {
    #if defined(__SSE2__)
        if (pos + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i *)(s + pos));
            int mask = _mm_movemask_epi8(_mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(0x22)), _mm_cmpeq_epi8(v, _mm_set1_epi8(0x5C))),
                _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1F)), v)));
            if (mask) {
                Py_ssize_t at = pos + __builtin_ctz((unsigned)mask);
                if (s[at] == 0x22)
                    return at;
            }
        }
    #endif
        return fleetproxy_string_end(s, pos, n, plain);
    }

    static Py_ssize_t fleetproxy_number_end(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) {
        Py_ssize_t at = pos;
        if (s[pos] == 0x2D)
            pos++;
        if (pos >= n || s[pos] < 0x30 || s[pos] > 0x39)
            return -1;
        if (s[pos] == 0x30)
            pos++;
        else
            while (pos < n && s[pos] >= 0x30 && s[pos] <= 0x39)
                pos++;
        if (pos < n && s[pos] == 0x2E) {
            pos++;
            if (pos >= n || s[pos] < 0x30 || s[pos] > 0x39)
                return -1;
            while (pos < n && s[pos] >= 0x30 && s[pos] <= 0x39)
                pos++;
        }
        if ((pos < n && (s[pos] == 0x65 || s[pos] == 0x45)) || pos - at > 32)
            return -1;
        return pos;
    }

    static Py_ssize_t fleetproxy_skip(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n, int depth, int deepest) {
        unsigned char close[64];
        int top = 0;
        if (deepest - depth > 64)
            return -1;
        for (;;) {
            /* a value at pos */
            if (pos >= n)
                return -1;
            unsigned char c = s[pos];
            if (c == 0x22) {
                pos = fleetproxy_short_end(s, pos + 1, n, 0);
                if (pos < 0)
                    return -1;
                pos++;
            } else if (c == 0x2D || (c >= 0x30 && c <= 0x39)) {
                pos = fleetproxy_number_end(s, pos, n);
                if (pos < 0)
                    return -1;
            } else if (c == 0x74) {
                if (pos + 4 > n || memcmp(s + pos, "true", 4) != 0)
                    return -1;
                pos += 4;
            } else if (c == 0x66) {
                if (pos + 5 > n || memcmp(s + pos, "false", 5) != 0)
                    return -1;
                pos += 5;
            } else if (c == 0x6E) {
                if (pos + 4 > n || memcmp(s + pos, "null", 4) != 0)
                    return -1;
                pos += 4;
            } else {
                if (depth + top >= deepest || !(c == 0x5B || c == 0x7B))
                    return -1;
                pos = fleetproxy_space(s, pos + 1, n);
                if (pos < n && s[pos] == c + 2) {  /* empty: "]" or "}" */
                    pos++;
                    goto after;
                }
                close[top++] = c + 2;
                goto member;
            }
        after:  /* after a value: the end of its container, or a comma and the next */
            if (top == 0)
                return pos;
            pos = fleetproxy_space(s, pos, n);
            if (pos >= n)
                return -1;
            if (s[pos] == close[top - 1]) {
                pos++;
                top--;
                goto after;
            }
            if (s[pos] != 0x2C)
                return -1;
            pos = fleetproxy_space(s, pos + 1, n);
        member:  /* an object's member starts with its key, ":" */
            if (close[top - 1] == 0x7D) {
                if (pos >= n || s[pos] != 0x22)
                    return -1;
                pos = fleetproxy_short_end(s, pos + 1, n, 0);
                if (pos < 0)
                    return -1;
                pos = fleetproxy_space(s, pos + 1, n);
                if (pos >= n || s[pos] != 0x3A)
                    return -1;
                pos = fleetproxy_space(s, pos + 1, n);
            }
        }
    }
    '''
    Py_ssize_t fleetproxy_space(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) nogil
    Py_ssize_t fleetproxy_number_end(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) nogil
    Py_ssize_t fleetproxy_skip(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n, int depth, int deepest) nogil

cdef extern from *:
    '''
    /* bodywalk._walk(body, False), scan, whole: the top level's members by the same rules in the
       same order, the model, stream and n read and every other value skipped (fleetproxy_skip).
       0 with what it read in fleetproxy_scanned (stream -1: none, 0 false, 1 true; count 0:
       none, 1), or -1 where the walk is not sure of the body. Per key, the .py's walk costs a
       dozen calls with their checks; a chat's body has a few keys and is a hundred bytes. */
    typedef struct {
        Py_ssize_t model_at, model_end;
        int stream, count;
    } fleetproxy_scan_t;
    static fleetproxy_scan_t fleetproxy_scanned;
    static inline int fleetproxy_scan_word(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n, const char *word,
                                      Py_ssize_t size) {
        return pos + size <= n && memcmp(s + pos, word, (size_t)size) == 0;
    }
    static int fleetproxy_scan(const unsigned char *s, Py_ssize_t n, int deepest) {
        Py_ssize_t pos, at, end, i, model_at = -1, model_end = -1;
        int seen = 0, stream = -1, count = 0;
        pos = fleetproxy_space(s, 0, n);
        if (pos >= n || s[pos] != 0x7B)  /* { */
            return -1;
        pos = fleetproxy_space(s, pos + 1, n);
        if (pos < n && s[pos] == 0x7D) {  /* } */
            pos++;
        } else {
            for (;;) {
                /* _key and _value: a key without an escape, a colon, the value's first byte */
                if (pos >= n || s[pos] != 0x22)
                    return -1;
                at = pos + 1;
                end = fleetproxy_short_end(s, at, n, 1);
                if (end < 0)
                    return -1;
                pos = fleetproxy_space(s, end + 1, n);
                if (pos >= n || s[pos] != 0x3A)
                    return -1;
                pos = fleetproxy_space(s, pos + 1, n);
                if (pos >= n)
                    return -1;
                if (end - at == 5 && memcmp(s + at, "model", 5) == 0) {
                    if (seen & 1)
                        return -1;
                    seen |= 1;
                    if (s[pos] == 0x22) {
                        model_at = pos + 1;
                        pos = fleetproxy_short_end(s, model_at, n, 0);
                        if (pos < 0)
                            return -1;
                        for (i = model_at; i < pos; i++)  /* _printable */
                            if (s[i] < 0x20 || s[i] >= 0x7F || s[i] == 0x5C)
                                return -1;
                        model_end = pos++;
                    } else if (fleetproxy_scan_word(s, pos, n, "null", 4)) {
                        pos += 4;
                    } else {
                        return -1;
                    }
                } else if (end - at == 6 && memcmp(s + at, "stream", 6) == 0) {
                    if (seen & 2)
                        return -1;
                    seen |= 2;
                    if (fleetproxy_scan_word(s, pos, n, "true", 4)) {
                        stream = 1;
                        pos += 4;
                    } else if (fleetproxy_scan_word(s, pos, n, "false", 5)) {
                        stream = 0;
                        pos += 5;
                    } else if (fleetproxy_scan_word(s, pos, n, "null", 4)) {
                        pos += 4;
                    } else {
                        return -1;
                    }
                } else if (end - at == 1 && s[at] == 0x6E) {  /* n */
                    if (seen & 4)
                        return -1;
                    seen |= 4;
                    if (s[pos] == 0x31 && pos + 1 < n && !(s[pos + 1] >= 0x30 && s[pos + 1] <= 0x39)
                            && s[pos + 1] != 0x2E) {
                        count = 1;
                        pos++;
                    } else if (fleetproxy_scan_word(s, pos, n, "null", 4)) {
                        pos += 4;
                    } else {
                        return -1;
                    }
                } else if (end - at == 14 && memcmp(s + at, "stream_options", 14) == 0) {
                    return -1;
                } else {
                    pos = fleetproxy_skip(s, pos, n, 1, deepest);
                    if (pos < 0)
                        return -1;
                }
                pos = fleetproxy_space(s, pos, n);
                if (pos >= n)
                    return -1;
                if (s[pos] == 0x2C) {  /* , */
                    pos = fleetproxy_space(s, pos + 1, n);
                } else if (s[pos] == 0x7D) {
                    pos++;
                    break;
                } else {
                    return -1;
                }
            }
        }
        if (fleetproxy_space(s, pos, n) != n)
            return -1;
        fleetproxy_scanned.model_at = model_at;
        fleetproxy_scanned.model_end = model_end;
        fleetproxy_scanned.stream = stream;
        fleetproxy_scanned.count = count;
        return 0;
    }
    '''
    ctypedef struct fleetproxy_scan_t:
        Py_ssize_t model_at, model_end
        int stream, count
    fleetproxy_scan_t fleetproxy_scanned
    int fleetproxy_scan(const unsigned char *s, Py_ssize_t n, int deepest) nogil

@cython.locals(buf="const unsigned char *", n=Py_ssize_t, code=int)
cpdef scan(bytes body)

@cython.locals(model=str, fields=Walked)
cdef Walked _scanned(const unsigned char *buf, Py_ssize_t n, Py_ssize_t model_at, Py_ssize_t model_end, stream,
                     count)

@cython.locals(fields=Walked)
cdef inline Walked _walked(model, user, stream, count, bytes body, list spans, Py_ssize_t prompt_at,
                           Py_ssize_t prompt_end, list prompt_span)

# The walk's helpers inline: called a dozen times per body, each a few instructions of work.
cdef inline Py_ssize_t _key(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) noexcept

@cython.locals(pos=Py_ssize_t)
cdef inline Py_ssize_t _value(const unsigned char *buf, Py_ssize_t end, Py_ssize_t n) noexcept

cdef inline Py_ssize_t _space(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) noexcept

@cython.locals(c=int)
cdef inline Py_ssize_t _string_end(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) noexcept

cdef inline Py_ssize_t _key_end(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) noexcept

cdef inline bint _printable(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t end) noexcept

@cython.locals(i=Py_ssize_t)
cdef inline bint _same(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n, const unsigned char *word,
                Py_ssize_t size) noexcept

@cython.locals(c=int, close=int)
cdef Py_ssize_t _skip(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n, int depth, bint texts=*) noexcept

cdef inline Py_ssize_t _after_string(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n, bint texts) noexcept

@cython.locals(at=Py_ssize_t)
cdef Py_ssize_t _number_end(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) noexcept



cdef int _ROLE, _PLAIN, _ESCAPED, _END
cdef Py_ssize_t _MOST_SPANS

cdef extern from *:
    '''
    /* The four hex digits at pos as a number, or -1. */
    static inline int fleetproxy_hex4(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) {
        int v = 0, i;
        if (pos + 4 > n)
            return -1;
        for (i = 0; i < 4; i++) {
            unsigned char c = s[pos + i];
            if (c >= '0' && c <= '9') v = v * 16 + (c - '0');
            else if (c >= 'a' && c <= 'f') v = v * 16 + (c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v = v * 16 + (c - 'A' + 10);
            else return -1;
        }
        return v;
    }
    /* The length of the well-formed UTF-8 character at pos (Unicode's table 3-7), or 0. */
    static inline int fleetproxy_utf8(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) {
        unsigned char c = s[pos], lo = 0x80, hi = 0xBF;
        int size, i;
        if (c >= 0xC2 && c <= 0xDF) size = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            size = 3;
            if (c == 0xE0) lo = 0xA0;
            else if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            size = 4;
            if (c == 0xF0) lo = 0x90;
            else if (c == 0xF4) hi = 0x8F;
        } else return 0;
        if (pos + size > n || s[pos + 1] < lo || s[pos + 1] > hi)
            return 0;
        for (i = 2; i < size; i++)
            if (s[pos + i] < 0x80 || s[pos + i] > 0xBF)
                return 0;
        return size;
    }
    /* The first of the 16 bytes at s that is a quote, a backslash, a control byte or non-ASCII
       (a signed compare below 0x20 takes the last two at once), or 16. */
    #if defined(__SSE2__)  /* emmintrin.h: included above, with fleetproxy_string_end */
    static inline int fleetproxy_stop16(const unsigned char *s) {
        __m128i v = _mm_loadu_si128((const __m128i *)s);
        int mask = _mm_movemask_epi8(_mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(0x22)), _mm_cmpeq_epi8(v, _mm_set1_epi8(0x5C))),
            _mm_cmplt_epi8(v, _mm_set1_epi8(0x20))));
        return mask ? __builtin_ctz((unsigned)mask) : 16;
    }
    #else
    static inline int fleetproxy_stop16(const unsigned char *s) {
        int i;
        for (i = 0; i < 16; i++)
            if (s[i] == 0x22 || s[i] == 0x5C || s[i] < 0x20 || s[i] >= 0x80)
                return i;
        return 16;
    }
    #endif
    static inline int fleetproxy_utf8_size(unsigned int unit) {
        return unit < 0x80 ? 1 : unit < 0x800 ? 2 : unit < 0x10000 ? 3 : 4;
    }
    /* bodywalk._text_end: where the JSON string whose first byte is at pos ends (its closing
       quote), or -1 where msgspec might not read it as a str (no end, a control byte, a
       malformed escape, half a surrogate pair, bytes that are not well-formed UTF-8); and in
       *size (where not NULL) how many bytes of UTF-8 it holds, its escapes decoded. 16 bytes a
       step between escapes and non-ASCII characters. */
    static Py_ssize_t fleetproxy_text_end(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t *size) {
        Py_ssize_t start = pos, shrink = 0;
        int unit, step;
        for (;;) {
            while (pos + 16 <= n) {
                step = fleetproxy_stop16(s + pos);
                pos += step;
                if (step < 16)
                    break;
            }
            while (pos < n && s[pos] != 0x22 && s[pos] != 0x5C && s[pos] >= 0x20 && s[pos] < 0x80)
                pos++;
            if (pos >= n || s[pos] < 0x20)
                return -1;
            if (s[pos] == 0x22) {
                if (size != NULL)
                    *size = pos - start - shrink;
                return pos;
            }
            if (s[pos] >= 0x80) {
                step = fleetproxy_utf8(s, pos, n);
                if (!step)
                    return -1;
                pos += step;
                continue;
            }
            if (pos + 1 >= n)
                return -1;
            switch (s[pos + 1]) {
            case 0x22: case 0x5C: case 0x2F: case 0x62: case 0x66: case 0x6E: case 0x72: case 0x74:  /* "\\/bfnrt */
                pos += 2;
                shrink += 1;
                break;
            case 0x75:  /* u */
                unit = fleetproxy_hex4(s, pos + 2, n);
                pos += 6;
                if (unit < 0 || (unit >= 0xDC00 && unit <= 0xDFFF))
                    return -1;
                if (unit >= 0xD800 && unit <= 0xDBFF) {  /* the first half: the second must follow */
                    if (pos + 1 >= n || s[pos] != 0x5C || s[pos + 1] != 0x75)
                        return -1;
                    unit = fleetproxy_hex4(s, pos + 2, n);
                    if (unit < 0xDC00 || unit > 0xDFFF)
                        return -1;
                    pos += 6;
                    shrink += 12 - 4;
                } else {
                    shrink += 6 - fleetproxy_utf8_size((unsigned int)unit);
                }
                break;
            default:
                return -1;
            }
        }
    }
    static inline Py_ssize_t fleetproxy_text_close(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) {
        return fleetproxy_text_end(s, pos, n, NULL);
    }
    /* bodywalk._span: one item appended to the list spans, its four integers one by one (no
       list made to concatenate): 0, or -1 with an exception set. */
    static int fleetproxy_span(PyObject *spans, Py_ssize_t kind, Py_ssize_t at, Py_ssize_t end, Py_ssize_t size) {
        Py_ssize_t values[4] = {kind, at, end, size};
        int i;
        for (i = 0; i < 4; i++) {
            PyObject *v = PyLong_FromSsize_t(values[i]);
            if (v == NULL || PyList_Append(spans, v) < 0) {
                Py_XDECREF(v);
                return -1;
            }
            Py_DECREF(v);
        }
        return 0;
    }
    /* bodywalk._text: the offset after the text string at pos (its opening quote), its span
       appended to the list spans (kind, start, end, size; none for an empty string), or -1
       (not one walk is sure of), or -2 with an exception set. */
    static Py_ssize_t fleetproxy_walk_text(PyObject *spans, const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) {
        Py_ssize_t at = pos + 1, size = 0, end = fleetproxy_text_end(s, at, n, &size);
        if (end < 0)
            return -1;
        if (end == at)
            return end + 1;
        /* _PLAIN, or _ESCAPED */
        return fleetproxy_span(spans, size == end - at ? 1 : 2, at, end, size) < 0 ? -2 : end + 1;
    }
    /* The string s[at:end] (inside its quotes, one fleetproxy_text_end accepted) as UTF-8, its
       escapes decoded, written to dst up to room bytes (a character cut at room is cut there,
       as a slice of the encoded text would be): how many were written. */
    static Py_ssize_t fleetproxy_unescape(const unsigned char *s, Py_ssize_t at, Py_ssize_t end,
                                          unsigned char *dst, Py_ssize_t room) {
        Py_ssize_t out = 0, run;
        unsigned char one[4];
        int size;
        unsigned int unit;
        while (at < end && out < room) {
            /* The run up to the next backslash: 16 bytes a step, stored whole while they fit
               (the bytes past the backslash are written over next), then byte by byte. */
    #if defined(__SSE2__)
            while (at + 16 <= end && out + 16 <= room) {
                __m128i v = _mm_loadu_si128((const __m128i *)(s + at));
                int mask = _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(0x5C)));
                _mm_storeu_si128((__m128i *)(dst + out), v);
                if (mask) {
                    run = __builtin_ctz((unsigned)mask);
                    at += run;
                    out += run;
                    break;
                }
                at += 16;
                out += 16;
            }
    #endif
            while (at < end && out < room && s[at] != 0x5C)
                dst[out++] = s[at++];
            if (at >= end || out >= room)
                break;
            size = 1;
            switch (s[at + 1]) {
            case 0x62: one[0] = 0x08; break;
            case 0x66: one[0] = 0x0C; break;
            case 0x6E: one[0] = 0x0A; break;
            case 0x72: one[0] = 0x0D; break;
            case 0x74: one[0] = 0x09; break;
            case 0x75:
                unit = (unsigned int)fleetproxy_hex4(s, at + 2, end);
                if (unit >= 0xD800 && unit <= 0xDBFF) {
                    unit = 0x10000 + ((unit - 0xD800) << 10) + ((unsigned int)fleetproxy_hex4(s, at + 8, end) - 0xDC00);
                    at += 6;
                }
                at += 4;
                size = fleetproxy_utf8_size(unit);
                if (size == 1) {
                    one[0] = (unsigned char)unit;
                } else if (size == 2) {
                    one[0] = (unsigned char)(0xC0 | (unit >> 6));
                    one[1] = (unsigned char)(0x80 | (unit & 0x3F));
                } else if (size == 3) {
                    one[0] = (unsigned char)(0xE0 | (unit >> 12));
                    one[1] = (unsigned char)(0x80 | ((unit >> 6) & 0x3F));
                    one[2] = (unsigned char)(0x80 | (unit & 0x3F));
                } else {
                    one[0] = (unsigned char)(0xF0 | (unit >> 18));
                    one[1] = (unsigned char)(0x80 | ((unit >> 12) & 0x3F));
                    one[2] = (unsigned char)(0x80 | ((unit >> 6) & 0x3F));
                    one[3] = (unsigned char)(0x80 | (unit & 0x3F));
                }
                break;
            default: one[0] = s[at + 1]; break;  /* " \ / */
            }
            at += 2;
            if (size > room - out)
                size = (int)(room - out);
            memcpy(dst + out, one, (size_t)size);
            out += size;
        }
        return out;
    }
    static inline PyObject *fleetproxy_new_bytes(Py_ssize_t size) {
        return PyBytes_FromStringAndSize(NULL, size);
    }
    /* size bytes of src at dst[written:], no further than dst[total]: where the writing ends. */
    static inline Py_ssize_t fleetproxy_put_upto(unsigned char *dst, Py_ssize_t written, Py_ssize_t total,
                                                 const unsigned char *src, Py_ssize_t size) {
        if (size > total - written)
            size = total - written;
        memcpy(dst + written, src, (size_t)size);
        return written + size;
    }
    '''
    Py_ssize_t fleetproxy_text_close(const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) nogil
    Py_ssize_t fleetproxy_walk_text(list spans, const unsigned char *s, Py_ssize_t pos, Py_ssize_t n) except -2
    int fleetproxy_span(list spans, Py_ssize_t kind, Py_ssize_t at, Py_ssize_t end, Py_ssize_t size) except -1
    Py_ssize_t fleetproxy_unescape(const unsigned char *s, Py_ssize_t at, Py_ssize_t end, unsigned char *dst,
                                   Py_ssize_t room) nogil
    bytes fleetproxy_new_bytes(Py_ssize_t size)
    Py_ssize_t fleetproxy_put_upto(unsigned char *dst, Py_ssize_t written, Py_ssize_t total,
                                   const unsigned char *src, Py_ssize_t size) nogil

cpdef walk(bytes body)

@cython.locals(n=Py_ssize_t, buf="const unsigned char *", seen=int, pos=Py_ssize_t, at=Py_ssize_t,
               size=Py_ssize_t, end=Py_ssize_t, first=int, bit=int, model_at=Py_ssize_t, model_end=Py_ssize_t,
               user_at=Py_ssize_t, user_end=Py_ssize_t, prompt_at=Py_ssize_t, prompt_end=Py_ssize_t,
               spans=list, prompt_span=list, fields=Walked, model=str)
cdef _walk(bytes body, bint full)

@cython.locals(size=Py_ssize_t)
cdef str _model(const unsigned char *buf, Py_ssize_t at, Py_ssize_t end, Py_ssize_t n)

cdef Py_ssize_t _messages(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n, list spans) except -2

@cython.locals(mark=Py_ssize_t, seen=int, user=int, at=Py_ssize_t, end=Py_ssize_t, size=Py_ssize_t, first=int)
cdef Py_ssize_t _message(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n, list spans) except -2

@cython.locals(seen=bint, at=Py_ssize_t, end=Py_ssize_t, size=Py_ssize_t)
cdef Py_ssize_t _parts(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n, list spans) except -2

@cython.locals(at=Py_ssize_t, end=Py_ssize_t, raw=bytes)
cdef Py_ssize_t _text(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n, list spans) except -2

cdef inline int _span(list spans, Py_ssize_t kind, Py_ssize_t at, Py_ssize_t end, Py_ssize_t size) except -1

@cython.locals(c=int, unit=Py_ssize_t, size=Py_ssize_t)
cdef Py_ssize_t _text_end(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) noexcept

@cython.locals(digits=bytes)
cdef Py_ssize_t _hex4(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) except? -2

@cython.locals(size=Py_ssize_t)
cdef Py_ssize_t _utf8(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t n) except? -1

@cython.locals(m=Py_ssize_t, size=Py_ssize_t, opening=Py_ssize_t, later=bint, i=Py_ssize_t, kind=Py_ssize_t,
               total=Py_ssize_t, more=Py_ssize_t)
cpdef walked_prompt(bytes body, list spans, Py_ssize_t limit, Py_ssize_t least)

@cython.locals(text=bytes, out="unsigned char *", written=Py_ssize_t, i=Py_ssize_t, kind=Py_ssize_t,
               at=Py_ssize_t, end=Py_ssize_t)
cdef bytes _write(const unsigned char *buf, list spans, Py_ssize_t total)
