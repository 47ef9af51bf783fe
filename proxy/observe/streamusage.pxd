# Types for Cython's compile of streamusage.py (the native build; see _speedups/__init__.py): the
# byte walk of a JSON string in C.
cimport cython


@cython.locals(i=Py_ssize_t, n=Py_ssize_t, c=int)
cpdef Py_ssize_t _string_end(bytes data, Py_ssize_t at)
