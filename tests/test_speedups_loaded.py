"""The seam says what loaded, and CI fails if the native build silently fell back to pure.

`make test` runs the suite twice: with FLEETPROXY_EXPECT_NATIVE=1 (after `pip install -e .`
built the extensions) and with FLEETPROXY_PURE=1. (aiohttp's test_c_parser_loaded, in spirit.)
"""

import concurrent.futures
import importlib
import json
import os
import shutil
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


@pytest.mark.skipif(not _speedups.EXPECT_NATIVE or _speedups.PURE, reason="native not required")
@pytest.mark.parametrize("name", _speedups.COMPILED)
def test_data_path_compiled(name):
    module = importlib.import_module(name)
    assert module.__file__.endswith(tuple(EXTENSION_SUFFIXES)), module.__file__


@pytest.mark.skipif(not _speedups.PURE, reason="FLEETPROXY_PURE not set")
def test_pure_forced():
    assert _speedups.IMPLEMENTATION == "pure"
    assert _speedups.ResponseFramer.__module__ == "_speedups.framing"
    for name in _speedups.COMPILED:
        assert importlib.import_module(name).__file__.endswith(".py"), name


def test_a_compiled_module_built_from_other_source_imports_its_py(tmp_path):
    # Edit a source after the build and forget to rebuild: the seam must run the edit, and say so.
    if _speedups.PURE or not _speedups.EXPECT_NATIVE:
        pytest.skip("needs the native build")
    manifest = os.path.join(ROOT, "_speedups", _speedups.MANIFEST)
    with open(manifest) as f:
        built = json.load(f)
    built["proxy.http.heads"] = "0" * 64  # as if heads.py had changed since
    code = (
        "import json, _speedups as s\n"
        "import proxy.http.heads as h, proxy.http.relay as r\n"
        "print(json.dumps([s.IMPLEMENTATION, h.__file__, r.__file__, s.not_native()]))\n"
    )
    fake = tmp_path / "compiled.json"
    fake.write_text(json.dumps(built))
    env = dict(os.environ, FLEETPROXY_MANIFEST=str(fake))
    out = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                                    text=True, check=True).stdout)
    implementation, heads, relay, why = out
    assert implementation == "mixed"
    # The relay calls the heads' C functions (relay.pxd cimports them): it runs from source too.
    assert heads.endswith("heads.py") and relay.endswith("relay.py")
    assert why[0] == f"proxy.http.heads: its extension was built from another version of {os.path.join(ROOT, 'proxy', 'http', 'heads.py')}"
    assert len(why) == 2 and why[1].startswith(f"{len(_speedups.COMPILED) - 1} more compiled modules imported")
    assert "proxy.http.relay" in why[1]


def test_without_a_compiled_twin_the_compiled_modules_import_their_py():
    # A build whose prefix table failed to compile (or does not load) while the data path's
    # modules did: those cimport the table (cache_aware.pxd), so they must all run from source,
    # and routing must still work, on the pure table.
    if _speedups.PURE or not _speedups.EXPECT_NATIVE:
        pytest.skip("needs the native build")
    code = (
        "import json, sys\n"
        "sys.modules['_speedups.prefix_c'] = None  # its import now fails, as an unbuilt one's does\n"
        "import _speedups as s\n"
        "import proxy.routing.cache_aware as ca, proxy.http.relay as r\n"
        "from proxy.config import build\n"
        "from proxy.routing.router import Router\n"
        "router = Router(build({'backends': ['http://127.0.0.1:9', 'http://127.0.0.1:10']}), None)\n"
        "body = json.dumps({'model': 'm', 'messages': [{'role': 'user', 'content': 'hello ' * 200}]}).encode()\n"
        "label = router.select([], body).endpoint.label\n"
        "print(json.dumps([s.IMPLEMENTATION, type(s.PrefixTable).__module__, s.PrefixTable.__module__, ca.__file__,\n"
        "                  r.__file__, s.not_native(), label]))\n"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                    check=True).stdout)
    implementation, _, table, cache_aware, relay, why, label = out
    assert implementation == "mixed" and table == "_speedups.prefix"
    assert cache_aware.endswith("cache_aware.py") and relay.endswith("relay.py")
    assert why[0].startswith("import of _speedups.prefix_c halted")
    assert len(why) == 2 and why[1].startswith(f"{len(_speedups.COMPILED)} more compiled modules imported")
    assert label.startswith("127.0.0.1:")


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


def test_every_compiled_module_imports_first():
    # The .pxd files type one module's objects by another's (relay.pxd cimports pipeline.pxd,
    # which cimports context.pxd): a compiled module imports those at its own import, so a
    # cycle of plain imports among them fails, in whichever order a process meets them first.
    def first(name):
        done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True)
        return name, done.returncode, done.stderr[-600:]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        failed = [r for r in pool.map(first, _speedups.COMPILED) if r[1]]
    assert not failed, failed


def test_the_native_build_shares_one_copy_of_cythons_utility_code():
    if _speedups.PURE or not _speedups.EXPECT_NATIVE:
        pytest.skip("needs the native build")
    shared = sys.modules.get(f"_speedups.{_speedups.SHARED_UTILITY}")
    assert shared is not None and shared.__file__.endswith(tuple(EXTENSION_SUFFIXES))


def test_without_the_shared_utility_module_nothing_claims_native(tmp_path):
    # Every extension imports _speedups._cyutility: a tree that lost it must run pure and say why,
    # not fail at import.
    if _speedups.PURE or not _speedups.EXPECT_NATIVE:
        pytest.skip("needs the native build")
    for package in ("_speedups", "proxy"):
        shutil.copytree(os.path.join(ROOT, package), tmp_path / package,
                        ignore=shutil.ignore_patterns("*.c", "__pycache__", f"{_speedups.SHARED_UTILITY}.*"))
    # An editable install's finder would find the source tree's _speedups._cyutility for the copy.
    code = ("import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n"
            "import json, _speedups as s, proxy.http.relay as r\n"
            "print(json.dumps([s.IMPLEMENTATION, r.__file__, s.why_not_native('proxy.http.relay'), "
            "s.why_not_native('framing')]))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("FLEETPROXY_PURE", "FLEETPROXY_MANIFEST")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    implementation, relay, why, why_framer = json.loads(out.stdout)
    assert implementation == "pure" and relay == str(tmp_path / "proxy" / "http" / "relay.py")
    assert why == f"proxy.http.relay: _speedups.{_speedups.SHARED_UTILITY}, which it imports, is not built"
    assert f"_speedups.{_speedups.SHARED_UTILITY}" in why_framer  # the twins' import failed on it
