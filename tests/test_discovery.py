"""Discovery: the sans-IO membership functions, the router's membership change, the shared
column claims, and the DNS and EndpointSlice loops against a resolver whose answer changes and
a fake Kubernetes API (tests/k8s_fake.py) on loopback."""

import asyncio
import socket
from bisect import bisect_left

import pytest

from k8s_fake import FakeKube, endpoint_slice, pod
from proxy.config import ConfigError, build
from proxy.discovery import sources
from proxy.discovery.columns import Columns
from proxy.discovery.members import (
    Gone, apply_event, diff, dns_members, member, pod_metadata, ready_endpoints, slice_members,
)
from proxy.routing.policies import hash_bytes
from proxy.routing.router import Router


def k8s_cfg(api, **extra):
    k8s = {"service": "vllm", "namespace": "ns", "api": api, "token_file": "/nonexistent", "retry_min": 0.05,
           "retry_max": 0.2, **extra}
    return build({"clusters": [{"name": "llm", "discovery": {"kubernetes": k8s}}], "health": {"interval": 60}})


async def until(predicate, timeout=10.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def labels(router, cluster="llm"):
    return sorted(e.label for e in router.clusters[cluster].endpoints)


# -- sans-IO ----------------------------------------------------------------------------------


def test_ready_endpoints_take_ready_and_unknown_but_not_unready_or_terminating():
    s = endpoint_slice("a", "vllm", [("10.0.0.1", True, "p1"), ("10.0.0.2", False, "p2"),
                                     ("10.0.0.3", True, "p3", True)])
    s["endpoints"].append({"addresses": ["10.0.0.4"], "conditions": {}})  # ready absent: ready
    v6 = endpoint_slice("b", "vllm", [("fd00::5", True, "p5")], address_type="IPv6")
    fqdn = endpoint_slice("c", "vllm", [("vllm.example", True, "p6")], address_type="FQDN")
    got = ready_endpoints({"a": s, "b": v6, "c": fqdn})
    assert got == [("10.0.0.1", 8000, "p1"), ("10.0.0.4", 8000, None), ("fd00::5", 8000, "p5")]
    members = slice_members(got, "llm")
    assert sorted(members) == ["10.0.0.1:8000", "10.0.0.4:8000", "fd00::5:8000"]
    assert members["fd00::5:8000"].url == "http://[fd00::5]:8000"


def test_slice_port_by_name_number_or_first():
    s = endpoint_slice("a", "vllm", [("10.0.0.1", True, "p1")])
    s["ports"] = [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8000}]
    assert ready_endpoints({"a": s}, port_name="http")[0][1] == 8000
    assert ready_endpoints({"a": s}, port=9000)[0][1] == 9000
    assert ready_endpoints({"a": s})[0][1] == 9000
    assert ready_endpoints({"a": s}, port_name="grpc") == []


def test_watch_events_add_modify_delete_bookmark_and_gone():
    a = endpoint_slice("a", "vllm", [("10.0.0.1", True, "p1")])
    a["metadata"]["resourceVersion"] = "5"
    slices, version = apply_event({}, {"type": "ADDED", "object": a})
    assert list(slices) == ["a"] and version == "5"
    same, version = apply_event(slices, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
    assert same is slices and version == "9"
    empty, _ = apply_event(slices, {"type": "DELETED", "object": a})
    assert empty == {} and slices  # a new mapping: the old one is untouched
    with pytest.raises(Gone):
        apply_event(slices, {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}})
    with pytest.raises(ValueError):
        apply_event(slices, {"type": "ERROR", "object": {"kind": "Status", "code": 500}})
    with pytest.raises(ValueError):
        apply_event(slices, {"type": "SIDEWAYS", "object": a})


def test_pod_metadata_weight_and_cluster():
    assert pod_metadata(pod("p", weight=3, cluster="big")) == (3, "big", None)
    assert pod_metadata(pod("p")) == (1, None, None)
    weight, _, problem = pod_metadata(pod("p", weight="heavy"))
    assert weight == 1 and "fleetproxy.io/weight" in problem
    assert pod_metadata(pod("p", weight=5000))[0] == 1
    got = slice_members([("10.0.0.1", 80, "p1"), ("10.0.0.2", 80, "p2"), ("10.0.0.3", 80, "p3")], "llm",
                        {"p1": (4, None), "p2": (1, "other"), "p3": (2, "llm")})
    assert {k: v.weight for k, v in got.items()} == {"10.0.0.1:80": 4, "10.0.0.3:80": 2}


