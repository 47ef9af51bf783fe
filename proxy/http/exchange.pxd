# Types for Cython's compile of exchange.py: its state is declared on relay.Relay (relay.pxd).
from proxy.http.relay cimport Relay


cdef class Exchange(Relay):
    pass
