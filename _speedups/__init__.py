"""The one import seam between the compiled hot paths and their pure-Python twins.

``FLEETPROXY_PURE=1`` forces the pure-Python modules. Otherwise the Cython builds made by
``pip install .`` are used when present. Nothing else in the code base catches ImportError for
these modules: import what you need from here, and read ``IMPLEMENTATION`` to know which ran.
"""

import os
from importlib.machinery import EXTENSION_SUFFIXES

PURE = os.environ.get("FLEETPROXY_PURE", "") not in ("", "0")

if PURE:
    from . import framing as _framing

    IMPLEMENTATION = "pure"
else:
    try:
        from . import framing_c as _framing  # built by setup.py from framing.py + framing_c.pxd

        if not _framing.__file__.endswith(tuple(EXTENSION_SUFFIXES)):
            # A framing_c.py left by an older build would run as Python and claim to be native.
            raise ImportError("_speedups.framing_c is not a compiled extension")
    except ImportError:
        from . import framing as _framing

        IMPLEMENTATION = "pure"
    else:
        IMPLEMENTATION = "native"

ResponseFramer = _framing.ResponseFramer
dechunk = _framing.dechunk
HEAD = _framing.HEAD
DONE = _framing.DONE
ERROR = _framing.ERROR
NONE = _framing.NONE
LENGTH = _framing.LENGTH
CHUNKED = _framing.CHUNKED
UNTIL_CLOSE = _framing.UNTIL_CLOSE
