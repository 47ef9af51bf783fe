"""The HTTP data path, in the order bytes travel:

- ``downstream``: the client-facing asyncio.Protocol (the hot loop), with ``pipeline`` (reading
  no further than there is room for) and ``deadlines`` (the client's timeouts on one timer);
- ``request``: sans-IO request reading and the rules a proxy enforces on a request head;
- ``exchange``: one request's life, from routing to its one ``finish`` guard; ``admission``:
  its tenants' part (limits, the fair queue), when configured;
- ``relay``: the upstream half of an exchange: send, pump the response, watch for stalls
  (``watchdog``: one timer per worker for all of them); ``chunked``: de-chunking for HTTP/1.0
  clients;
- ``heads``: sans-IO head rewriting both ways (hop-by-hop fields, forwarding headers);
- ``upstream`` and ``connection_pool``: connections to endpoints, kept alive and reused;
- ``responses`` and ``errors``: every response the proxy makes itself, from typed errors.
"""
