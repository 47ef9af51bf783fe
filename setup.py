"""Builds the Cython twins of the modules in _speedups/ and the compiled data path (see
_speedups/__init__.py).

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

The data path's modules (``_speedups.COMPILED``, read here from the source) have no twin: each
``proxy/.../<module>.py`` is compiled as it is, under its own name, with the ``<module>.pxd``
beside it where there is one (types for its objects). ``_speedups/compiled.json`` records the
hash of each source compiled, so that the seam never runs an extension built from other code.
"""

import ast
import glob
import hashlib
import json
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

NATIVE = ["framing", "prefix"]  # module names under _speedups/ with a _c.pxd or a _c.pyx beside them
PACKAGE = "_speedups"


def compiled_modules():
    """_speedups.COMPILED (the data path's modules, compiled as they are), read without
    importing the package."""
    with open(os.path.join(PACKAGE, "__init__.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["COMPILED"]:
            return list(ast.literal_eval(node.value))
    raise RuntimeError(f"{PACKAGE}/__init__.py has no COMPILED")


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
    from setuptools import Extension

    # The data path's modules: each compiled from its own .py under its own name, so it
    # imports in place of the .py (the seam picks which, see _speedups/__init__.py).
    sources += [Extension(name, [name.replace(".", "/") + ".py"]) for name in compiled_modules()]
    try:
        # Default boundscheck/wraparound on purpose: Python indexing keeps Python semantics in
        # the native build (the hot loops index raw pointers, never checked). binding=False:
        # plain C functions where the code does not ask for a function object's attributes.
        return cythonize(sources, language_level=3, nthreads=os.cpu_count() or 1, quiet=True,
                         compiler_directives={"embedsignature": True, "binding": False})
    finally:
        for dst in copies:
            os.remove(dst)


class OptionalBuildExt(build_ext):
    """A failed compile (no C compiler, no Python headers) leaves the pure-Python twins in use
    instead of failing the install. CI sets FLEETPROXY_EXPECT_NATIVE=1 for the test run, where
    tests/test_speedups_loaded.py fails if that happened."""

    def run(self):
        self.built = {}
        if self.parallel is None:  # the data path is ~30 modules: one compiler per core
            self.parallel = os.cpu_count() or 1
        try:
            super().run()
        except Exception as exc:  # distutils raises several unrelated types here
            _say(f"building the Cython speedups failed ({exc}); installing the pure-Python ones")
        self._write_manifest()

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            _say(f"building {ext.name} failed ({exc}); it will run pure Python")
            return
        if ext.name.startswith("proxy."):
            self.built[ext.name] = hashlib.sha256(open(os.path.splitext(ext.sources[0])[0] + ".py", "rb").read()).hexdigest()

    def _write_manifest(self):
        """_speedups/compiled.json beside the extensions: which data-path module was compiled
        from which source (its hash), so the seam never runs one built from other code."""
        if not self.extensions:
            return
        path = self.get_ext_fullpath(f"{PACKAGE}.compiled")
        path = os.path.join(os.path.dirname(path), "compiled.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(dict(sorted(self.built.items())), f, indent=1)


class BuildPy(build_py):
    """Keep generated sources out of the wheel, including ones a previous build left in build/."""

    def run(self):
        super().run()
        for pattern in (f"{PACKAGE}/*.c", f"{PACKAGE}/*_c.py", "proxy/**/*.c"):
            for path in glob.glob(os.path.join(self.build_lib, pattern), recursive=True):
                os.remove(path)


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPy},
    # The sources of the twins and the data path's types, so an sdist can build them; the
    # manifest of what was compiled from what.
    package_data={"": ["*.pxd"], PACKAGE: ["*.pyx", "compiled.json"]},
    exclude_package_data={"": ["*.c"], PACKAGE: ["*_c.py"]},  # generated; the wheel needs only the .so
)
