# cython: language_level=3
"""The compiled callbacks of bench/micro/readfloor.py: the interpreter out of the floor's
upstream path, so that what differs between its two read paths is uvloop's alone."""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

cdef extern from "sys/socket.h":
    ssize_t recv(int, void *, size_t, int) nogil
    ssize_t send(int, const void *, size_t, int) nogil

cdef extern from "errno.h":
    int errno
    int EAGAIN

cdef char buf[262144]  # one read's bytes: the worker is one thread


def send_all(int fd, bytes data):
    """``data`` on the socket ``fd`` by send(2): a request of a few hundred bytes on loopback,
    taken whole or the run fails (the experiment keeps no write buffer)."""
    cdef ssize_t n = send(fd, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), 0)
    if n != PyBytes_GET_SIZE(data):
        raise OSError(errno, "a partial or failed send: the experiment keeps no write buffer")


cdef class Upstream:
    """The upstream side as a Protocol on uvloop's transport: libuv calls uvloop's buffer
    callback, then its read callback, each with the GIL, then this ``data_received``."""
    cdef object write
    cdef object close

    def __init__(self, client):
        self.write = client.write
        self.close = client.close

    def connection_made(self, transport):
        pass

    def data_received(self, data):
        self.write(data)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.close()


cdef class Reader:
    """The upstream side read by ``loop.add_reader``: libuv's poll callback with the GIL, then
    this call, which reads by recv(2) without letting the GIL go."""
    cdef int fd
    cdef object write
    cdef object on_eof

    def __init__(self, int fd, client, on_eof):
        self.fd = fd
        self.write = client.write
        self.on_eof = on_eof

    def __call__(self):
        cdef ssize_t n = recv(self.fd, buf, sizeof(buf), 0)
        if n > 0:
            self.write(PyBytes_FromStringAndSize(buf, n))
        elif n == 0 or errno != EAGAIN:
            self.on_eof()
