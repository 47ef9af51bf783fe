# Types for Cython's compile of tcp.py (the native build; see _speedups/__init__.py): a read is
# recv(2) called from C into one buffer of the module's, the GIL held (the socket never waits).
cimport cython

cdef bint _COMPILED
cdef Py_ssize_t READ_SIZE

cdef extern from *:
    '''
    #include <errno.h>
    #include <sys/socket.h>
    /* One read's bytes (the worker reads on one thread): a new bytes object of what recv(2)
       took, empty at EOF, None where the socket would block, NULL with OSError set on an
       error (a reset: ECONNRESET). */
    static char fleetproxy_rbuf[256 * 1024];
    static PyObject *fleetproxy_recv(int fd) {
        ssize_t n;
        do {
            n = recv(fd, fleetproxy_rbuf, sizeof(fleetproxy_rbuf), 0);
        } while (n < 0 && errno == EINTR);
        if (n >= 0)
            return PyBytes_FromStringAndSize(fleetproxy_rbuf, n);
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    '''
    object fleetproxy_recv(int fd)


cdef class SocketTransport:
    cdef public object loop, sock, protocol, received
    cdef public int fd
    cdef public bint reading, closing, lost, paused
    cdef public bytearray pending
    cdef public Py_ssize_t high, low

    @cython.locals(data=bytes)
    cpdef _read_ready(self)
    cpdef _stop_reading(self)
    cpdef _fail(self, exc)
    cpdef _lose(self, exc)
