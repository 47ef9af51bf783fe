"""Tenants, sans-IO (issue 15): GCRA buckets with plain numbers, key identification, the token
charge rule, the priority splice, the config's rules, and the shared table's bookkeeping."""

import json

import msgspec
import pytest

from proxy.config import ConfigError, build
from proxy.tenants.admission import (
    ESTIMATE_BYTES, STREAM_BYTES, STREAM_CHARGE, Admission, TenantRefused, Tenants, tokens_used, with_priority,
)
from proxy.tenants.buckets import US, Limit, reset_text
from proxy.tenants.identify import BAD, NO_KEY, KeyIndex, hash_key, presented_key, strip_keys
from proxy.tenants.table import TenantTable

KEY_A = "sk-tenant-a-0123456789"
KEY_B = "sk-tenant-b-9876543210"


def cfg(**tenants):
    return build({"backends": ["http://127.0.0.1:1"], "tenants": tenants})


# -- buckets ---------------------------------------------------------------------------------


def test_bucket_admits_its_capacity_at_once_then_refuses():
    limit = Limit(2.0, 4)  # 2/s, 4 at once
    tat, now = 0, 10 * US
    for i in range(4):
        ok, tat, remaining, reset, wait = limit.take(tat, now, 1)
        assert ok and remaining == 3 - i and wait == 0
    ok, tat2, remaining, reset, wait = limit.take(tat, now, 1)
    assert not ok and tat2 == tat and remaining == 0
    assert wait == US // 2  # one unit refills in 1/rate s
    assert reset == 2 * US  # four units at 2/s


def test_retry_after_is_exact_a_request_waiting_that_long_passes_and_a_moment_less_fails():
    limit = Limit(3.0, 2)
    tat, now = 0, 5 * US
    for _ in range(2):
        tat = limit.take(tat, now, 1)[1]
    ok, _, _, _, wait = limit.take(tat, now, 1)
    assert not ok
    assert limit.take(tat, now + wait, 1)[0]
    assert not limit.take(tat, now + wait - 2, 1)[0]


def test_token_cost_above_capacity_is_checked_as_capacity_and_charged_whole():
    limit = Limit(100.0, 1000)
    ok, tat, remaining, reset, _ = limit.take(0, US, 5000)
    assert ok and remaining == 0
    assert tat - US == 5000 * limit.interval  # an overdraft: the next request waits for it
    ok, _, _, _, wait = limit.take(tat, US, 1)
    assert not ok and wait == pytest.approx(4001 * limit.interval, abs=2)


def test_charge_and_refund_after_admission():
    limit = Limit(10.0, 100)
    now = 50 * US
    ok, tat, *_ = limit.take(0, now, 40)
    assert limit.remaining(tat, now) == 60
    assert limit.remaining(limit.charge(tat, now, 20), now) == 40
    assert limit.remaining(limit.charge(tat, now, -30), now) == 90
    # A refund never makes an idle bucket fuller than full.
    assert limit.charge(tat, now, -1000) == now
    assert limit.remaining(limit.charge(0, now, -5), now) == 100


def test_remaining_refills_with_time():
    limit = Limit(1.0, 10)
    tat = limit.take(0, 0, 10)[1]
    assert limit.remaining(tat, 0) == 0
    assert limit.remaining(tat, 3 * US) == 3
    assert limit.remaining(tat, 60 * US) == 10


def test_reset_text_reads_like_openai():
    assert reset_text(0) == "0ms"
    assert reset_text(19_200) == "20ms"
    assert reset_text(1_500_000) == "1.5s"
    assert reset_text(2 * US) == "2s"
    assert reset_text(360 * US) == "6m0s"


def test_limit_rejects_nonsense():
    with pytest.raises(ValueError):
        Limit(0, 1)
    with pytest.raises(ValueError):
        Limit(1, 0)


# -- identification --------------------------------------------------------------------------


def test_hash_key_is_sha256_hex():
    assert hash_key("test") == "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.mark.parametrize(
    "headers, key",
    [
        ([(b"authorization", b"Bearer sk-1")], b"sk-1"),
        ([(b"authorization", b"bearer   sk-1 ")], b"sk-1"),
        ([(b"api-key", b"sk-2")], b"sk-2"),
        ([(b"x-api-key", b"sk-3")], b"sk-3"),
        ([(b"authorization", b"Bearer sk-1"), (b"x-api-key", b"sk-1")], b"sk-1"),
        ([(b"content-type", b"application/json")], NO_KEY),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], BAD),
        ([(b"authorization", b"Bearer ")], BAD),
        ([(b"authorization", b"Bearer sk-1"), (b"api-key", b"sk-2")], BAD),
    ],
)
def test_presented_key(headers, key):
    assert presented_key(headers) == key


