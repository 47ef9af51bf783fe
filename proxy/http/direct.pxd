# Types for Cython's compile of direct.py (the native build; see _speedups/__init__.py): send(2)
# called from C on a bytes object's buffer, the GIL held (a non-blocking socket never waits).
cimport cython

cdef bint _COMPILED

cdef extern from *:
    '''
    #include <errno.h>
    #include <sys/socket.h>
    /* Bytes send(2) took of data (0 where the socket would block or the call failed: the
       caller hands all of it to the transport, which meets the same error and reports it as
       it always has). MSG_NOSIGNAL: a peer gone is EPIPE, never SIGPIPE. */
    static Py_ssize_t fleetproxy_send(int fd, PyObject *data, Py_ssize_t n) {
        ssize_t sent;
        do {
            sent = send(fd, PyBytes_AS_STRING(data), (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        } while (sent < 0 && errno == EINTR);
        return sent > 0 ? (Py_ssize_t)sent : 0;
    }
    '''
    Py_ssize_t fleetproxy_send(int fd, bytes data, Py_ssize_t n)

cdef extern from *:
    '''
    #include <sys/uio.h>
    /* fleetproxy_send of two buffers, one after the other, by one sendmsg(2): bytes taken of
       both together (0 as above). */
    static Py_ssize_t fleetproxy_send2(int fd, PyObject *a, Py_ssize_t na, PyObject *b, Py_ssize_t nb) {
        struct iovec parts[2];
        struct msghdr msg;
        ssize_t sent;
        memset(&msg, 0, sizeof(msg));
        parts[0].iov_base = PyBytes_AS_STRING(a);
        parts[0].iov_len = (size_t)na;
        parts[1].iov_base = PyBytes_AS_STRING(b);
        parts[1].iov_len = (size_t)nb;
        msg.msg_iov = parts;
        msg.msg_iovlen = 2;
        do {
            sent = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        } while (sent < 0 && errno == EINTR);
        return sent > 0 ? (Py_ssize_t)sent : 0;
    }
    '''
    Py_ssize_t fleetproxy_send2(int fd, bytes a, Py_ssize_t na, bytes b, Py_ssize_t nb)

cpdef int socket_fd(transport) except? -2


cdef class Sender:
    cdef public object transport
    cdef public int fd
    cdef public bint queued
    cdef object closing

    cdef inline bint _may_send(self, bint closed) except -1

    @cython.locals(n=Py_ssize_t, sent=Py_ssize_t, chunk=bytes)
    cpdef write(self, data, bint closed)
    @cython.locals(n=Py_ssize_t, sent=Py_ssize_t)
    cpdef write2(self, bytes head, bytes body, bint closed)
