-- wrk script: POST a streaming chat completion (SSE) of 16-64 tokens with no delays (scenario b).
-- The bodies are built once; each request picks one at random, so the stream lengths vary
-- while the script costs wrk next to nothing per request.
local bodies = {}
for n = 16, 64 do
  bodies[#bodies + 1] = string.format(
    '{"model":"tiny","messages":[{"role":"user","content":"Stream to the fleet"}],' ..
    '"max_tokens":%d,"stream":true}', n)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "text/event-stream"

request = function()
  return wrk.format(nil, nil, nil, bodies[math.random(#bodies)])
end
