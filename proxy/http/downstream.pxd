# Types for Cython's compile of downstream.py: its state is declared on pipeline.Pipeline.
from proxy.http.pipeline cimport Pipeline


cdef class Downstream(Pipeline):
    pass
