# The compiled twin of _speedups/prefix.py, which is the specification: read its docstring for
# how the hashes and the table work and why racing processes are safe. This file must give the
# same results for the same arguments, errors included (tests/test_prefix.py holds it to that).
#
# It is a separate .pyx rather than prefix.py compiled with an augmenting .pxd (as framing is)
# because the fast version is different code, not the same code typed: the pure module hands
# each block to zlib and pays a Python call per block and per probe, while here CRC-32 and
# Adler-32 are computed in C (bit for bit zlib's, without linking zlib: the image's build stage
# has no zlib headers): by carry-less multiplication and AVX2 where the CPU has them (about
# 10 GB/s, three times zlib's own loops), by tables elsewhere. The table is read through a raw
# int64 pointer, with no Python object per probe.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.sequence cimport PySequence_Fast_GET_ITEM
from cpython cimport array
from libc.string cimport memcpy
from libc.stdint cimport uint32_t, uint64_t
from operator import index
import array as _array

cdef extern from *:
    """
    #include <stdint.h>
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #define FP_SIMD_BUILT 1
    #include <immintrin.h>
    #endif

    /* The checksums a vector at a time, where the CPU has the instructions (checked once at
       import: fp_simd_detect). A prompt of 32 KiB is 128 blocks; the table loops of _checksums
       take some 20 us for it, these about 2. Each gives zlib's value bit for bit, which
       tests/test_prefix.py holds both paths to. */
    static int fp_simd = 0;

    #ifdef FP_SIMD_BUILT
    /* CRC-32 (reflected 0xEDB88320) of n bytes (n >= 64, a multiple of 16) from the running,
       inverted state crc, by carry-less multiplication: four 128-bit lanes folded forward 64
       bytes a step, folded into one, then reduced to 32 bits (Barrett). The method and its
       constants (x^k mod P, bit-reflected) are Intel's: Gopal et al., "Fast CRC Computation for
       Generic Polynomials Using PCLMULQDQ Instruction", 2009. */
    __attribute__((target("pclmul,sse4.1")))
    static uint32_t fp_crc32_fold(uint32_t crc, const unsigned char *p, Py_ssize_t n) {
        const __m128i by64 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);
        const __m128i by16 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
        const __m128i by4 = _mm_set_epi64x(0, 0x0163cd6124LL);
        const __m128i poly = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);
        const __m128i low32 = _mm_set_epi32(0, -1, 0, -1);
        __m128i l0 = _mm_loadu_si128((const __m128i *)p);
        __m128i l1 = _mm_loadu_si128((const __m128i *)(p + 16));
        __m128i l2 = _mm_loadu_si128((const __m128i *)(p + 32));
        __m128i l3 = _mm_loadu_si128((const __m128i *)(p + 48));
        __m128i x, t;
        l0 = _mm_xor_si128(l0, _mm_cvtsi32_si128((int)crc));
        p += 64;
        n -= 64;
        #define FP_FOLD(lane, k, data) \\
            _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128((lane), (k), 0x00), \\
                                        _mm_clmulepi64_si128((lane), (k), 0x11)), (data))
        while (n >= 64) {
            l0 = FP_FOLD(l0, by64, _mm_loadu_si128((const __m128i *)p));
            l1 = FP_FOLD(l1, by64, _mm_loadu_si128((const __m128i *)(p + 16)));
            l2 = FP_FOLD(l2, by64, _mm_loadu_si128((const __m128i *)(p + 32)));
            l3 = FP_FOLD(l3, by64, _mm_loadu_si128((const __m128i *)(p + 48)));
            p += 64;
            n -= 64;
        }
        x = FP_FOLD(l0, by16, l1);
        x = FP_FOLD(x, by16, l2);
        x = FP_FOLD(x, by16, l3);
        while (n >= 16) {
            x = FP_FOLD(x, by16, _mm_loadu_si128((const __m128i *)p));
            p += 16;
            n -= 16;
        }
        #undef FP_FOLD
        /* 128 bits to 64, then to 32 (the remainder's 32 bits in the second dword). */
        t = _mm_clmulepi64_si128(x, by16, 0x10);
        x = _mm_xor_si128(_mm_srli_si128(x, 8), t);
        t = _mm_srli_si128(x, 4);
        x = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x, low32), by4, 0x00), t);
        t = _mm_clmulepi64_si128(_mm_and_si128(x, low32), poly, 0x10);
        t = _mm_clmulepi64_si128(_mm_and_si128(t, low32), poly, 0x00);
        return (uint32_t)_mm_extract_epi32(_mm_xor_si128(x, t), 1);
    }

    /* Adler-32's sums over n bytes, 32 a step: a gains the bytes' sum; b gains, for each
       byte, a as it stood after that byte, which over a run of m bytes starting from a is
       m * a + sum((m - i) * p[i]). Per 32-byte block: its byte sum (psadbw), its bytes weighted
       32..1 (pmaddubsw, pmaddwd), and the sums of the blocks before it, which each later block
       adds 32 times over. Reduced every 5552 bytes, as zlib does; the lanes are 64-bit where
       they could pass 2^32 before that. */
    __attribute__((target("avx2")))
    static void fp_adler32_avx2(uint32_t *a_io, uint32_t *b_io, const unsigned char *p, Py_ssize_t n) {
        const __m256i weights = _mm256_setr_epi8(32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
                                                 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1);
        const __m256i ones = _mm256_set1_epi16(1), zero = _mm256_setzero_si256();
        uint64_t a = *a_io, b = *b_io;
        while (n > 0) {
            Py_ssize_t blocks = (n < 5552 ? n : 5552) / 32, run = blocks * 32, i;
            __m256i sums = zero, before = zero, weighted = zero;
            uint64_t lanes[4];
            uint32_t w[8];
            if (blocks) {
                b += (uint64_t)run * a;
                for (i = 0; i < blocks; i++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)p);
                    before = _mm256_add_epi64(before, sums);
                    sums = _mm256_add_epi64(sums, _mm256_sad_epu8(v, zero));
                    weighted = _mm256_add_epi32(weighted, _mm256_madd_epi16(_mm256_maddubs_epi16(v, weights), ones));
                    p += 32;
                }
                _mm256_storeu_si256((__m256i *)lanes, sums);
                a += lanes[0] + lanes[1] + lanes[2] + lanes[3];
                _mm256_storeu_si256((__m256i *)lanes, before);
                b += 32 * (lanes[0] + lanes[1] + lanes[2] + lanes[3]);
                _mm256_storeu_si256((__m256i *)w, weighted);
                for (i = 0; i < 8; i++)
                    b += w[i];
                n -= run;
            } else {  /* fewer than 32 bytes left */
                for (i = 0; i < n; i++) {
                    a += p[i];
                    b += a;
                }
                n = 0;
            }
            a %= 65521;
            b %= 65521;
        }
        *a_io = (uint32_t)a;
        *b_io = (uint32_t)b;
    }

    static void fp_simd_detect(void) {
        __builtin_cpu_init();
        fp_simd = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1")
                  && __builtin_cpu_supports("avx2");
    }
    #else
    static uint32_t fp_crc32_fold(uint32_t crc, const unsigned char *p, Py_ssize_t n) { return crc; }
    static void fp_adler32_avx2(uint32_t *a_io, uint32_t *b_io, const unsigned char *p, Py_ssize_t n) {}
    static void fp_simd_detect(void) {}
    #endif

    /* Volatile, so the C compiler neither reorders the stores to one entry (time before hash,
       see prefix.py "Sharing") nor re-reads a cell it already read: other processes may be
       writing it. An aligned 8-byte access is one instruction on the 64-bit targets. */
    static inline long long fp_load(const long long *p) { return *(const volatile long long *)p; }
    static inline void fp_store(long long *p, long long v) { *(volatile long long *)p = v; }
    """
    long long fp_load(const long long *p) noexcept nogil
    void fp_store(long long *p, long long v) noexcept nogil
    int fp_simd
    uint32_t fp_crc32_fold(uint32_t crc, const unsigned char *p, Py_ssize_t n) noexcept nogil
    void fp_adler32_avx2(uint32_t *a_io, uint32_t *b_io, const unsigned char *p, Py_ssize_t n) noexcept nogil
    void fp_simd_detect() noexcept nogil

