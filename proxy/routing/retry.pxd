# Types for Cython's compile of retry.py (the native build; see _speedups/__init__.py): the
# router spends from the budget on every request, a C call into struct members. Their __slots__
# say the same for the pure build.


cdef class RetryBudget:
    cdef public double ratio, min_rate, burst, tokens, floor, last  # spent from on every request: C doubles
    cdef public Py_ssize_t requests, retries, refused

    cpdef on_request(self)
    cpdef try_retry(self, now)


cdef class RetryPolicy:
    cdef public object attempts, statuses, resend_paths
    cdef public RetryBudget budget
