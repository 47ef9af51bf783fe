-- wrk script: POST a non-streaming chat completion whose prompt is 32 KiB of text (a RAG-sized
-- request), made here rather than stored: the per-byte costs of reading, routing and forwarding
-- a request, where chat.lua measures the per-request ones.
local sentence = "The fleet answers questions about the documents retrieved for this request. "
local text = string.rep(sentence, math.ceil(32768 / #sentence)):sub(1, 32768)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"messages":[{"role":"system","content":"You are a helpful assistant."},'
    .. '{"role":"user","content":"' .. text .. '"}],"model":"tiny","max_tokens":16}'
