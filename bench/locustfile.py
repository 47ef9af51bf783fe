"""Scenario d's chat users for locust: the same sessions, against any deployment, with locust's UI.

`python -m bench` drives scenario d with bench/chat_users.py (asyncio: one core carries hundreds
of streaming users, and the timing code is shared with the open-loop generator), and runs this
user too, headless, as scenario f (bench/locust_run.py: every target, locust's own numbers from
its CSV files). It is also the user for people who want locust's web UI, its distributed workers
or a real fleet:

    pip install -e '.[bench]'
    locust -f bench/locustfile.py --host http://127.0.0.1:8080            # web UI on :8089
    locust -f bench/locustfile.py --host http://127.0.0.1:8080 --headless -u 64 -r 16 -t 60s

Each turn reports four entries, in milliseconds: `POST chat turn` (locust's own: to the response
head, as the body streams), `TTFT` (to the first content token), `ITL` (the turn's mean gap
between tokens) and `E2E` (to `data: [DONE]`). Against the
simulator, FLEETPROXY_SIM_TTFT / FLEETPROXY_SIM_ITL (seconds) set its x-sim-* timing headers.
"""

from __future__ import annotations

import json
import os
import random
import time

from locust import HttpUser, between, task

from bench.chat_users import SYSTEM_PROMPT, WORDS

SIM_HEADERS = {k: os.environ[e] for k, e in (("x-sim-ttft", "FLEETPROXY_SIM_TTFT"),
                                             ("x-sim-itl", "FLEETPROXY_SIM_ITL")) if e in os.environ}


class ChatUser(HttpUser):
    wait_time = between(0.5, 1.5)  # think time between turns, s

    def on_start(self):
        self.session = 0
        self.new_session()

    def new_session(self):
        self.session += 1
        self.sid = f"locust-{id(self):x}-s{self.session}"
        self.turns_left = random.randint(2, 6)
        self.messages = [{"role": "system", "content": SYSTEM_PROMPT}]

    def report(self, kind: str, ms: float, exc=None):
        self.environment.events.request.fire(request_type=kind, name=kind, response_time=ms,
                                             response_length=0, exception=exc, context={})

    @task
    def turn(self):
        if self.turns_left == 0:
            self.new_session()
        self.turns_left -= 1
        question = " ".join(random.choices(WORDS, k=random.randint(8, 40)))
        self.messages.append({"role": "user", "content": question})
        body = {"model": os.environ.get("FLEETPROXY_MODEL", "tiny"), "stream": True, "user": self.sid,
                "max_tokens": random.randint(16, 64), "messages": self.messages}
        start = time.perf_counter()
        first = last = None
        tokens = 0
        with self.client.post("/v1/chat/completions", data=json.dumps(body), stream=True, catch_response=True,
                              name="POST chat turn",
                              headers={"Content-Type": "application/json", "x-session-id": self.sid,
                                       **SIM_HEADERS}) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            done = False
            for line in resp.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    done = True  # read on to the last chunk: the connection then goes back to the pool
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    resp.failure(f"in-band error: {event['error']}")
                    return
                delta = (event.get("choices") or [{}])[0].get("delta") or {}
                if delta.get("content"):
                    last = time.perf_counter()
                    first = first or last
                    tokens += 1
            if not done:
                resp.failure("stream ended without [DONE]")
                return
            resp.success()
        self.report("E2E", (time.perf_counter() - start) * 1e3)
        if first is not None:
            self.report("TTFT", (first - start) * 1e3)
            if tokens > 1:
                self.report("ITL", (last - first) / (tokens - 1) * 1e3)
        self.messages.append({"role": "assistant", "content": " ".join(WORDS[:1] * max(1, tokens))})
