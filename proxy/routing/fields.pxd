# Types for Cython's compile of fields.py (the native build; see _speedups/__init__.py): the
# prompt's counters as C integers. The body walk and the Prompt are bodywalk's.
cimport cython

from proxy.routing.bodywalk cimport Prompt, Walked, scan, walk, walked_prompt


@cython.locals(size=Py_ssize_t, opening=Py_ssize_t, later=bint, parts=list, joined=str, walked=Walked)
cpdef prompt_of(fields, Py_ssize_t limit, Py_ssize_t least=*)

cpdef decode(body, model_only=*)

cpdef prompt_prefix(fields, size)

cdef bint _COMPILED
