# Types for Cython's compile of router.py (the native build; see _speedups/__init__.py): a
# request's routing state as struct members. Its __slots__ say the same for the pure build.


cdef class Selection:
    cdef public object route, headers, body, model_only, decoded, endpoint, tried, attempts, counted
    cdef public object blocks_of, prompt_blocks
