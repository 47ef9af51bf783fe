"""The HTTP data path, in the order bytes travel:

- ``downstream``: the client-facing asyncio.Protocol (the hot loop);
- ``request``: sans-IO request reading and the rules a proxy enforces on a request head;
- ``exchange``: one request's life, from routing to its one ``finish`` guard;
- ``relay``: the upstream half of an exchange: send, pump the response, watch for stalls;
- ``heads``: sans-IO head rewriting both ways (hop-by-hop fields, forwarding headers);
- ``upstream`` and ``connection_pool``: connections to endpoints, kept alive and reused;
- ``responses`` and ``errors``: every response the proxy makes itself, from typed errors.
"""
