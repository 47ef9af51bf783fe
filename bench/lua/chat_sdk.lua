-- wrk script: scenario a's request with the head the openai Python SDK sends (bench.ab's third
-- scenario): 17 fields where chat.lua has 3, since a proxy pays per field.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept-Encoding"] = "gzip, deflate"
wrk.headers["Connection"] = "keep-alive"
wrk.headers["Accept"] = "application/json"
wrk.headers["User-Agent"] = "OpenAI/Python 1.99.0"
wrk.headers["X-Stainless-Lang"] = "python"
wrk.headers["X-Stainless-Package-Version"] = "1.99.0"
wrk.headers["X-Stainless-OS"] = "Linux"
wrk.headers["X-Stainless-Arch"] = "x64"
wrk.headers["X-Stainless-Runtime"] = "CPython"
wrk.headers["X-Stainless-Runtime-Version"] = "3.11.7"
wrk.headers["Authorization"] = "Bearer sk-test"
wrk.headers["X-Stainless-Async"] = "false"
wrk.headers["X-Stainless-Retry-Count"] = "0"
wrk.headers["X-Stainless-Read-Timeout"] = "600"
wrk.body = '{"model":"tiny","messages":[{"role":"user","content":"Say hello to the fleet"}],"max_tokens":16}'
