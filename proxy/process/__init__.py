"""The process level: runs once per process and never touches a request.

- ``supervisor``: worker processes, signals, reloads by generation, scaling, drain;
- ``worker``: one serving process: its listeners, drain; ``context``: what its connections
  share (config, loop, router, derived constants);
- ``admin`` and ``supervisor_admin``: the admin listener of a worker and of the group;
- ``shm``: counters the workers of one generation share.
"""