def test_diff_and_dns_members():
    a, b, b2 = member("10.0.0.1", 80), member("10.0.0.2", 80), member("10.0.0.2", 80, weight=2)
    assert diff({a.label: a}, {a.label: a, b.label: b}) == ([b.label], [], [])
    assert diff({a.label: a, b.label: b}, {b.label: b2}) == ([], [a.label], [b.label])
    infos = [(socket.AF_INET, 1, 6, "", ("10.0.0.2", 0)), (socket.AF_INET6, 1, 6, "", ("fd00::1", 0, 0, 0)),
             (socket.AF_INET, 1, 6, "", ("10.0.0.2", 0))]
    assert sorted(dns_members(infos, 8000)) == ["10.0.0.2:8000", "fd00::1:8000"]


# -- config -----------------------------------------------------------------------------------


def test_config_discovery_needs_no_backends_but_exactly_one_source():
    cfg = build({"clusters": [{"name": "llm", "discovery": {"dns": {"name": "vllm.ns.svc", "port": 8000}}}]})
    assert cfg.clusters[0].backends == [] and cfg.clusters[0].discovery.dns.port == 8000
    assert build({"discovery": {"dns": {"name": "vllm", "port": 80}}}).all_clusters()[0].name == "default"
    with pytest.raises(ConfigError, match="exactly one of dns: or kubernetes:"):
        build({"clusters": [{"name": "llm", "discovery": {}}]})
    with pytest.raises(ConfigError, match=r"\$.clusters\[0\].discovery.dns.port"):
        build({"clusters": [{"name": "llm", "discovery": {"dns": {"name": "vllm", "port": 0}}}]})
    with pytest.raises(ConfigError, match="has no backends"):
        build({"clusters": [{"name": "llm"}]})
    with pytest.raises(ConfigError, match="discovery.kubernetes.api"):
        build({"clusters": [{"name": "llm", "discovery": {"kubernetes": {"service": "s", "api": "ftp://x"}}}]})


# -- the router's membership change -----------------------------------------------------------


def owners(cluster, keys):
    snap = cluster.snapshot
    out = []
    for h in keys:
        i = bisect_left(snap.points, h) % len(snap.points)
        out.append(snap.members[snap.owners[i]].label)
    return out


def test_set_members_keeps_endpoints_moves_about_one_nth_and_lets_requests_finish():
    router = Router(k8s_cfg("http://127.0.0.1:1"), None)
    nine = {f"10.0.0.{i}:8000": member(f"10.0.0.{i}", 8000) for i in range(1, 10)}
    assert router.set_members("llm", "k8s:ns/vllm", nine)[0] == sorted(nine)
    cluster = router.clusters["llm"]
    kept = {e.label: e for e in cluster.endpoints}
    keys = [hash_bytes(b"key-%d" % i) for i in range(20000)]
    before = owners(cluster, keys)
    ten = {**nine, "10.0.0.10:8000": member("10.0.0.10", 8000)}
    router.set_members("llm", "k8s:ns/vllm", ten)
    after = owners(cluster, keys)
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert all(a == "10.0.0.10:8000" for _, a in moved)  # keys move only to the newcomer
    assert 0.05 < len(moved) / len(keys) < 0.15  # about 1/10
    assert all(kept[e.label] is e for e in cluster.endpoints if e.label in kept)  # same objects stay
    # A request in flight on a member that leaves finishes and releases its count.
    selection = router.select([], b"{}")
    gone = selection.endpoint
    rest = {k: v for k, v in ten.items() if k != gone.label}
    assert router.set_members("llm", "k8s:ns/vllm", rest)[1] == [gone.label]
    assert gone not in cluster.snapshot.members and gone not in router.endpoints
    assert gone.in_flight == 1
    selection.release()
    assert gone.in_flight == 0
    state = router.state()
    assert {b["source"] for b in state["backends"]} == {"k8s:ns/vllm"} and len(state["backends"]) == 9


