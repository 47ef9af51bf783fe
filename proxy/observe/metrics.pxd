# Types for Cython's compile of metrics.py (the native build, see _speedups/__init__.py): the
# recorder adds into its row through a typed view of the shared table, C integer arithmetic
# instead of Python ints. The .py stays the whole specification; the pure build runs it as is.
cimport cython

cdef Py_ssize_t _E2E_AT, _E2E_SUM, _RESP_AT, _RESP_SUM, _REQ_AT, _REQ_SUM, _TTFT_AT, _TTFT_SUM, _NCLASS
cdef Py_ssize_t _S_REQ, _S_BYTES, _S_TOK, _S_ERR, _S_FLIGHT


cdef class Timing:
    cdef public double t0, t_sent, t_head, t_resp, t_body, t_wait
    cdef public object tail, prev, tenant, span, tokens, usage, model
    cdef public Py_ssize_t flight
    cdef public long long flight_tokens


cdef class Recorder:
    cdef public object table
    cdef long long[::1] cells
    cdef public Py_ssize_t row, base, used, overflow
    cdef public dict index

    @cython.locals(at=Py_ssize_t, hist_at=Py_ssize_t)
    cpdef observe(self, Py_ssize_t base, Py_ssize_t hist, double seconds)

    @cython.locals(base=Py_ssize_t, at=Py_ssize_t, seconds=double, t0=double, t_head=double, t_body=double,
                   cls=Py_ssize_t, completion=cython.longlong, obs=Timing)
    cpdef record(self, ex, int status, Py_ssize_t outcome, double now, tokens, model, backend)

    @cython.locals(obs=Timing, tokens=cython.longlong, base=Py_ssize_t)
    cpdef admitted(self, ex, model)