def test_key_index_finds_the_holder_only():
    index = KeyIndex([(hash_key(KEY_A), "a"), (hash_key(KEY_B), "b")])
    assert index.lookup(KEY_A.encode()) == "a"
    assert index.lookup(KEY_B.encode()) == "b"
    assert index.lookup(KEY_A.encode() + b"x") is None
    assert index.lookup(hash_key(KEY_A).encode()) is None  # the stored form is no key


def test_strip_keys_removes_every_key_header():
    headers = [(b"authorization", b"Bearer x"), (b"api-key", b"y"), (b"x-api-key", b"z"), (b"accept", b"*/*")]
    assert strip_keys(headers) == [(b"accept", b"*/*")]


# -- the charge rule and the priority splice -------------------------------------------------


def test_tokens_used_prefers_usage_then_estimates_streams_and_refunds_failures():
    adm = Admission(None, 100, b"")
    assert tokens_used(adm, (30, 7, 0), 200, 0) == 37
    assert tokens_used(adm, (0, 0, 0), 200, 10 * STREAM_BYTES) == 110
    assert tokens_used(adm, (0, 0, 0), 200, 0) == 100
    assert tokens_used(adm, (0, 0, 0), 429, 0) == 0
    assert tokens_used(adm, (0, 0, 0), 0, 0) == 0  # no response at all


@pytest.mark.parametrize(
    "body",
    [b'{"model":"m"}', b'{"model": "m", "priority": -5}\n', b"{}", b'  { "a" : [1, {"b": 2}] }  '],
)
def test_priority_is_added_last_and_wins(body):
    out = with_priority(body, b',"priority":3}')
    assert json.loads(out)["priority"] == 3
    assert {k: v for k, v in json.loads(out).items() if k != "priority"} == {
        k: v for k, v in json.loads(body).items() if k != "priority"
    }


def test_priority_leaves_non_objects_alone():
    for body in (b"", b"[1,2]", b"not json"):
        assert with_priority(body, b',"priority":3}') == body


# -- config ----------------------------------------------------------------------------------


def test_config_reads_tenants():
    c = cfg(default="free", list=[{"name": "free", "requests_per_second": 1},
                                  {"name": "a", "keys": [hash_key(KEY_A)], "models": ["m"], "tokens_per_minute": 600}])
    assert c.tenants.default == "free" and c.tenants.list[1].tokens_per_minute == 600


@pytest.mark.parametrize(
    "section, words",
    [
        ({"list": [{"name": "a", "keys": ["sk-plain"]}]}, "sha256:<64"),
        ({"list": [{"name": "a"}, {"name": "a"}]}, "used twice"),
        ({"list": [{"name": "a", "keys": [hash_key(KEY_A)]}, {"name": "b", "keys": [hash_key(KEY_A)]}]}, "same key"),
        ({"default": "nobody", "list": [{"name": "a"}]}, "tenants.default"),
        ({"list": [{"name": "a", "requests_per_second": 0}]}, "$.tenants.list[0].requests_per_second"),
        ({"list": [{"name": "a", "rps": 3}]}, "unknown field `rps`"),
    ],
)
def test_config_errors_name_the_field(section, words):
    with pytest.raises(ConfigError) as err:
        cfg(**section)
    assert words in str(err.value)


def test_config_survives_the_trip_to_a_worker():
    c = cfg(default="a", list=[{"name": "a", "keys": [hash_key(KEY_A)], "max_concurrent": 2}])
    from proxy.config import Config

    assert msgspec.convert(msgspec.to_builtins(c), Config) == c


# -- Tenants over a private table: admission with plain numbers ------------------------------


def tenants(**section):
    return Tenants.build(cfg(**section))


def bearer(key):
    return [(b"authorization", b"Bearer " + key.encode()), (b"content-type", b"application/json")]


