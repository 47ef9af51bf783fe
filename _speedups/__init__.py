"""The one import seam between the compiled hot paths and their pure-Python twins.

``FLEETPROXY_PURE=1`` forces the pure-Python modules. Otherwise the Cython builds made by
``pip install .`` are used when present. Nothing else in the code base catches ImportError for
these modules: import what you need from here, and read ``IMPLEMENTATION`` to know which ran.

The data path itself (``COMPILED``: the client protocol, the exchange and relay, routing, the
metrics recorder) is compiled too, module for module as it is written: Cython turns each
``proxy/.../<module>.py`` into an extension beside it, which Python's import prefers. No twin
to keep in step, so the pure run tests exactly the code the native run compiled. This seam
decides which one imports: under FLEETPROXY_PURE, or where an extension was built from another
version of its source (``compiled.json``, written by the build, holds each source's hash), the
.py is imported instead, and ``IMPLEMENTATION`` says "mixed" rather than "native". The compiled
modules share C functions and structs (their .pxd files cimport each other), so one module
that must run from source takes every one of them with it; the framer and the prefix hashes
stay compiled then. The other way round, the compiled modules call the framer and the prefix
table as C (relay.pxd, cache_aware.pxd cimport them): where either twin did not load, every
compiled module imports from source too.

Tests and benchmarks that hold the two builds against each other ask here too: ``pure(name)``
is the specification ``_speedups.<name>``, ``native(name)`` its compiled twin or None
(``why_not_native(name)`` says why), and ``EXPECT_NATIVE`` says whether a missing twin is an
error (CI's native run) or a skip.
"""

import importlib
import importlib.util
import json
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES

try:  # CPython's own (3.11; 3.12 renamed it): hashlib would load OpenSSL's libcrypto, ~0.5 MiB
    from _sha256 import sha256  # in the supervisor, which makes no TLS connection
except ImportError:
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

# The data path's modules that setup.py compiles as they are (see above). Leaf modules only: a
# package's __init__ stays Python, so the import of ``proxy`` (and this seam) comes first.
COMPILED = (
    "proxy.http.request", "proxy.http.plainrequest", "proxy.http.direct", "proxy.http.pipeline",
    "proxy.http.deadlines", "proxy.http.downstream", "proxy.http.admission", "proxy.http.exchange",
    "proxy.http.relay", "proxy.http.watchdog", "proxy.http.heads", "proxy.http.chunked",
    "proxy.http.upstream", "proxy.http.connection_pool", "proxy.http.responses", "proxy.http.errors",
    "proxy.routing.router", "proxy.routing.cluster", "proxy.routing.endpoint", "proxy.routing.policies",
    "proxy.routing.cache_aware", "proxy.routing.fields", "proxy.routing.bodywalk", "proxy.routing.health",
    "proxy.routing.load", "proxy.routing.retry", "proxy.process.context", "proxy.process.shm",
    "proxy.observe.observer", "proxy.observe.metrics", "proxy.observe.streamusage", "proxy.observe.accesslog",
    "proxy.tenants.gate", "proxy.tenants.buckets", "proxy.tenants.identify",
)
MANIFEST = "compiled.json"  # {module: sha256 of the source it was compiled from}, by setup.py
# Cython's utility code, one copy that every extension imports (setup.py): without it none loads.
SHARED_UTILITY = "_cyutility"


def _env_flag(name):
    return os.environ.get(name, "") not in ("", "0")


PURE = _env_flag("FLEETPROXY_PURE")
# Set by `make test-native`: the native build must have loaded, so a silent fallback fails CI.
EXPECT_NATIVE = _env_flag("FLEETPROXY_EXPECT_NATIVE")

_why_not_native = {}  # name -> why native(name) is None, for the error a test reports
_followers = []  # compiled modules imported from source only because another one is


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


def not_native():
    """Why this process runs less than all native, for the startup log: a line per module that
    is not built or is stale, then one for the compiled modules that came from source with them."""
    if IMPLEMENTATION != "mixed":
        return []
    causes = [why for name, why in _why_not_native.items() if why and name not in _followers]
    if _followers:
        causes.append(f"{len(_followers)} more compiled modules imported from source with them "
                      f"(they share C code): {', '.join(_followers)}")
    return causes


def _load(name):
    """The build of ``name`` the proxy runs, and whether it is the compiled one."""
    module = None if PURE else native(name)
    return (pure(name), False) if module is None else (module, True)


def source_hash(path):
    with open(path, "rb") as f:
        return sha256(f.read()).hexdigest()


def _compiled_state(twins):
    """{module: its .py} of the COMPILED modules that must import from source, and how many
    import compiled. Nothing here imports ``proxy``: its location is enough. ``twins``: whether
    the compiled framer and prefix table loaded; the compiled modules cimport them (relay.pxd,
    cache_aware.pxd), so without them every one imports from source."""
    spec = importlib.util.find_spec("proxy")
    root = os.path.dirname(next(iter(spec.submodule_search_locations)))
    try:
        # FLEETPROXY_MANIFEST: another manifest, for the test of a stale build.
        with open(os.environ.get("FLEETPROXY_MANIFEST") or os.path.join(os.path.dirname(__file__), MANIFEST)) as f:
            built = json.load(f)
    except (OSError, ValueError):
        built = {}
    sources = {}
    native = []
    here = os.path.dirname(__file__)
    shared = any(os.path.exists(os.path.join(here, SHARED_UTILITY + suffix)) for suffix in EXTENSION_SUFFIXES)
    for name in COMPILED:
        base = os.path.join(root, *name.split("."))
        source = base + ".py"
        if not PURE and any(os.path.exists(base + suffix) for suffix in EXTENSION_SUFFIXES):
            if not shared:
                _why_not_native[name] = f"{name}: {__name__}.{SHARED_UTILITY}, which it imports, is not built"
            elif not twins:
                _why_not_native[name] = f"{name}: imported from source, as a compiled twin it calls did not load"
                _followers.append(name)
            elif built.get(name) == source_hash(source):
                native.append((name, source))
                continue
            else:
                _why_not_native[name] = f"{name}: its extension was built from another version of {source}"
        else:
            _why_not_native.setdefault(name, f"{name} is not compiled")
        sources[name] = source
    if sources and native:
        # The compiled modules call each other's C functions and read each other's C structs
        # (their .pxd cimports): one that must run from source takes them all with it.
        first = next(iter(sources))
        for name, source in native:
            _why_not_native[name] = f"{name}: imported from source, as {first} is"
            _followers.append(name)
            sources[name] = source
    return sources, len(COMPILED) - len(sources)


class _SourceFinder:
    """Imports a COMPILED module from its .py where its extension must not run (above)."""

    def __init__(self, sources):
        self.sources = sources

    def find_spec(self, name, path=None, target=None):
        source = self.sources.get(name)
        return None if source is None else importlib.util.spec_from_file_location(name, source)


_framing, _framing_native = _load("framing")
_prefix, _prefix_native = _load("prefix")
_from_source, _compiled_native = _compiled_state(_framing_native and _prefix_native)
if _from_source:
    sys.meta_path.insert(0, _SourceFinder(_from_source))
_native = [_framing_native, _prefix_native, _compiled_native == len(COMPILED)]
# "native" only when every hot path is compiled: a half-built or stale install says so.
IMPLEMENTATION = "native" if all(_native) else "pure" if not (_framing_native or _prefix_native or _compiled_native) else "mixed"

ResponseFramer = _framing.ResponseFramer
new_framer = _framing.new_framer
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
prompt_hashes = _prefix.prompt_hashes
PrefixTable = _prefix.PrefixTable
