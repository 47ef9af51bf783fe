"""Routing, mostly sans-IO: model -> route -> cluster -> endpoint.

- ``router``: routes by model, the per-request ``Selection``, retries through the route;
- ``labels``: a config's distinct endpoints in column order (pure; the supervisor reads it too);
- ``cluster``: one cluster's endpoints, policy, snapshot and key sources;
- ``policies``: round robin, least request, consistent hashing with bounded loads (pure);
- ``fields``: the request-body fields routing reads, decoded once;
- ``endpoint``: one backend server at run time: connection pool, health, in-flight count;
- ``health`` (pure) and ``prober`` (its I/O): active checks, outlier ejection, drain;
- ``retry``: the retry budget and which failures may be retried (pure);
- ``provider``: requests as an endpoint wants them (base path, API key, model name).
"""
