"""Config: typed decoding; every error names the file (or the command line) and the field."""

import subprocess
import sys

import pytest

from conftest import ROOT
from proxy.config import ConfigError, load


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_example_config_loads(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example")  # the example's provider needs its key
    cfg = load(f"{ROOT}/examples/fleetproxy.yaml")
    assert [b.label for b in cfg.backends] == ["vllm-a", "127.0.0.1:8002"]
    assert cfg.timeouts.idle == 60.0
    assert cfg.limits.max_body_bytes == 8 * 1024 * 1024


@pytest.mark.parametrize(
    "name,text,field",
    [
        ("a.yaml", "backends: [http://x:1]\ntimeouts:\n  idle: soon\n", "$.timeouts.idle"),
        ("b.yaml", "backends: [http://x:1]\nlimits:\n  max_headers: -3\n", "$.limits.max_headers"),
        ("c.yaml", "backends: [ftp://x:1]\n", "$.backends[0]"),
        ("d.toml", 'backends = ["http://x:1"]\n[pool]\nmax_idle = "many"\n', "$.pool.max_idle"),
        ("e.yaml", "backends: [http://x:1]\ntimeoutz: {}\n", "timeoutz"),
        ("f.yaml", "backends: [http://x:1]\nlisten: nowhere\n", "listen"),
    ],
)
def test_errors_name_file_and_field(tmp_path, name, text, field):
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert path in str(info.value)
    assert field in str(info.value)


def test_unparseable_file(tmp_path):
    path = write(tmp_path, "bad.yaml", "backends: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: cannot parse"):
        load(path)


def test_flags_override_file(tmp_path):
    path = write(tmp_path, "ok.yaml", "backends: [http://x:1]\ntimeouts: {idle: 5, connect: 1}\n")
    cfg = load(path, {"timeouts": {"idle": 9.0}, "backends": ["http://y:2"]})
    assert cfg.timeouts.idle == 9.0 and cfg.timeouts.connect == 1.0
    assert cfg.backends[0].host == "y"


def test_cli_exits_nonzero_naming_field(tmp_path):
    path = write(tmp_path, "cli.yaml", "backends: [http://x:1]\ntimeouts: {idle: soon}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "--config", path], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "cli.yaml" in proc.stderr and "$.timeouts.idle" in proc.stderr


def test_cli_requires_a_backend():
    proc = subprocess.run([sys.executable, "-m", "proxy"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "backend" in proc.stderr


def test_cli_version_names_speedups():
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    assert "speedups:" in proc.stdout
