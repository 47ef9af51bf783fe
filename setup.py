"""Builds the Cython twins of the modules in _speedups/ (see _speedups/__init__.py).

The pure-Python module is the specification; for each one listed in NATIVE, a copy named
``<module>_c.py`` is compiled with its ``<module>_c.pxd`` typing it. With no compiler or no
Cython, or FLEETPROXY_PURE=1 at build time, the package installs pure and says so at startup.
"""

import os
import shutil
import sys

from setuptools import setup

NATIVE = []  # module names under _speedups/ that have a _c.pxd beside them


def extensions():
    if os.environ.get("FLEETPROXY_PURE", "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("fleetproxy: Cython not available, installing the pure-Python speedups", file=sys.stderr)
        return []
    sources = []
    for name in NATIVE:
        src = os.path.join("_speedups", f"{name}.py")
        dst = os.path.join("_speedups", f"{name}_c.py")
        shutil.copyfile(src, dst)
        sources.append(dst)
    if not sources:
        return []
    return cythonize(sources, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False})


setup(ext_modules=extensions())