MASK = (1 << 63) - 1
MIN_BLOCK = 16  # bytes

cdef enum:
    STACK_HASHES = 64  # a request's hashes fit on the C stack up to this many (limit is ~32)

cdef uint64_t C_MASK = 0x7FFFFFFFFFFFFFFF
cdef uint32_t ADLER_BASE = 65521
# The most bytes Adler-32 can sum in 32 bits before reducing modulo ADLER_BASE (zlib's NMAX).
cdef Py_ssize_t ADLER_NMAX = 5552


# -- the checksums ---------------------------------------------------------------------------

# CRC-32 (ISO-HDLC, reflected polynomial 0xEDB88320, as zlib), sixteen bytes a step:
# CRC[k][i] is the CRC of byte i followed by k zero bytes ("slicing by 16", 16 KiB of tables).
cdef uint32_t CRC[16][256]


cdef void _make_crc_tables() noexcept:
    cdef uint32_t c
    cdef uint32_t poly = 0xEDB88320
    cdef int i, k
    for i in range(256):
        c = i
        for k in range(8):
            if c & 1:
                c = (c >> 1) ^ poly
            else:
                c = c >> 1
        CRC[0][i] = c
    for i in range(256):
        c = CRC[0][i]
        for k in range(1, 16):
            c = CRC[0][c & 0xFF] ^ (c >> 8)
            CRC[k][i] = c


