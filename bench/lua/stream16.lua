-- wrk script: POST a streaming chat completion (SSE, chunked) of exactly 16 tokens: the
-- simulator answers with 18 events (role, 16 tokens, finish) and [DONE], one chunk each.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"tiny","messages":[{"role":"user","content":"Say hello to the fleet"}],"max_tokens":16,"stream":true}'
