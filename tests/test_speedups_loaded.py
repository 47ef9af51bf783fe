"""The seam says what loaded, and CI fails if the native build silently fell back to pure.

`make test` runs the suite twice: with FLEETPROXY_EXPECT_NATIVE=1 (after `pip install -e .`
built the extensions) and with FLEETPROXY_PURE=1. (aiohttp's test_c_parser_loaded, in spirit.)
"""

import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES

import pytest

import _speedups

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not _speedups.EXPECT_NATIVE or _speedups.PURE, reason="native not required")
def test_native_loaded():
    assert _speedups.IMPLEMENTATION == "native"
    module = sys.modules[_speedups.ResponseFramer.__module__]
    assert module.__name__ == "_speedups.framing_c"
    assert module.__file__.endswith(tuple(EXTENSION_SUFFIXES)), module.__file__


@pytest.mark.skipif(not _speedups.PURE, reason="FLEETPROXY_PURE not set")
def test_pure_forced():
    assert _speedups.IMPLEMENTATION == "pure"
    assert _speedups.ResponseFramer.__module__ == "_speedups.framing"


def test_implementation_matches_what_was_imported():
    name = _speedups.ResponseFramer.__module__
    assert name == {"native": "_speedups.framing_c", "pure": "_speedups.framing"}[_speedups.IMPLEMENTATION]


def test_cli_and_subprocesses_agree_with_the_seam():
    # tests/test_proxy.py starts the proxy as `python -m proxy` from the source tree: it must
    # pick the same build as this process.
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert f"(speedups: {_speedups.IMPLEMENTATION})" in out