_make_crc_tables()


cdef inline uint32_t _le32(const unsigned char *p) noexcept nogil:
    # Assembled from bytes, so the result does not depend on the machine's byte order (compilers
    # make it one load where the order is little-endian).
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


@cython.cdivision(True)
cdef void _checksums(uint32_t *crc_io, uint32_t *adler_io, const unsigned char *p,
                     Py_ssize_t n) noexcept nogil:
    """crc_io, adler_io = zlib.crc32(p[:n], crc_io), zlib.adler32(p[:n], adler_io)."""
    if fp_simd and n >= 64:
        _checksums_simd(crc_io, adler_io, p, n)
        return
    # One pass for both: the CRC's table loads and the Adler sums use different parts of the
    # CPU, so together they cost little more than the CRC alone (measured: 3.2 µs per 8 KiB
    # against 2.5 µs + 1.8 µs apart, where zlib itself takes 1.5 µs + 2.3 µs).
    cdef uint32_t crc = ~crc_io[0]
    cdef uint32_t a = adler_io[0] & 0xFFFF
    cdef uint32_t b = adler_io[0] >> 16
    cdef uint32_t w0, w1, w2, w3
    cdef Py_ssize_t run
    while n > 0:
        run = n if n < ADLER_NMAX else ADLER_NMAX
        n -= run
        while run >= 16:
            w0 = crc ^ _le32(p)
            w1 = _le32(p + 4)
            w2 = _le32(p + 8)
            w3 = _le32(p + 12)
            crc = (CRC[15][w0 & 0xFF] ^ CRC[14][(w0 >> 8) & 0xFF] ^ CRC[13][(w0 >> 16) & 0xFF]
                   ^ CRC[12][w0 >> 24] ^ CRC[11][w1 & 0xFF] ^ CRC[10][(w1 >> 8) & 0xFF]
                   ^ CRC[9][(w1 >> 16) & 0xFF] ^ CRC[8][w1 >> 24] ^ CRC[7][w2 & 0xFF]
                   ^ CRC[6][(w2 >> 8) & 0xFF] ^ CRC[5][(w2 >> 16) & 0xFF] ^ CRC[4][w2 >> 24]
                   ^ CRC[3][w3 & 0xFF] ^ CRC[2][(w3 >> 8) & 0xFF] ^ CRC[1][(w3 >> 16) & 0xFF]
                   ^ CRC[0][w3 >> 24])
            # Sixteen steps of Adler's "a += byte; b += a" at once: the same sums at the end of
            # the sixteen (so the same overflow bound), without each byte waiting on the last.
            b += (16 * a + 16 * p[0] + 15 * p[1] + 14 * p[2] + 13 * p[3] + 12 * p[4] + 11 * p[5]
                  + 10 * p[6] + 9 * p[7] + 8 * p[8] + 7 * p[9] + 6 * p[10] + 5 * p[11] + 4 * p[12]
                  + 3 * p[13] + 2 * p[14] + p[15])
            a += (p[0] + p[1] + p[2] + p[3] + p[4] + p[5] + p[6] + p[7] + p[8] + p[9] + p[10]
                  + p[11] + p[12] + p[13] + p[14] + p[15])
            p += 16
            run -= 16
        while run > 0:
            crc = CRC[0][(crc ^ p[0]) & 0xFF] ^ (crc >> 8)
            a += p[0]
            b += a
            p += 1
            run -= 1
        a %= ADLER_BASE
        b %= ADLER_BASE
    crc_io[0] = ~crc
    adler_io[0] = (b << 16) | a