def test_admit_identifies_and_strips_the_key():
    t = tenants(list=[{"name": "a", "keys": [hash_key(KEY_A)]}])
    adm, headers = t.admit(b"POST", bearer(KEY_A), b"{}", 0)
    assert adm.tenant.name == "a" and headers == [(b"content-type", b"application/json")]
    assert adm.headers == b""  # no limits, no rate-limit fields


def test_admit_refuses_missing_and_wrong_keys_with_401():
    t = tenants(list=[{"name": "a", "keys": [hash_key(KEY_A)]}])
    for headers in ([], bearer(KEY_B), [(b"authorization", b"Basic eA==")]):
        with pytest.raises(TenantRefused) as err:
            t.admit(b"POST", headers, b"{}", 0)
        assert err.value.status == 401


def test_keyless_traffic_is_the_default_tenant():
    t = tenants(default="free", list=[{"name": "free"}, {"name": "a", "keys": [hash_key(KEY_A)]}])
    assert t.admit(b"POST", [], b"{}", 0)[0].tenant.name == "free"
    with pytest.raises(TenantRefused):  # a wrong key is no way into the default tenant
        t.admit(b"POST", bearer(KEY_B), b"{}", 0)


def test_model_not_allowed_is_404_like_openai():
    t = tenants(list=[{"name": "a", "keys": [hash_key(KEY_A)], "models": ["small"]}])
    assert t.admit(b"POST", bearer(KEY_A), b'{"model": "small"}', 0)[0]
    for body in (b'{"model": "large"}', b'{"messages": []}'):
        with pytest.raises(TenantRefused) as err:
            t.admit(b"POST", bearer(KEY_A), body, 0)
        assert err.value.status == 404 and "do not have access" in err.value.message


def test_requests_limit_429_with_headers_then_admits_after_retry_after():
    t = tenants(list=[{"name": "a", "keys": [hash_key(KEY_A)], "requests_per_second": 2, "burst_requests": 2}])
    now = 100 * US
    first, _ = t.admit(b"POST", bearer(KEY_A), b"{}", now)
    assert b"x-ratelimit-limit-requests: 2\r\n" in first.headers
    assert b"x-ratelimit-remaining-requests: 1\r\n" in first.headers
    t.admit(b"POST", bearer(KEY_A), b"{}", now)
    with pytest.raises(TenantRefused) as err:
        t.admit(b"POST", bearer(KEY_A), b"{}", now)
    refused = err.value
    assert refused.status == 429 and b"retry-after: 1\r\n" in refused.headers
    assert b"retry-after-ms: 500\r\n" in refused.headers and b"x-ratelimit-remaining-requests: 0\r\n" in refused.headers
    assert t.admit(b"POST", bearer(KEY_A), b"{}", now + 500_000)[0]


def test_tokens_limit_charges_the_estimate_then_the_usage():
    t = tenants(list=[{"name": "a", "keys": [hash_key(KEY_A)], "tokens_per_minute": 1000}])
    body = b"x" * (400 * ESTIMATE_BYTES)
    adm, _ = t.admit(b"POST", bearer(KEY_A), body, 0)
    assert adm.estimate == 400 and b"x-ratelimit-remaining-tokens: 600\r\n" in adm.headers
    t.finish(adm, 100, 0)  # usage said 100: 300 refunded
    adm2, _ = t.admit(b"POST", bearer(KEY_A), body, 0)
    assert b"x-ratelimit-remaining-tokens: 500\r\n" in adm2.headers
    t.finish(adm2, 900, 0)  # 500 more than estimated: the bucket is overdrawn
    with pytest.raises(TenantRefused) as err:
        t.admit(b"POST", bearer(KEY_A), b"{}", 0)
    assert b"x-ratelimit-remaining-tokens: 0\r\n" in err.value.headers
    assert "tokens" in err.value.message


def test_a_stream_is_charged_while_it_runs_and_not_twice_at_its_end():
    t = tenants(list=[{"name": "a", "keys": [hash_key(KEY_A)], "tokens_per_minute": 1000}])
    adm, _ = t.admit(b"POST", bearer(KEY_A), b"x" * (100 * ESTIMATE_BYTES), 0)  # 100 at admission
    assert adm.next_charge == STREAM_CHARGE * STREAM_BYTES
    t.charge_stream(adm, 300 * STREAM_BYTES, 0)  # 300 completion tokens streamed so far
    assert adm.next_charge == (300 + STREAM_CHARGE) * STREAM_BYTES
    probe, _ = t.admit(b"POST", bearer(KEY_A), b"{}", 0)  # another request (1 token) sees it at once
    assert b"x-ratelimit-remaining-tokens: 599\r\n" in probe.headers
    t.finish(probe, 0, 0)
    t.finish(adm, 100 + 350, 0)  # the usage: 350 completion tokens, 50 more than streamed
    after, _ = t.admit(b"POST", bearer(KEY_A), b"{}", 0)
    assert b"x-ratelimit-remaining-tokens: 549\r\n" in after.headers  # its own 1 token too


