-- wrk script: POST a small non-streaming chat completion (scenario a).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"tiny","messages":[{"role":"user","content":"Say hello to the fleet"}],"max_tokens":16}'
