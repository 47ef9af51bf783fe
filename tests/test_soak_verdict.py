"""The soak bench's verdict (bench/soak.py) flags each kind of leak it promises to, and passes a
run that settles. The soak itself runs minutes (`python -m bench soak`), too long for the suite."""

import copy

from bench import soak


def run(**after):
    procs = {"10": {"fds": 20, "rss": 30 << 20}, "11": {"fds": 22, "rss": 31 << 20}}
    samples = [
        {"t": 0, "phase": "start", "procs": procs, "in_flight": 0, "restarts": 0.0},
        {"t": 30, "phase": "load", "procs": copy.deepcopy(procs), "in_flight": 20, "restarts": 0.0},
        {"t": 60, "phase": "load end", "procs": copy.deepcopy(procs), "in_flight": 0, "restarts": 0.0},
        {"t": 72, "phase": "after", "procs": copy.deepcopy(procs), "in_flight": 0, "restarts": 0.0},
    ]
    samples[1]["procs"]["11"]["fds"] = 80  # busy during the load: not a leak
    for key, value in after.items():
        if key == "fds":
            samples[-1]["procs"]["11"]["fds"] = value
        elif key == "rss":
            samples[2]["procs"]["11"]["rss"] = value
        elif key == "gone":
            del samples[-1]["procs"]["11"]
        else:
            samples[-1][key] = value
    return {"samples": samples}


def test_a_run_that_settles_passes():
    assert soak.verdict(run()) == []
    assert soak.verdict(run(fds=22 + soak.FD_SLACK)) == []


def test_each_leak_is_named():
    assert "fds" in soak.verdict(run(fds=23 + soak.FD_SLACK))[0]
    assert "RSS" in soak.verdict(run(rss=(31 << 20) + soak.RSS_SLACK + 1))[0]
    assert "in flight" in soak.verdict(run(in_flight=1))[0]
    assert "restart" in soak.verdict(run(restarts=1.0))[0]
    assert "gone" in soak.verdict(run(gone=True))[0]
