"""Builds the Cython twins of the modules in _speedups/ (see _speedups/__init__.py).

The pure-Python module is the specification; each one listed in NATIVE has a compiled twin of
one of two kinds. Where the specification compiles well as it is, a copy named ``<module>_c.py``
is compiled with the ``<module>_c.pxd`` beside it typing it (aiohttp's augmenting .pxd). Where
the fast version is different code, ``<module>_c.pyx`` is that twin, compiled as it is. With no
compiler or no Cython, or FLEETPROXY_PURE=1 at build time, the package installs pure and says so
at startup.

The copy exists only while Cython translates it: it is removed once ``<module>_c.c`` is made, so
neither a wheel nor the source tree ever holds a ``<module>_c.py`` that Python could import in
place of a missing extension (and report as native). ``pip install .``, ``pip wheel .`` and
``pip install -e .`` all run this; the editable install builds the extension in place, so the
source tree imports it.
"""

import glob
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

NATIVE = ["framing", "prefix"]  # module names under _speedups/ with a _c.pxd or a _c.pyx beside them
PACKAGE = "_speedups"


def _say(message):
    print(f"fleetproxy: {message}", file=sys.stderr)


def extensions():
    if os.environ.get("FLEETPROXY_PURE", "") not in ("", "0"):
        _say("FLEETPROXY_PURE is set, installing the pure-Python speedups")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _say("Cython not available, installing the pure-Python speedups")
        return []
    sources = []
    copies = []
    for name in NATIVE:
        twin = os.path.join(PACKAGE, f"{name}_c.pyx")
        if os.path.exists(twin):
            sources.append(twin)
            continue
        if not os.path.exists(os.path.join(PACKAGE, f"{name}_c.pxd")):
            # Compiling the specification untyped would only make a slow twin that says native.
            raise RuntimeError(f"{PACKAGE}.{name} is in NATIVE but has no {name}_c.pxd or {name}_c.pyx")
        src = os.path.join(PACKAGE, f"{name}.py")
        dst = os.path.join(PACKAGE, f"{name}_c.py")
        # copy2 keeps the spec's mtime, so cythonize skips the translation when the .c is newer
        # than both the .py and the .pxd.
        shutil.copy2(src, dst)
        copies.append(dst)
        sources.append(dst)
    try:
        # Default boundscheck/wraparound on purpose: Python indexing keeps Python semantics in
        # the native build (the hot loops index raw pointers, never checked).
        return cythonize(sources, language_level=3, compiler_directives={"embedsignature": True})
    finally:
        for dst in copies:
            os.remove(dst)


class OptionalBuildExt(build_ext):
    """A failed compile (no C compiler, no Python headers) leaves the pure-Python twins in use
    instead of failing the install. CI sets FLEETPROXY_EXPECT_NATIVE=1 for the test run, where
    tests/test_speedups_loaded.py fails if that happened."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # distutils raises several unrelated types here
            _say(f"building the Cython speedups failed ({exc}); installing the pure-Python ones")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            _say(f"building {ext.name} failed ({exc}); it will run pure Python")


class BuildPy(build_py):
    """Keep generated sources out of the wheel, including ones a previous build left in build/."""

    def run(self):
        super().run()
        for pattern in ("*.c", "*_c.py"):
            for path in glob.glob(os.path.join(self.build_lib, PACKAGE, pattern)):
                os.remove(path)


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPy},
    package_data={PACKAGE: ["*.pxd", "*.pyx"]},  # the twins' sources, so an sdist can build them
    exclude_package_data={PACKAGE: ["*.c", "*_c.py"]},  # generated; the wheel needs only the .so
)
