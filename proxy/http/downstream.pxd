# Types for Cython's compile of downstream.py: its state is declared on pipeline.Pipeline.
from proxy.http.pipeline cimport Pipeline


cdef class Downstream(Pipeline):
    cpdef exchange_done(self, exchange)
    cpdef _done(self, exchange, close)
    cpdef _advance(self)
    cpdef answer(self, exchange, response, close=*)
