"""uvloop built from its own source release with one change: the GIL kept across ``uv_run``
while the interpreter has one thread (``PATCH``; README, "The event loop and the GIL").

    python third_party/uvloop/build.py                  # into this interpreter's environment (make install)
    python third_party/uvloop/build.py --wheel-dir DIR  # the wheel into DIR, for the image (make wheel)
    python third_party/uvloop/build.py --out DIR [--stock]  # unpacked into DIR, for bench.ab --envs

Why. Stock uvloop runs libuv's loop with the GIL released, and every libuv callback is ``with
gil``: each takes the GIL back and gives it up again (PyGILState_Ensure/Release: two mutex
pairs and a condition signal). A read costs two such callbacks, the buffer and the data: a
proxied chat four round trips, about 1,700 of its 24,600 user-space instructions, and a stream
two more for each token event. A worker has one Python thread, so nothing else wants the GIL
while the loop waits: kept, the callbacks find it held. With a second Python thread alive
(tracing's exporter, a test's client) the loop lets it go around each wait as before, so that
thread runs while the loop waits for I/O. Measured, paired against the same release built stock
(bench/results/stop44/uvloop-gil.md): scenario c's token events -2.8% to -4.5% of the proxy's
CPU, a stream read an event at a time -1.5%, a chat within noise.

Found held, the GIL still cost each callback PyGILState_Ensure and Release: a thread-specific
lookup and checks each, some 80 instructions a callback, 330 a chat. So the thread whose uv_run
holds the GIL is noted (its pthread id), and Cython's GIL macros in loop.pyx go through two
functions that take nothing for that thread's callbacks and take the GIL as before for any
other thread (``HOLDS_GIL = 2``; an earlier build, 1, is built again by ``make install``).

Optional: where it cannot build (no package index, a uvloop whose loop.pyx the change does not
fit, no C compiler) it says why and exits 0, and the stock uvloop stays: the same loop, a
little slower. The installed uvloop says which it is (``uvloop.loop.HOLDS_GIL``, a version
ending in ``+holdgil``), and so do the worker's start line and ``fleetproxy --version``.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib import metadata

LABEL = "holdgil"  # the built wheel's local version label: uvloop 0.23.0+holdgil

# (what the release's uvloop/loop.pyx says, what it says instead): each found exactly once.
PATCH = [
    (
        "from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer\n",
        "from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer\n"
        "from cpython.pystate cimport (\n"
        "    PyInterpreterState, PyThreadState, PyInterpreterState_ThreadHead,\n"
        "    PyThreadState_Next,\n"
        ")\n"
        "\n"
        'cdef extern from "Python.h":\n'
        "    PyInterpreterState *PyInterpreterState_Get()\n"
        "\n"
        "\n"
        "cdef inline bint _sole_thread() noexcept:\n"
        "    # Whether the interpreter has no thread state but this one (the GIL held).\n"
        "    return PyThreadState_Next(\n"
        "        PyInterpreterState_ThreadHead(PyInterpreterState_Get())) == NULL\n"
        "\n"
        "\n"
        "cdef extern from *:\n"
        '    """\n'
        "    #include <stdint.h>\n"
        "    #include <pthread.h>\n"
        "    /* The thread whose uv_run holds the GIL (its pthread id; 0: none). Its libuv\n"
        "       callbacks run with the GIL held, so their \"with gil\" has nothing to take:\n"
        "       PyGILState_Ensure and Release, a thread-specific lookup and checks each, are\n"
        "       skipped for them (one compare). Any other thread, or this one outside such a\n"
        "       uv_run, takes the GIL as before. The macros below come after Python.h and\n"
        "       before Cython's own GIL macros, which name these functions: every GIL\n"
        "       taken in this module goes through them. */\n"
        "    static volatile uintptr_t fleetproxy_holder = 0;\n"
        "    #define FLEETPROXY_KEPT ((PyGILState_STATE)2)  /* neither LOCKED nor UNLOCKED */\n"
        "    static inline void fleetproxy_hold(int on) {\n"
        "        fleetproxy_holder = on ? (uintptr_t)pthread_self() : 0;\n"
        "    }\n"
        "    static inline PyGILState_STATE fleetproxy_gil_ensure(void) {\n"
        "        if (fleetproxy_holder != 0 && fleetproxy_holder == (uintptr_t)pthread_self())\n"
        "            return FLEETPROXY_KEPT;\n"
        "        return PyGILState_Ensure();\n"
        "    }\n"
        "    static inline void fleetproxy_gil_release(PyGILState_STATE state) {\n"
        "        if (state != FLEETPROXY_KEPT)\n"
        "            PyGILState_Release(state);\n"
        "    }\n"
        "    #define PyGILState_Ensure() fleetproxy_gil_ensure()\n"
        "    #define PyGILState_Release(state) fleetproxy_gil_release(state)\n"
        '    """\n'
        "    void fleetproxy_hold(int on) nogil\n"
        "\n"
        "\n"
        "# Built with the GIL kept across uv_run, its callbacks taking nothing (fleetproxy's\n"
        "# third_party/uvloop/build.py); the number is the change's: 2, the callbacks.\n"
        "HOLDS_GIL = 2\n",
    ),
    (
        "        Py_INCREF(self)\n"
        "        with nogil:\n"
        "            err = uv.uv_run(self.uvloop, mode)\n"
        "        Py_DECREF(self)\n",
        "        Py_INCREF(self)\n"
        "        if mode == uv.UV_RUN_DEFAULT:\n"
        "            # One iteration at a time, the GIL kept across uv_run while this is the\n"
        '            # interpreter\'s only thread. Every libuv callback is "with gil": under a\n'
        "            # nogil uv_run each takes the GIL back and gives it up again (two mutex\n"
        "            # pairs and a condition signal), twice per read (the buffer, then the\n"
        "            # data). With another Python thread alive the GIL is let go as before,\n"
        "            # so that thread runs while the loop waits.\n"
        "            while True:\n"
        "                if _sole_thread():\n"
        "                    fleetproxy_hold(1)\n"
        "                    err = uv.uv_run(self.uvloop, uv.UV_RUN_ONCE)\n"
        "                    fleetproxy_hold(0)\n"
        "                else:\n"
        "                    with nogil:\n"
        "                        err = uv.uv_run(self.uvloop, uv.UV_RUN_ONCE)\n"
        "                if err == 0 or self._stopping:\n"
        "                    break\n"
        "        else:\n"
        "            with nogil:\n"
        "                err = uv.uv_run(self.uvloop, mode)\n"
        "        Py_DECREF(self)\n",
    ),
]