def test_static_members_stay_and_weight_changes_in_place():
    cfg = build({"clusters": [{"name": "llm", "backends": ["http://10.0.0.1:8000"],
                               "discovery": {"dns": {"name": "vllm", "port": 8000}}}]})
    router = Router(cfg, None)
    static = router.find("10.0.0.1:8000")
    router.set_members("llm", "dns:vllm", {m.label: m for m in (member("10.0.0.1", 8000), member("10.0.0.2", 8000))})
    assert labels(router) == ["10.0.0.1:8000", "10.0.0.2:8000"] and router.find("10.0.0.1:8000") is static
    found = router.find("10.0.0.2:8000")
    router.set_members("llm", "dns:vllm", {"10.0.0.2:8000": member("10.0.0.2", 8000, weight=3)})
    assert router.find("10.0.0.2:8000") is found and found.weight == 3
    assert router.clusters["llm"].snapshot.total_weight == 4
    router.set_members("llm", "dns:vllm", {})
    assert labels(router) == ["10.0.0.1:8000"]  # discovery never removes a configured backend
    assert [b["source"] for b in router.state()["backends"]] == ["static"]


def test_columns_agree_across_workers_and_run_out_cleanly():
    cells = memoryview(bytearray(16 * 3)).cast("q")
    one, two = Columns(cells, 5, 3), Columns(cells, 5, 3)  # two workers, one claim table
    a = one.claim("10.0.0.1:8000")
    assert two.claim("10.0.0.1:8000") == a and 5 <= a < 8
    b, c = two.claim("10.0.0.2:8000"), one.claim("10.0.0.3:8000")
    assert len({a, b, c}) == 3
    assert one.claim("10.0.0.4:8000") is None  # full, and every claim is fresh
    for i in range(3):
        cells[2 * i + 1] = 1  # nobody has touched them for ages
    emptied = []
    one.reset = emptied.append
    one.touch(["10.0.0.1:8000"])
    d = one.claim("10.0.0.4:8000")
    assert d not in (None, a) and emptied == [d]


def test_members_beyond_max_members_are_refused_not_crashed():
    cfg = build({"clusters": [{"name": "llm", "discovery": {"dns": {"name": "vllm", "port": 80}, "max_members": 2}}]})
    router = Router(cfg, None)
    three = {m.label: m for m in (member(f"10.0.0.{i}", 80) for i in (1, 2, 3))}
    assert len(router.set_members("llm", "dns:vllm", three)[3]) == 1
    assert len(router.clusters["llm"].endpoints) == 2


# -- the DNS loop -----------------------------------------------------------------------------


def test_dns_membership_follows_a_changing_answer_and_survives_a_failed_lookup():
    answer = {"addrs": ["10.0.0.1", "10.0.0.2"]}

    async def resolve(name):
        assert name == "vllm.ns.svc"
        if answer["addrs"] is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in answer["addrs"]]

    async def main():
        cfg = build({"clusters": [{"name": "llm", "discovery": {"dns": {"name": "vllm.ns.svc", "port": 8000, "interval": 0.01}}}]})
        router = Router(cfg, None)
        (watch,) = sources(router, resolve=resolve)
        task = asyncio.ensure_future(watch.run())
        try:
            assert await until(lambda: labels(router) == ["10.0.0.1:8000", "10.0.0.2:8000"])
            first = router.find("10.0.0.2:8000")
            answer["addrs"] = ["10.0.0.2", "10.0.0.3"]
            assert await until(lambda: labels(router) == ["10.0.0.2:8000", "10.0.0.3:8000"])
            assert router.find("10.0.0.2:8000") is first
            answer["addrs"] = None
            assert await until(lambda: watch.reachable is False)
            assert labels(router) == ["10.0.0.2:8000", "10.0.0.3:8000"] and "Name or service" in watch.error
            answer["addrs"] = ["10.0.0.3"]
            assert await until(lambda: labels(router) == ["10.0.0.3:8000"])
            assert watch.state()["reachable"] is True
        finally:
            task.cancel()

    asyncio.run(main())


def test_dns_real_resolver_localhost():
    async def main():
        cfg = build({"clusters": [{"name": "llm", "discovery": {"dns": {"name": "localhost", "port": 8000, "interval": 60}}}]})
        router = Router(cfg, None)
        (watch,) = sources(router)
        task = asyncio.ensure_future(watch.run())
        try:
            assert await until(lambda: watch.reachable is not None)
        finally:
            task.cancel()
        return labels(router)

    got = asyncio.run(main())
    assert "127.0.0.1:8000" in got and set(got) <= {"127.0.0.1:8000", "::1:8000"}


