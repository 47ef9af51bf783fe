"""The one import seam between the compiled hot paths and their pure-Python twins.

``FLEETPROXY_PURE=1`` forces the pure-Python modules. Otherwise the Cython builds made by
``pip install .`` are used when present. Nothing else in the code base catches ImportError for
these modules: import what you need from here, and read ``IMPLEMENTATION`` to know which ran.

Tests and benchmarks that hold the two builds against each other ask here too: ``pure(name)``
is the specification ``_speedups.<name>``, ``native(name)`` its compiled twin or None
(``why_not_native(name)`` says why), and ``EXPECT_NATIVE`` says whether a missing twin is an
error (CI's native run) or a skip.
"""

import importlib
import os
from importlib.machinery import EXTENSION_SUFFIXES


def _env_flag(name):
    return os.environ.get(name, "") not in ("", "0")


PURE = _env_flag("FLEETPROXY_PURE")
# Set by `make test-native`: the native build must have loaded, so a silent fallback fails CI.
EXPECT_NATIVE = _env_flag("FLEETPROXY_EXPECT_NATIVE")

_why_not_native = {}  # name -> why native(name) is None, for the error a test reports


def pure(name):
    """The pure-Python module ``_speedups.<name>``: the specification."""
    return importlib.import_module(f"{__name__}.{name}")


def native(name):
    """The compiled ``_speedups.<name>_c``, or None when it is not built or does not load.

    FLEETPROXY_PURE does not hide it: that switch picks what the proxy runs, while this answers
    what is built, so the suite can compare the two builds in its pure run as well.
    """
    try:
        module = importlib.import_module(f"{__name__}.{name}_c")  # built by setup.py
    except ImportError as exc:  # not built, or built for another interpreter
        _why_not_native[name] = str(exc)
        return None
    if not module.__file__.endswith(tuple(EXTENSION_SUFFIXES)):
        # A <name>_c.py left by an older build would run as Python and claim to be native.
        _why_not_native[name] = f"{module.__file__} is not a compiled extension"
        return None
    _why_not_native.pop(name, None)
    return module


def why_not_native(name):
    """Why the last ``native(name)`` gave None ("" when it gave a module or was not asked)."""
    return _why_not_native.get(name, "")


def _load(name):
    """The build of ``name`` the proxy runs, and whether it is the compiled one."""
    module = None if PURE else native(name)
    return (pure(name), False) if module is None else (module, True)


_framing, _framing_native = _load("framing")
_prefix, _prefix_native = _load("prefix")
# "native" only when every hot path is compiled: a half-built install says so.
IMPLEMENTATION = "native" if _framing_native and _prefix_native else "pure" if not (_framing_native or _prefix_native) else "mixed"

ResponseFramer = _framing.ResponseFramer
HEAD = _framing.HEAD
DONE = _framing.DONE
ERROR = _framing.ERROR
EVENT = _framing.EVENT
NONE = _framing.NONE
LENGTH = _framing.LENGTH
CHUNKED = _framing.CHUNKED
UNTIL_CLOSE = _framing.UNTIL_CLOSE

# Cache-aware routing: prompt prefix block hashes and the shared table of who holds which.
block_hashes = _prefix.block_hashes
PrefixTable = _prefix.PrefixTable
