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