cdef void _checksums_simd(uint32_t *crc_io, uint32_t *adler_io, const unsigned char *p,
                          Py_ssize_t n) noexcept nogil:
    """_checksums by the vector routines: the CRC folds whole 16-byte words, the rest by table."""
    cdef Py_ssize_t whole = n & ~(<Py_ssize_t>15)
    cdef uint32_t a = adler_io[0] & 0xFFFF
    cdef uint32_t b = adler_io[0] >> 16
    cdef uint32_t crc = fp_crc32_fold(~crc_io[0], p, whole)
    cdef Py_ssize_t i
    for i in range(whole, n):
        crc = CRC[0][(crc ^ p[i]) & 0xFF] ^ (crc >> 8)
    crc_io[0] = ~crc
    fp_adler32_avx2(&a, &b, p, n)
    adler_io[0] = (b << 16) | a


def simd(enabled=None):
    """Whether the checksums run on the CPU's vector instructions (PCLMULQDQ, AVX2), detected at
    import; ``enabled`` False turns them off (True back on, where the CPU has them), so the tests
    hold both paths to zlib on one machine. Returns the setting in force before the call."""
    global fp_simd
    before = bool(fp_simd)
    if enabled is not None:
        fp_simd_detect()
        fp_simd = fp_simd and bool(enabled)
    return before


fp_simd_detect()


cdef array.array _INT64 = _array.array("q")  # the template of the hashes' arrays


def block_hashes(text, block, limit):
    """The chained hashes of the first ``limit`` full blocks of ``block`` bytes of ``text``."""
    return _hashes(text, block, limit, -1)[0].tolist()


def prompt_hashes(text, block, limit, opening):
    """(``block_hashes(text, block, limit)`` as an ``array('q')``, the hash of ``text[:opening]``
    and a NUL byte as one block, or 0 where ``opening`` (at most the text's length) is under
    MIN_BLOCK): one pass, where a slice and a second hash would read the opening twice, and one
    array, which the table reads as it is, where a list holds an int object per block."""
    return _hashes(text, block, limit, opening)


