# Types for Cython's compile of plainrequest.py (the native build; see _speedups/__init__.py):
# the walk over a request's bytes through a pointer, positions and counts as C integers.
cimport cython

cdef bytes CLASSES, _HOST, _LENGTH, _REQUEST_ID, _ASKS_LOAD, _CONNECTION, _KEEP_ALIVE, _VERSION
cdef frozenset _NOT_PLAIN
cdef tuple _BY_SIZE
cdef bint _COMPILED

cdef extern from *:
    """
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
    """
    bytes fleetproxy_lower(const unsigned char *s, Py_ssize_t n)
    bint fleetproxy_same_lower(const unsigned char *s, const char *lower, Py_ssize_t n)


cpdef bint sane_request_id(bytes value)


cdef class Bounds:
    cdef public Py_ssize_t request_line, head, fields, body


@cython.locals(size=Py_ssize_t, known=bytes)
cdef bytes _lower(const unsigned char *buf, Py_ssize_t start, Py_ssize_t end)


@cython.locals(n=Py_ssize_t, pos=Py_ssize_t, at=Py_ssize_t, head_bytes=Py_ssize_t, max_head=Py_ssize_t,
               max_fields=Py_ssize_t, hosts=Py_ssize_t, length="long long", asks_load=bint, headers=list,
               buf="const unsigned char *", classes="const unsigned char *", name=bytes, value=bytes)
cpdef read_plain(bytes data, Py_ssize_t start, Bounds bounds)
