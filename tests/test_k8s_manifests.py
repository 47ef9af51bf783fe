"""deploy/kubernetes/: every built-in object valid against the Kubernetes schemas (the ones
kubernetes-validate bundles, offline), the custom resources in the shape their operators read,
and the manifests in agreement with the Dockerfile and with the proxy's own config."""

import glob
import os
import re
import socket

import kubernetes_validate
import pytest
import yaml

from conftest import ROOT
from proxy.config import build
from proxy.process import supervisor

DEPLOY = os.path.join(ROOT, "deploy", "kubernetes")
VERSIONS = ["1.30.0", "1.34.0"]  # the oldest with preStop sleep enabled by default, and a recent one
CUSTOM = {"ServiceMonitor", "ScaledObject"}


def documents():
    out = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "*.yaml"))):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        with open(path) as f:
            out += [(os.path.basename(path), doc) for doc in yaml.safe_load_all(f) if doc]
    return out


def one(kind):
    (doc,) = [d for _, d in documents() if d["kind"] == kind]
    return doc


def named(kind, name):
    (doc,) = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("version", VERSIONS)
def test_builtin_objects_validate_against_the_schemas_offline(version, no_network):
    kinds = []
    for name, doc in documents():
        if doc["kind"] in CUSTOM:
            continue
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any schema error
        kinds.append(doc["kind"])
    assert sorted(kinds) == sorted([
        "ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Role",
        "RoleBinding", "Service", "ServiceAccount",
    ])


def test_the_validator_catches_a_bad_object():
    bad = {**one("Deployment"), "spec": {**one("Deployment")["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


def test_custom_resources_have_the_shape_their_operators_read():
    monitor = one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == one("Service")["spec"]["selector"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in one("Service")["spec"]["ports"]] and endpoint["path"] == "/metrics"
    scaled = one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"]
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and set(trigger["metadata"]) >= {"serverAddress", "query", "threshold"}
    assert "fleetproxy_model_demand{model=" in trigger["metadata"]["query"]
    float(trigger["metadata"]["threshold"])  # KEDA reads a number in a string
    hpa = one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["external"]["metric"]
    assert hpa["name"] == "fleetproxy_model_demand" and "model" in hpa["selector"]["matchLabels"]
    rules = yaml.safe_load(named("ConfigMap", "prometheus-adapter-fleetproxy")["data"]["config.yaml"])
    assert rules["externalRules"][0]["name"]["as"] == "fleetproxy_model_demand"


def test_kustomization_lists_existing_files_and_one_autoscaler():
    with open(os.path.join(DEPLOY, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    assert kust["kind"] == "Kustomization"
    for resource in kust["resources"]:
        assert os.path.exists(os.path.join(DEPLOY, resource)), resource
    assert "hpa.yaml" in kust["resources"] and "keda-scaledobject.yaml" not in kust["resources"]
    listed = set(kust["resources"]) | {"keda-scaledobject.yaml", "prometheus-adapter-rules.yaml", "kustomization.yaml"}
    assert listed == {os.path.basename(p) for p in glob.glob(os.path.join(DEPLOY, "*.yaml"))}


def config_map_config():
    doc = named("ConfigMap", "fleetproxy")
    return build(yaml.safe_load(doc["data"]["fleetproxy.yaml"]), "configmap.yaml")


def test_configmap_config_loads_and_the_pod_spec_matches_it():
    cfg = config_map_config()
    (cluster,) = cfg.clusters
    assert cluster.discovery.kubernetes.service == "vllm" and cfg.workers == "auto"
    pod = one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert cfg.listen_address[1] == ports["http"] and cfg.admin_address[1] == ports["admin"]
    assert cfg.admin_address[0] == "0.0.0.0"  # the kubelet probes the pod's address
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "admin"}
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + cfg.drain_timeout
    assert pod["terminationGracePeriodSeconds"] <= pre_stop + cfg.drain_timeout + 15
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/dev/shm" in mounts  # shared memory stays writable with a read-only root
    # The workers follow the CPU limit: a whole number of CPUs.
    assert float(container["resources"]["limits"]["cpu"]).is_integer()
    rules = {(tuple(r["resources"]), tuple(r["verbs"])) for r in one("Role")["rules"]}
    assert (("endpointslices",), ("list", "watch")) in rules and (("pods",), ("get",)) in rules
    binding = one("RoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    assert binding["roleRef"]["name"] == one("Role")["metadata"]["name"]


def test_dockerfile_agrees_with_the_manifests():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    runtime = text.split("\nFROM ")[-1]  # the last stage is the image
    entrypoint = yaml.safe_load(re.search(r"^ENTRYPOINT (.+)$", runtime, re.M).group(1))
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", runtime, re.M).group(1))
    uid = int(re.search(r"useradd .*--uid (\d+) .*?(\S+)\s*$", runtime, re.M).group(1))
    user = re.search(r"^USER (\S+)$", runtime, re.M).group(1)
    assert user in re.search(r"useradd (.+)$", runtime, re.M).group(1).split()
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", runtime, re.M) for p in line.split()}
    pod = one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "command" not in container and entrypoint == ["fleetproxy"]  # the image's entrypoint runs
    assert pod["securityContext"]["runAsUser"] == uid
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    assert config_path == cmd[cmd.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    key = os.path.relpath(config_path, mount["mountPath"])
    assert key in named("ConfigMap", volume["configMap"]["name"])["data"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = args[args.index("--listen") + 1]
    assert int(listen.rsplit(":", 1)[1]) == ports["http"] and ports["http"] in exposed
    assert cmd[cmd.index("--listen") + 1] == listen
    admin = args[args.index("--admin-listen") + 1]
    assert int(admin.rsplit(":", 1)[1]) == ports["admin"]
    assert int(cmd[cmd.index("--admin-listen") + 1].rsplit(":", 1)[1]) == ports["admin"]


@pytest.mark.parametrize("quota, expected", [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1)])
def test_workers_auto_honours_the_cgroup_cpu_quota(tmp_path, quota, expected):
    path = tmp_path / "cpu.max"
    path.write_text(quota + "\n")
    cpus = len(os.sched_getaffinity(0))
    assert supervisor.usable_cpus(str(path)) == (cpus if expected is None else min(cpus, expected))
    assert supervisor.usable_cpus(str(tmp_path / "missing")) == cpus
