-- wrk script: stream16.lua's stream written as vLLM writes one: each event on its own write
-- (the simulator's x-sim-event-writes), so the proxy reads it per event, or as the kernel
-- coalesced the writes, rather than in one read.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-sim-event-writes"] = "1"
wrk.body = '{"model":"tiny","messages":[{"role":"user","content":"Say hello to the fleet"}],"max_tokens":16,"stream":true}'
