# Types for Cython's compile of downstream.py: its state is declared on pipeline.Pipeline.
cimport cython

from proxy.http.exchange cimport Exchange, new_exchange
from proxy.http.pipeline cimport Pipeline
from proxy.http.request cimport RequestReader
from proxy.observe.metrics cimport hold, release

cdef int _IDLE, _ERROR, _PIPELINE


cdef class Downstream(Pipeline):
    @cython.locals(ex=Exchange)
    cpdef exchange_done(self, exchange)
    @cython.locals(reader=RequestReader)
    cpdef _done(self, exchange, close)
    @cython.locals(exchange=Exchange)
    cpdef _advance(self)
    @cython.locals(exchange=Exchange)
    cpdef on_request(self, method, target, headers, body, http10, keep_alive, bytes request_id)
    cpdef answer(self, exchange, response, close=*)
    cpdef write(self, data)
