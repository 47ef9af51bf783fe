"""pytest-benchmark hooks for the micro benchmarks: record the machine, not the repository."""

import os


def pytest_benchmark_generate_commit_info(config):
    # The benchmarks never run git; the commit that holds a result file is its provenance.
    return {"id": None, "note": "see the commit that added this file"}


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["load_average_at_start"] = os.getloadavg()
    machine_info["note"] = os.environ.get("BENCH_NOTE", "shared machine: other work ran on the same CPUs")
