# Types for Cython's compile of streamusage.py (the native build; see _speedups/__init__.py): the
# byte walks (a JSON string, the chunks of vLLM's end of a stream) in C.
cimport cython


@cython.locals(i=Py_ssize_t, n=Py_ssize_t, c=int)
cpdef Py_ssize_t _string_end(bytes data, Py_ssize_t at)

@cython.locals(n=Py_ssize_t, finish=Py_ssize_t, usage=Py_ssize_t, done=Py_ssize_t, pos=Py_ssize_t, size=Py_ssize_t,
               i=Py_ssize_t, c=int, stop=Py_ssize_t, at=Py_ssize_t, found=Py_ssize_t, buf="const unsigned char *",
               event=bytes, fingerprint=bytes, payload=bytes)
cpdef _strip_vllm(bytes tail)

cdef Py_ssize_t _payload(const unsigned char *buf, Py_ssize_t chunk) noexcept

cpdef bint wants_usage(method, target, fields)  # per request, from the observer (a C call there)