cdef tuple _hashes(text, block, limit, Py_ssize_t opening):
    cdef const unsigned char *buf
    cdef const unsigned char[::1] view
    cdef Py_ssize_t size, step, count, i, mark
    cdef uint32_t crc = 0
    cdef uint32_t adler = 1
    cdef uint32_t key_crc = 0
    cdef uint32_t key_adler = 1
    cdef uint64_t h
    cdef unsigned char nul = 0
    if block < MIN_BLOCK:
        raise ValueError(f"block must be at least {MIN_BLOCK} bytes, not {block}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    if type(text) is bytes:
        buf = <const unsigned char *>PyBytes_AS_STRING(text)
        size = PyBytes_GET_SIZE(text)
    else:
        view = memoryview(text).cast("B")
        size = view.shape[0]
        buf = &view[0] if size else NULL
    if opening > size:
        opening = size
    if opening < MIN_BLOCK:
        opening = -1  # no key (block_hashes asks for none)
    step = block
    count = size // step if block <= size else 0
    if limit < count:
        count = limit
    mark = opening // step if opening >= 0 else -1  # the key's pass starts after this many blocks
    if mark > count:
        mark = count
    cdef array.array out = array.clone(_INT64, count, False)
    for i in range(count):
        if i == mark:
            key_crc, key_adler = crc, adler
        _checksums(&crc, &adler, buf + i * step, step)
        h = ((<uint64_t>adler << 31) ^ crc) & C_MASK
        out.data.as_longlongs[i] = <long long>(h if h else 1)
    if opening < 0:
        return out, 0
    if mark == count:
        key_crc, key_adler = crc, adler
    _checksums(&key_crc, &key_adler, buf + mark * step, opening - mark * step)
    _checksums(&key_crc, &key_adler, &nul, 1)
    h = ((<uint64_t>key_adler << 31) ^ key_crc) & C_MASK
    return out, <long long>(h if h else 1)


def cells_needed(endpoints, slots):
    """How many int64 cells a table of ``endpoints`` x ``slots`` entries needs."""
    return endpoints * slots * 2


# -- the table -------------------------------------------------------------------------------


cdef long long _time(t) except? -1:
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(t, &overflow)
    if overflow:
        raise OverflowError(f"a time must fit in int64, not {t}")
    return v


cdef object _sized(hashes):
    """``hashes`` as a list, a tuple or an int64 array, which ``_load`` reads (a tuple: the
    conversation key the policy asks about and records with every request, not copied)."""
    if type(hashes) is list or type(hashes) is tuple or (
            type(hashes) is array.array and (<array.array>hashes).ob_descr.typecode == b"q"):
        return hashes
    return list(hashes)


cdef Py_ssize_t _load(hashes, long long *out) except -1:
    """Convert ``hashes`` (``_sized``) into ``out``, checking them all as prefix.py's _checked
    does: an int64 array copied as it is, a list or a tuple int by int."""
    cdef Py_ssize_t i, n = len(hashes)
    cdef int overflow
    cdef bint bad = False
    cdef long long v
    if type(hashes) is array.array:
        memcpy(out, (<array.array>hashes).data.as_longlongs, n * sizeof(long long))
        for i in range(n):
            if out[i] < 1:
                raise ValueError(f"a prefix hash must be in [1, 2**63), not {min(hashes)}")
        return n
    for i in range(n):
        overflow = 0
        v = PyLong_AsLongLongAndOverflow(<object>PySequence_Fast_GET_ITEM(hashes, i), &overflow)
        if overflow or v < 1:
            bad = True  # reported once all are converted: a non-integer later is a TypeError
        out[i] = v
    if bad:
        vals = [index(x) for x in hashes]
        worst = min(vals) if min(vals) < 1 else max(vals)
        raise ValueError(f"a prefix hash must be in [1, 2**63), not {worst}")
    return n


cdef class PrefixTable:
    """Per endpoint, a set-associative table of recently sent prefix hashes and when.

    The table holds a view of ``cells`` for as long as it lives: drop every reference to it
    before ``SharedMemory.close()``, which refuses (BufferError) while a view remains.
    """

    def __init__(self, cells, endpoints, slots, ways=4):
        endpoints, slots, ways = index(endpoints), index(slots), index(ways)
        if endpoints < 1:
            raise ValueError(f"endpoints must be >= 1, not {endpoints}")
        if ways < 1:
            raise ValueError(f"ways must be >= 1, not {ways}")
        if slots < ways or slots % ways:
            raise ValueError(f"slots ({slots}) must be a positive multiple of ways ({ways})")
        view = memoryview(cells)
        if view.readonly:
            raise ValueError("cells must be a writable buffer")
        if view.format != "q":
            view = view.cast("B").cast("q")
        needed = cells_needed(endpoints, slots)
        if len(view) < needed:
            raise ValueError(f"cells holds {len(view)} int64, the table needs {needed}")
        self._cells = view
        self._p = &self._cells[0]
        self.endpoints = endpoints
        self.slots = slots
        self.ways = ways
        self.sets = slots // ways
        self._width = ways * 2

    @staticmethod
    def cells_needed(endpoints, slots):
        """How many int64 cells a table of ``endpoints`` x ``slots`` entries needs."""
        return endpoints * slots * 2

    @classmethod
    def local(cls, endpoints, slots, ways=4):
        """A table in this process's own memory (zeroed: every entry empty)."""
        return cls(bytearray(8 * cells_needed(endpoints, slots)), endpoints, slots, ways)

    cdef Py_ssize_t _base(self, endpoint) except -1:
        endpoint = index(endpoint)
        if not 0 <= endpoint < self.endpoints:
            raise IndexError(f"endpoint {endpoint} is not in [0, {self.endpoints})")
        return <Py_ssize_t>endpoint * self.slots * 2

    cpdef record(self, endpoint, hashes, now):
        """Note that ``hashes`` were sent to ``endpoint`` at time ``now``."""
        cdef Py_ssize_t base = self._base(endpoint)
        cdef long long stack[STACK_HASHES]
        cdef long long *hs = stack
        cdef Py_ssize_t n
        cdef long long t
        hashes = _sized(hashes)
        if len(hashes) > STACK_HASHES:
            hs = <long long *>PyMem_Malloc(len(hashes) * sizeof(long long))
            if hs is NULL:
                raise MemoryError()
        try:
            n = _load(hashes, hs)
            t = _time(now)
            self._record(base, hs, n, t)
        finally:
            if hs is not stack:
                PyMem_Free(hs)

    @cython.cdivision(True)
    cdef void _record(self, Py_ssize_t base, const long long *hs, Py_ssize_t n,
                      long long now) noexcept nogil:
        cdef long long *cells = self._p + base
        cdef long long *entry
        cdef long long *victim
        cdef long long h, held, used, victim_time
        cdef bint victim_empty
        cdef Py_ssize_t k, j
        for k in range(n):
            h = hs[k]
            entry = cells + (h % self.sets) * self._width
            victim = NULL
            victim_time = 0
            victim_empty = False
            for j in range(0, self._width, 2):
                held = fp_load(entry + j)
                if held == h:
                    if fp_load(entry + j + 1) < now:
                        fp_store(entry + j + 1, now)
                    break
                if victim_empty:
                    continue
                if held == 0:
                    victim = entry + j
                    victim_empty = True
                else:
                    used = fp_load(entry + j + 1)
                    if victim is NULL or used < victim_time:
                        victim = entry + j
                        victim_time = used
            else:
                fp_store(victim + 1, now)
                fp_store(victim, h)

    def match(self, endpoint, hashes, oldest):
        """How many leading ``hashes`` ``endpoint`` holds, each used at ``oldest`` or later."""
        return self._matches(self._base(endpoint), 1, hashes, oldest)[0]

    cpdef list matches(self, hashes, oldest):
        """``match`` for every endpoint, as a list indexed by endpoint."""
        return self._matches(0, self.endpoints, hashes, oldest)

    cdef list _matches(self, Py_ssize_t base, Py_ssize_t endpoints, hashes, oldest):
        cdef long long stack[2 * STACK_HASHES]
        cdef long long *hs = stack
        cdef Py_ssize_t n, e, size
        cdef Py_ssize_t known = 0
        cdef long long t
        hashes = _sized(hashes)
        size = len(hashes)
        if size > STACK_HASHES:
            hs = <long long *>PyMem_Malloc(2 * size * sizeof(long long))
            if hs is NULL:
                raise MemoryError()
        try:
            n = _load(hashes, hs)
            t = _time(oldest)
            out = []
            for e in range(endpoints):
                out.append(self._match(base + e * self.slots * 2, hs, hs + n, &known, n, t))
            return out
        finally:
            if hs is not stack:
                PyMem_Free(hs)

    @cython.cdivision(True)
    cdef Py_ssize_t _match(self, Py_ssize_t base, const long long *hs, long long *offsets,
                           Py_ssize_t *known, Py_ssize_t n, long long oldest) noexcept nogil:
        # offsets[:known[0]] are the hashes' set offsets, computed once per call by whichever
        # endpoint first got that far, rather than a division per hash per endpoint.
        cdef long long *cells = self._p + base
        cdef long long *entry
        cdef long long h
        cdef Py_ssize_t k, j
        for k in range(n):
            h = hs[k]
            if k == known[0]:
                offsets[k] = (h % self.sets) * self._width
                known[0] = k + 1
            entry = cells + offsets[k]
            for j in range(0, self._width, 2):
                if fp_load(entry + j) == h and fp_load(entry + j + 1) >= oldest:
                    break
            else:
                return k
        return n

    def forget(self, endpoint):
        """Empty ``endpoint``'s entries (it was removed, or its cache was reset)."""
        cdef Py_ssize_t base = self._base(endpoint)
        cdef long long *cells = self._p + base
        cdef Py_ssize_t i
        for i in range(0, self.slots * 2, 2):
            fp_store(cells + i, 0)  # the hash first: the entry reads as empty before its time goes
            fp_store(cells + i + 1, 0)
