"""The DNS loop: resolve a name to every A and AAAA record on an interval (a headless Service
answers with one record per ready pod); each address is a member.

The event loop's resolver (``loop.getaddrinfo``) does the lookup, as every other connection
the proxy opens does, so /etc/hosts, search domains and the cluster's DNS apply as usual. A
failed lookup keeps the last members (a DNS hiccup must not empty a fleet), logged once and
shown in ``state()``; health checks still take dead members out.
"""

import asyncio
import logging
import socket
import time

from .members import dns_members

log = logging.getLogger("fleetproxy.discovery")


class DnsWatch:
    def __init__(self, cfg, cluster, publish, resolve=None):
        """``cfg``: a DnsDiscovery; ``resolve(name)``: awaitable getaddrinfo results (tests
        inject one that changes its answer); default the running loop's resolver."""
        self.cfg = cfg
        self.cluster = cluster
        self.publish = publish
        self.resolve = resolve
        self.source = f"dns:{cfg.name}"
        self.members = 0
        self.reachable = None
        self.error = None
        self.failing_since = None
        self.lookups = 0

    async def _lookup(self):
        if self.resolve is not None:
            return await self.resolve(self.cfg.name)
        loop = asyncio.get_running_loop()
        return await loop.getaddrinfo(self.cfg.name, None, type=socket.SOCK_STREAM)

    async def run(self):
        while True:
            try:
                async with asyncio.timeout(max(self.cfg.interval, 5.0)):
                    infos = await self._lookup()
            except (OSError, TimeoutError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                if self.reachable is not False:
                    self.failing_since = time.time()
                    log.warning("%s: lookup failed (%s): keeping the last %d member(s)", self.source, self.error, self.members)
                self.reachable = False
            else:
                if self.reachable is False:
                    log.warning("%s: lookups answer again", self.source)
                self.reachable, self.error, self.failing_since = True, None, None
                members = dns_members(infos, self.cfg.port)
                self.members = len(members)
                self.publish(members)
            self.lookups += 1
            await asyncio.sleep(self.cfg.interval)

    def state(self):
        return {
            "source": self.source,
            "cluster": self.cluster,
            "members": self.members,
            "reachable": self.reachable,
            "error": self.error,
            "failing_since": self.failing_since,
            "lookups": self.lookups,
        }