# -- the EndpointSlice loop against a fake API ------------------------------------------------


@pytest.fixture
def kube():
    api = FakeKube()
    yield api
    api.close()


def run_watch(kube, body, **extra):
    async def main():
        router = Router(k8s_cfg(kube.url, **extra), None)
        (watch,) = sources(router)
        task = asyncio.ensure_future(watch.run())
        try:
            await body(router, watch)
        finally:
            task.cancel()

    asyncio.run(main())


def test_slices_add_remove_and_not_ready(kube):
    kube.put_slice(endpoint_slice("vllm-a", "vllm", [("10.0.0.1", True, "p1"), ("10.0.0.2", False, "p2")]))
    kube.put_slice(endpoint_slice("other", "other-svc", [("10.9.9.9", True, "x")]))
    kube.pods["p1"] = pod("p1", weight=3)

    async def body(router, watch):
        assert await until(lambda: labels(router) == ["10.0.0.1:8000"])
        assert router.find("10.0.0.1:8000").weight == 3  # the pod's annotation
        kube.put_slice(endpoint_slice("vllm-a", "vllm", [("10.0.0.1", True, "p1"), ("10.0.0.2", True, "p2")]))
        assert await until(lambda: labels(router) == ["10.0.0.1:8000", "10.0.0.2:8000"])
        kube.put_slice(endpoint_slice("vllm-b", "vllm", [("10.0.1.1", True, "p3")]))
        assert await until(lambda: len(labels(router)) == 3)
        kube.put_slice(endpoint_slice("vllm-a", "vllm", [("10.0.0.1", False, "p1"), ("10.0.0.2", True, "p2")]))
        assert await until(lambda: labels(router) == ["10.0.0.2:8000", "10.0.1.1:8000"])
        kube.delete_slice("vllm-b")
        assert await until(lambda: labels(router) == ["10.0.0.2:8000"])
        assert watch.state()["reachable"] is True and kube.count("list") == 1

    run_watch(kube, body)


def test_expired_watch_relists_and_sees_what_it_missed(kube):
    kube.put_slice(endpoint_slice("vllm-a", "vllm", [("10.0.0.1", True, "p1")]))

    async def body(router, watch):
        assert await until(lambda: labels(router) == ["10.0.0.1:8000"])
        missed = endpoint_slice("vllm-a", "vllm", [("10.0.0.1", True, "p1"), ("10.0.0.7", True, "p7")])
        kube.expire(lambda api: api._put(missed, True))  # no event: only a list shows it
        assert await until(lambda: labels(router) == ["10.0.0.1:8000", "10.0.0.7:8000"])
        assert kube.count("list") == 2 and watch.relists >= 1

    run_watch(kube, body)


def test_unreachable_api_keeps_the_last_members_says_so_and_recovers(kube):
    kube.put_slice(endpoint_slice("vllm-a", "vllm", [("10.0.0.1", True, "p1"), ("10.0.0.2", True, "p2")]))

    async def body(router, watch):
        assert await until(lambda: len(labels(router)) == 2)
        kube.down()
        assert await until(lambda: watch.reachable is False)
        state = router.state()["discovery"][0]
        assert state["reachable"] is False and state["error"] and state["failing_since"]
        assert state["source"] == "k8s:ns/vllm" and labels(router) == ["10.0.0.1:8000", "10.0.0.2:8000"]
        kube.put_slice(endpoint_slice("vllm-a", "vllm", [("10.0.0.2", True, "p2")]))  # while down
        kube.up()
        assert await until(lambda: labels(router) == ["10.0.0.2:8000"])
        assert watch.reachable is True and watch.error is None

    run_watch(kube, body)


def test_api_refusing_pods_gives_weight_one(kube):
    kube.put_slice(endpoint_slice("vllm-a", "vllm", [("10.0.0.1", True, "p1")]))  # no pod object: 404

    async def body(router, watch):
        assert await until(lambda: labels(router) == ["10.0.0.1:8000"])
        assert router.find("10.0.0.1:8000").weight == 1

    run_watch(kube, body)
