"""The supervisor never touches a request, so it does not load the data path (issue 13's idle
footprint): it reads the endpoint labels from the config (``routing/labels.py``, the list the
router builds its endpoints from), imports no router, connection or admission module, and no
ssl; config errors still name the file and the field, at startup (here) and at reload
(tests/test_supervisor_state.py)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from test_routing import make_cert
from proxy.cli import main
from proxy.config import build
from proxy.routing.labels import distinct_endpoints, endpoint_labels
from proxy.routing.router import Router

CONFIGS = [
    {"backends": ["http://a:1", "http://b:1"]},
    # Shared by two clusters: one endpoint, at its first appearance; named and unnamed.
    {
        "backends": ["http://a:1"],
        "clusters": [
            {"name": "big", "models": ["m"], "backends": ["http://b:1", {"url": "http://a:1"}], "fallback": ["ext"]},
            {"name": "small", "models": ["s"], "backends": [{"url": "http://c:2", "name": "c", "weight": 3}]},
        ],
        "providers": [{"name": "ext", "url": "https://api.example.com/v1", "models": ["x"]}],
    },
    # A cluster with discovery only: no static endpoint (its members take reserved columns).
    {
        "clusters": [
            {"name": "found", "models": ["m"], "discovery": {"dns": {"name": "vllm.internal", "port": 8000}}},
            {"name": "fixed", "backends": ["http://d:1"]},
        ],
    },
    # Providers alone.
    {"providers": [{"name": "p1", "url": "http://127.0.0.1:9"}, {"name": "p2", "url": "https://x.test"}]},
]


@pytest.mark.parametrize("raw", CONFIGS)
def test_the_labels_are_the_routers_endpoints_in_column_order(raw):
    cfg = build(raw)
    router = Router(cfg, None, table=False)
    assert endpoint_labels(cfg) == [e.label for e in router.endpoints]
    assert [e.index for e in router.endpoints] == list(range(len(router.endpoints)))
    assert [p for _, p in distinct_endpoints(cfg)] == [e.provider for e in router.endpoints]


def test_labels_of_a_shared_endpoint_and_a_provider():
    cfg = build(CONFIGS[1])
    assert endpoint_labels(cfg) == ["a:1", "b:1", "c", "ext"]


def _imported_by_supervisor(code):
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_the_supervisor_does_not_import_the_data_path(tmp_path):
    loaded = _imported_by_supervisor(
        "import json, sys\n"
        "import proxy.process.supervisor\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    # The admin listener renders its answers with http.responses; nothing else of the data path.
    assert {m for m in loaded if m.startswith("proxy.http.")} <= {"proxy.http.responses"}
    for name in (
        "proxy.routing.router", "proxy.routing.endpoint", "proxy.routing.cluster", "proxy.routing.policies",
        "proxy.routing.prober", "proxy.discovery.dns", "proxy.discovery.kubernetes", "proxy.discovery.api",
        "proxy.tenants.admission", "proxy.process.worker", "uvloop",
        # The request metrics' recorder, and the body walk and stream reader it brings.
        "proxy.observe.metrics", "proxy.routing.bodywalk", "proxy.observe.streamusage",
    ):
        assert name not in loaded, name
    # ssl only where a config names a ca_file, and asyncio's ssl is kept out by the command line;
    # a reload's config check still loads a ca_file with it.
    loaded, later = json.loads(subprocess.run([sys.executable, "-c", (
        "import json, sys\n"
        "import proxy.cli\n"
        "proxy.cli._asyncio_without_ssl()\n"
        "import proxy.process.supervisor\n"
        "from proxy.config import build\n"
        "build({'backends': ['https://a:1']})\n"
        "loaded = sorted(sys.modules)\n"
        f"build({{'backends': [{{'url': 'https://a:1', 'ca_file': {make_cert(tmp_path, 'a')[0]!r}}}]}})\n"
        "print(json.dumps([loaded, sorted(sys.modules)]))\n"
    )], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert "asyncio" in loaded and "ssl" not in loaded and "_ssl" not in loaded
    assert "ssl" in later


def test_a_worker_names_its_loop_without_reading_package_metadata():
    # importlib.metadata brings email, zipfile and csv (~1.7 MiB) into every worker, for the
    # one line of its startup log that names uvloop's version.
    loaded = _imported_by_supervisor(
        "import json, sys\n"
        "from proxy.process.worker import loop_build\n"
        "assert loop_build().startswith('uvloop ')\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    assert "importlib.metadata" not in loaded and "email" not in loaded


def _maps(pid):
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_a_running_supervisor_maps_no_ssl_and_its_worker_does(proxy):
    worker = proxy.admin("/admin/workers")[1]["workers"][0]["pid"]
    assert "/_ssl." not in _maps(proxy.proc.pid)
    assert "/_ssl." in _maps(worker)  # the worker's asyncio keeps its TLS (https backends)
    # Nor OpenSSL's libcrypto (~0.5 MiB): its hashes and its constant-time compare are
    # CPython's own builtins (hashlib and hmac would load it).
    assert "libcrypto" not in _maps(proxy.proc.pid) and "libcrypto" in _maps(worker)


def test_a_bad_ca_file_names_the_file_and_the_field_at_startup(tmp_path, capsys):
    path = tmp_path / "fleet.yaml"
    path.write_text("backends:\n  - url: https://127.0.0.1:1\n    ca_file: /nonexistent/ca.pem\n")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "ca_file '/nonexistent/ca.pem' cannot be loaded" in err and "$.backends[0]" in err
