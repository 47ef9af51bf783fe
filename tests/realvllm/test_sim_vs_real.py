"""The simulator against the live vLLM of this session, request for request.

The "details" cases of the recordings (tests/realvllm/record.py), sent to the live
server and to a simulator started to match it (neither reports prompt-token
details here; the "rid" cases need --enable-request-id-headers and stay recorded); tests/realvllm/compare.py says what must agree. A failure
here, with test_sim_fidelity.py passing, means vLLM changed since the recording.
"""

from __future__ import annotations

import pytest

from conftest import start_sim

from .compare import assert_same_answer
from .record import CASES, exchange

LIVE = CASES["details"]


@pytest.fixture(scope="module")
def sim():
    svc = start_sim("--max-model-len", "1024", "--id-from-request-id", "--strict-content-type")
    yield svc
    svc.stop()


@pytest.mark.parametrize("name", sorted(LIVE))
def test_simulator_answers_like_live_vllm(vllm, sim, name):
    case = LIVE[name]
    assert_same_answer(exchange(vllm.port, case), exchange(sim.port, case), case["method"])
