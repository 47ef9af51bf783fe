# Types for Cython's compile of relay.py (the native build; see _speedups/__init__.py). An
# exchange's whole state is declared here, on the first class of the chain Relay ->
# exchange.Exchange, so that the pump's reads and writes of it are struct accesses rather than
# attribute lookups; admission.Admission stays a Python mixin. The .py files are the whole
# specification: their __slots__ say the same for the pure build.
cimport cython

from _speedups.framing_c cimport ResponseFramer as NativeFramer, new_framer
from proxy.http.heads cimport client_head, upstream_head
from proxy.http.pipeline cimport Pipeline
from proxy.http.plainrequest cimport Fields
from proxy.http.upstream cimport UpstreamConnection
from proxy.observe.metrics cimport Timing, clock, now as arrived
from proxy.observe.streamusage cimport (finish_at, fleetproxy_ends_with, fleetproxy_insert, known, quiet, quiet_end,
                                        strip, unit_start, usage_body)
from proxy.routing.endpoint cimport Endpoint
from proxy.routing.router cimport Selection

# The framer's flags and kinds (from _speedups) as C ints: tested on every read.
cdef int CHUNKED, DONE, ERROR, EVENT, HEAD, LENGTH, NONE, UNTIL_CLOSE
cdef int USAGE_TAKEN
cdef Py_ssize_t MAX_HOLD, SMALL_BODY
cdef bint _COMPILED


cdef class Relay:
    # What the pump reads on every read of a response, first and together: Cython lays the
    # fields out in the order declared, so these share the object's first cache lines instead
    # of five. Between two token events of a slow stream other work evicts them, and each line
    # touched is then a miss: at scenario c (50 req/s) perf puts most of the pump's samples on
    # the first load from each object, not on its instructions. The same is done for the
    # framer, the client connection, the upstream one and the Timing (their .pxd files). What
    # it saved is within a run's noise (bench/results/2026-12-06-stop39.md): it costs nothing.
    cdef public NativeFramer framer  # what _speedups.ResponseFramer is in the native build
    cdef public Pipeline down  # a downstream.Downstream
    cdef public Timing obs
    cdef public object held, tenant, dechunker
    cdef public bytes token_end
    cdef public int strip  # read on every read of a stream while observing
    cdef public bint rechunk  # tested on every read: a C int, not the truth protocol's call
    # relay.py's
    cdef public UpstreamConnection conn
    cdef public object head_sent, reused, tail
    cdef public Py_ssize_t ticks, rx_seen, watch_at  # the watchdog's, set per request
    # exchange.py's
    cdef public object method, target, headers, http10, keep_alive, request_id, error
    cdef public bytes body  # its size and truth read as C
    cdef public Selection selection
    cdef public object close_after, task, finished, retried, asked_load, size, queued

    # Methods the pump calls on its own object: C calls through the type's table, not lookups
    # by name (the Python-visible method stays). The last five are the exchange's (see relay.py).
    @cython.locals(endpoint=Endpoint, small=bint, fields=Fields, body=bytes)
    cpdef send(self, UpstreamConnection conn)
    @cython.locals(framer=NativeFramer, flags=int, n=Py_ssize_t, start=Py_ssize_t, end=Py_ssize_t, strip=int, out=bytes,
                   at=Py_ssize_t, buf="const char *", token_end=bytes, head=bint, joined=bytes, body_at=Py_ssize_t)
    cpdef upstream_data(self, bytes data)
    cpdef _start_relay(self)
    cpdef _cancel_timer(self)
    cpdef _give_back(self, reusable)
    cpdef on_status(self, status, reusable)
    cpdef complete(self, reusable)
    cpdef break_stream(self, message, err=*)
    cpdef upstream_failed(self, message, timeout=*, retryable=*)
    cpdef fail(self, err)
    # A stream's end, held and rewritten (include_usage taken back out): a few calls per stream.
    @cython.locals(end=bytes, at=Py_ssize_t)
    cpdef Py_ssize_t _finish_in(self, bytes out, Py_ssize_t body_at) except? -2
    @cython.locals(cut=Py_ssize_t, chunked=bint, framer=NativeFramer, now=bytes, end=bytes, buf="const char *")
    cpdef _strip(self, bytes out, int flags, Py_ssize_t at, Py_ssize_t offset, Py_ssize_t body_at=*)
    cpdef _strip_end(self, bytes data, Py_ssize_t start=*)


cdef inline bytes _joined(bytes a, bytes b)

cdef inline void _keep(Timing obs, bytes out, Py_ssize_t at) noexcept

cdef inline bint _quiet(bytes data, bytes end)