def test_concurrency_limit_counts_in_flight_and_finish_releases_once():
    t = tenants(list=[{"name": "a", "keys": [hash_key(KEY_A)], "max_concurrent": 2}])
    a1, _ = t.admit(b"POST", bearer(KEY_A), b"{}", 0)
    a2, _ = t.admit(b"POST", bearer(KEY_A), b"{}", 0)
    with pytest.raises(TenantRefused) as err:
        t.admit(b"POST", bearer(KEY_A), b"{}", 0)
    assert err.value.status == 429 and b"retry-after: 1\r\n" in err.value.headers
    t.finish(a1, 0, 0)
    t.finish(a1, 0, 0)  # once
    t.admit(b"POST", bearer(KEY_A), b"{}", 0)
    with pytest.raises(TenantRefused):
        t.admit(b"POST", bearer(KEY_A), b"{}", 0)


# -- the shared table ------------------------------------------------------------------------


def test_two_workers_spend_from_one_bucket_and_a_dead_workers_counts_go():
    table = TenantTable(rows=4, slots=16)
    try:
        c = cfg(list=[{"name": "a", "keys": [hash_key(KEY_A)], "requests_per_second": 1, "burst_requests": 3,
                       "max_concurrent": 2}])
        w1 = Tenants(c, TenantTable(name=table.name), table.claim_row(101))
        w2 = Tenants(c, TenantTable(name=table.name), table.claim_row(102))
        assert w1.tenants["a"].slot == w2.tenants["a"].slot
        w1.admit(b"POST", bearer(KEY_A), b"{}", 0)
        w2.admit(b"POST", bearer(KEY_A), b"{}", 0)
        with pytest.raises(TenantRefused) as err:  # concurrency: one in each worker
            w1.admit(b"POST", bearer(KEY_A), b"{}", 0)
        assert "concurrent" in err.value.message
        table.free_row(w2.row)  # the supervisor saw worker 2 die
        w1.admit(b"POST", bearer(KEY_A), b"{}", 0)  # third of the burst of 3
        table.free_row(w1.row)
        with pytest.raises(TenantRefused) as err:  # the bucket is shared and empty
            w1.admit(b"POST", bearer(KEY_A), b"{}", 0)
        assert "requests" in err.value.message
        w1.table.close()
        w2.table.close()
    finally:
        table.close()


def test_slots_are_kept_by_name_across_configs():
    table = TenantTable(rows=2, slots=8)
    try:
        slots = {name: table.claim_slot(name) for name in ("a", "b", "c")}
        assert len(set(slots.values())) == 3
        assert {name: table.claim_slot(name) for name in ("c", "a", "b")} == slots
        for i in range(5):
            table.claim_slot(f"x{i}")
        assert table.claim_slot("one-too-many") == -1
    finally:
        table.close()


def test_the_table_is_a_dev_shm_file_without_a_resource_tracker(tmp_path):
    import os
    import subprocess
    import sys

    # A fresh interpreter: the suite's own process may have started a tracker for something else.
    code = (
        "import multiprocessing.resource_tracker as rt, os\n"
        "from proxy.tenants.table import TenantTable\n"
        "t = TenantTable(rows=2, slots=8)\n"
        "w = TenantTable(name=t.name)\n"
        "w.lock(3); w.unlock(3)\n"
        "print(t.shm.path, os.path.exists(t.shm.path), rt._resource_tracker._pid)\n"
        "w.close(); t.close()\n"
        "print(os.path.exists(t.shm.path))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__))).stdout.split()
    assert out[0].startswith(("/dev/shm/fleetproxy-", "/tmp/fleetproxy-")) and out[1] == "True"
    assert out[2] == "None"  # no resource tracker process was started
    assert out[3] == "False"  # the owner's close unlinked it
