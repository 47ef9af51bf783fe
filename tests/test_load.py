"""Endpoint load as vLLM reports it (proxy/routing/load.py), sans-IO: the ORCA header, the
Prometheus families, and what the balancing policies make of a report."""

import random
from pathlib import Path

import pytest

from proxy.routing.load import IN_BAND, SCRAPED, Report, parse_metrics, parse_orca, pressure

DATA = Path(__file__).parent / "data" / "vllm"


@pytest.mark.parametrize(
    "value,expected",
    [
        # As vLLM 0.32 (CPU build) sends it: ../shared/vllm-api.md.
        (b"TEXT named_metrics.num_requests_waiting=0.0, named_metrics.kv_cache_usage_perc=0.0", (0.0, None, 0.0)),
        (b"TEXT named_metrics.kv_cache_usage_perc=0.5,named_metrics.num_requests_waiting=3", (3.0, None, 0.5)),
        (b'JSON {"named_metrics": {"num_requests_waiting": 2.0, "kv_cache_usage_perc": 0.25}}', (2.0, None, 0.25)),
        (b"TEXT named_metrics.num_requests_waiting=1, named_metrics.num_requests_running=7", (1.0, 7.0, None)),
        (b"TEXT named_metrics.kv_cache_usage_perc=0.5", None),  # nothing about the queue
        (b"TEXT named_metrics.num_requests_waiting=lots", None),
        (b"JSON {not json", None),
        (b'JSON ["x"]', None),
        (b"PROTO \x00\x01", None),
        (b"", None),
    ],
)
def test_orca_header(value, expected):
    assert parse_orca(value) == expected


def test_real_vllm_metrics():
    text = (DATA / "metrics.txt").read_bytes()
    waiting, running, kv = parse_metrics(text)
    assert waiting == 0.0 and running == 0.0 and kv is not None and 0.0 <= kv <= 1.0


def test_metrics_sum_engines_and_take_the_highest_kv_usage():
    text = b"""# HELP vllm:num_requests_waiting x
vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0
vllm:num_requests_waiting{engine="1",model_name="tiny"} 1.0
vllm:num_requests_running{engine="0",model_name="tiny"} 5.0
vllm:num_requests_running{engine="1",model_name="tiny"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="tiny"} 0.75
vllm:num_requests_waiting_by_reason{reason="x"} 9.0
"""
    assert parse_metrics(text) == (3.0, 9.0, 0.75)


def test_sglang_metrics():
    text = b'sglang:num_queue_reqs{model_name="m"} 4\nsglang:num_running_reqs{model_name="m"} 12\nsglang:token_usage{model_name="m"} 0.5\n'
    assert parse_metrics(text) == (4.0, 12.0, 0.5)


def test_metrics_without_the_families():
    assert parse_metrics(b"# nothing here\nprocess_cpu_seconds_total 3\n") is None


def test_pressure_from_a_fresh_report():
    queued = Report(waiting=2.0, running=10.0, kv=0.5, at=100.0, source=SCRAPED)
    assert pressure(queued, 3, 100.5, max_age=2.0) == (3, True)  # its queue holds ours
    crowded = Report(waiting=7.0, running=10.0, kv=0.5, at=100.0, source=SCRAPED)
    assert pressure(crowded, 3, 100.5, max_age=2.0) == (7.0, True)  # others queue there too
    idle = Report(waiting=0.0, running=9.0, kv=0.1, at=100.0, source=SCRAPED)
    # A running count up to a scrape old does not steer: finished requests would look busy.
    assert pressure(idle, 4, 100.5, max_age=2.0) == (4, False)
    full = Report(waiting=0.0, running=30.0, kv=0.97, at=100.0, source=SCRAPED)
    assert pressure(full, 1, 100.5, max_age=2.0) == (1, True)  # about to queue


def test_in_band_report():
    report = Report(waiting=1.0, running=None, kv=0.2, at=10.0, source=IN_BAND)
    assert pressure(report, 5, 10.1, max_age=2.0) == (5, True)


def test_stale_or_missing_reports_fall_back_to_in_flight():
    report = Report(waiting=5.0, running=5.0, kv=0.9, at=10.0, source=SCRAPED)
    assert pressure(report, 2, 12.5, max_age=2.0) == (2, None)
    assert pressure(None, 2, 12.5, max_age=2.0) == (2, None)
    assert report.state(12.5) == {"waiting": 5.0, "running": 5.0, "running_age_s": 2.5, "kv_cache_usage": 0.9,
                                  "age_s": 2.5, "source": "scrape"}


def _parse_by_lines(text):
    """parse_metrics as it was, every line split out: the reference for the search."""
    families = {b"vllm:num_requests_waiting": 0, b"vllm:num_requests_running": 1, b"vllm:kv_cache_usage_perc": 2,
                b"sglang:num_queue_reqs": 0, b"sglang:num_running_reqs": 1, b"sglang:token_usage": 2}
    fields = [None, None, None]
    for line in text.split(b"\n"):
        cut = line.find(b"{")
        index = families.get(line[:cut if cut >= 0 else line.find(b" ")])
        if index is None:
            continue
        try:
            number = float(line.rsplit(b" ", 1)[1])
        except (IndexError, ValueError):
            continue
        old = fields[index]
        fields[index] = number if old is None else max(old, number) if index == 2 else old + number
    if fields[0] is None and fields[1] is None:
        return None
    return fields[0] or 0.0, fields[1], fields[2]


def test_metrics_found_by_search_equal_every_line_read():
    """3,000 generated expositions (the text format: a family's samples in one group of
    lines): the families first, last, among others, beside longer names that begin with
    theirs, in HELP lines, without labels, with numbers that do not parse, CRLF or LF."""
    rng = random.Random(7)
    servers = [[b"vllm:num_requests_waiting", b"vllm:num_requests_running", b"vllm:kv_cache_usage_perc"],
               [b"sglang:num_queue_reqs", b"sglang:num_running_reqs", b"sglang:token_usage"]]
    for _ in range(3000):
        names = rng.choice(servers)  # one server's families
        groups = []
        for name in rng.sample(names + [names[0] + b"_by_reason", b"vllm:other_total", b"process_cpu"],
                               rng.randrange(0, 7)):
            group = [b"# HELP " + name + b" some help"] * rng.randrange(2)
            for _ in range(rng.randrange(4)):
                number = rng.choice([b"1.5", b"0", b"3", b"nan", b"x", b"2e3"])
                shape = rng.randrange(3)
                group.append(name + b" " + number if shape == 0 else name if shape == 1
                             else name + b'{engine="%d",model_name="m"} ' % rng.randrange(3) + number)
            groups.append(group)
        lines = [line for group in groups for line in group]
        text = rng.choice([b"\n", b"\r\n"]).join(lines) + rng.choice([b"", b"\n"])
        got, expected = parse_metrics(text), _parse_by_lines(text)
        assert got == expected or _nan_equal(got, expected), text


def _nan_equal(a, b):
    return a is not None and b is not None and all(x == y or (x != x and y != y) for x, y in zip(a, b))
