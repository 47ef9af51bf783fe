-- wrk script: POST a non-streaming chat completion with a 1.5 KiB system prompt and a short
-- question, as an assistant's requests carry them. chat.lua's prompt is shorter than one of
-- cache_aware's blocks, so the default policy takes its short path there (least request); this
-- one is placed by its prefix, which is what nearly every real chat pays for its routing.
local rule = "Answer in the user's language, cite the retrieved documents by title, and say when they do not cover the question. "
local system = "You are the fleet's support assistant. " .. string.rep(rule, 13)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"tiny","messages":[{"role":"system","content":"' .. system .. '"},'
    .. '{"role":"user","content":"How do I drain one backend without dropping streams?"}],"max_tokens":16}'