def patched(source):
    """``source`` (a release's loop.pyx) with ``PATCH`` applied, or None where it does not fit."""
    for old, new in PATCH:
        if source.count(old) != 1:
            return None
        source = source.replace(old, new)
    return source


def skip(why):
    print(f"third_party/uvloop: {why}; the stock uvloop stays (the same loop, the GIL let go at each callback)",
          file=sys.stderr)
    return 0


LEVEL = 2  # HOLDS_GIL of a build of this change (1: the GIL kept, the callbacks still taking it)


def holds_gil():
    """Whether the installed uvloop is this change's build (an earlier one is built again)."""
    code = f"import sys, uvloop.loop as l; sys.exit(getattr(l, 'HOLDS_GIL', 0) < {LEVEL})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def build(release, stock, work):
    """The wheel of uvloop ``release`` (changed unless ``stock``) built in ``work``, or why not."""
    pip = [sys.executable, "-m", "pip"]
    fetched = subprocess.run([*pip, "download", "-q", "--no-binary", ":all:", "--no-deps", f"uvloop=={release}",
                              "-d", work])
    archive = os.path.join(work, f"uvloop-{release}.tar.gz")
    if fetched.returncode != 0 or not os.path.exists(archive):
        return None, f"could not fetch uvloop {release}'s source release"
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(work, filter="data")
        except TypeError:  # a Python 3.11 before 3.11.4 has no extraction filters
            tar.extractall(work)
    src = os.path.join(work, f"uvloop-{release}")
    loop = os.path.join(src, "uvloop", "loop.pyx")
    if not stock:
        with open(loop) as f:
            source = patched(f.read())
        if source is None:
            return None, f"uvloop {release}'s loop.pyx is not the one the change was written for"
        with open(loop, "w") as f:
            f.write(source)
        stamp = os.path.join(src, "uvloop", "_version.py")
        with open(stamp) as f:
            text = f.read().replace(f"'{release}'", f"'{release}+{LABEL}'")
        with open(stamp, "w") as f:
            f.write(text)
    os.remove(os.path.join(src, "uvloop", "loop.c"))  # made again from loop.pyx (--stock too: the same Cython)
    dist = os.path.join(work, "dist")
    if subprocess.run([*pip, "wheel", "-q", "--no-deps", src, "-w", dist]).returncode != 0:
        return None, f"uvloop {release} did not build (it needs a C compiler and the Python headers)"
    return glob.glob(os.path.join(dist, "uvloop-*.whl"))[0], None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wheel-dir", help="leave the wheel here in place of the stock uvloop wheel; install nothing")
    p.add_argument("--out", help="unpack the build into this directory (to put first on PYTHONPATH); install nothing")
    p.add_argument("--stock", action="store_true", help="with --out: the release as it is, built the same way")
    args = p.parse_args(argv)
    if args.wheel_dir:  # the release pip chose for the image: the stock wheel's
        stock = sorted(glob.glob(os.path.join(args.wheel_dir, "uvloop-*.whl")))
        if not stock:
            return skip(f"no uvloop wheel in {args.wheel_dir}")
        version = os.path.basename(stock[-1]).split("-")[1]
    else:
        try:
            version = metadata.version("uvloop")
        except metadata.PackageNotFoundError:
            return skip("uvloop is not installed")
        if not args.out and holds_gil():
            return 0  # built already
    release = version.split("+")[0]
    with tempfile.TemporaryDirectory() as work:
        wheel, why = build(release, args.stock, work)
        if wheel is None:
            if args.out:
                sys.exit(f"third_party/uvloop: {why}")
            return skip(why)
        if args.out:
            with zipfile.ZipFile(wheel) as whl:
                whl.extractall(args.out)
            print(f"PYTHONPATH={os.path.abspath(args.out)}: uvloop {release}"
                  f" {'as released' if args.stock else 'with the GIL kept'}")
            return 0
        if args.wheel_dir:
            for stock in glob.glob(os.path.join(args.wheel_dir, "uvloop-*.whl")):
                os.remove(stock)
            shutil.copy(wheel, args.wheel_dir)
        elif subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                             wheel]).returncode != 0:
            return skip("the built wheel did not install")
    print(f"third_party/uvloop: uvloop {release}+{LABEL} built (the GIL kept across its waits and callbacks)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
