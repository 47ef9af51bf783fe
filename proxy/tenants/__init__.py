"""Tenants: who is calling, what they may use, and how fast (the ``tenants:`` section).

The parts, in the order a request meets them:

- ``identify.py`` (sans-IO): the API key from the head, hashed, looked up; headers that carry
  keys are removed before anything goes upstream (a tenant's key stays at the proxy: vLLM
  clusters never see it, providers get their own configured key).
- ``buckets.py`` (sans-IO): GCRA buckets, one int64 each; remaining, reset and Retry-After
  follow from the same numbers.
- ``table.py``: the buckets and in-flight counts in shared memory, one table for the
  supervisor's life (every worker spends from it; reloads keep it).
- ``shared.py``: with ``redis:``, the same buckets in Redis, shared by every replica; the
  shared-memory ones stay the fast path (a refusal needs no round trip) and the fallback.
- ``fairqueue.py`` (sans-IO) and ``gate.py``: weighted fair queuing while a model's backends
  are saturated.
- ``admission.py``: ``Tenants`` puts them together for a worker. ``admit`` runs at
  ``Exchange.start`` (401, 404 for a model the tenant may not use, 429 over a limit) and
  returns an ``Admission``; ``finish`` runs from ``Exchange.finish``, releases the in-flight
  count and corrects the tokens charged.

Tokens per minute. At admission the prompt is estimated at one token per 4 bytes of request
body (``ESTIMATE_BYTES``: JSON and English text run 3-5 bytes a token) and charged. At the
end the charge is corrected to the response's ``usage`` (prompt + completion tokens, read once
by observe's ``tokens_of``). A stream without usage (the client did not ask for
``include_usage``) is charged its estimate plus one completion token per ``STREAM_BYTES`` of
event-stream body (a vLLM chat chunk carrying one token is 150-200 bytes). A response the
proxy or the backend refused (4xx/5xx, no usage) is refunded: no tokens were generated.
Completion tokens are charged while a stream runs, too (``charge_stream``): every
``STREAM_CHARGE`` tokens' worth of event-stream body (at ``STREAM_BYTES`` a token) is spent from
the bucket as it passes, so the tenant's other requests see a long stream's cost before it
ends; the end then charges only what is left (the usage's exact count minus what was spent).
With ``redis:`` the replicas' shared bucket gets the whole correction at the end.

Nothing here runs when the config has no ``tenants:`` section (``Context.tenants`` is None).
"""
