"""The EndpointSlice loop: list, then watch from the list's resourceVersion, forever.

How this works.
- List the Service's slices (``labelSelector=kubernetes.io/service-name=NAME``), publish the
  ready members, then watch from the list's resourceVersion; each event updates the slices
  (``members.apply_event``) and publishes again. A watch the server ends (``timeoutSeconds``)
  resumes from the last resourceVersion seen (bookmarks keep it fresh).
- 410 Gone (an HTTP answer, or an ERROR event in the stream): the version is too old; list again.
- The API unreachable (refused, TLS, timeout, any status but 200): the members stay as they
  were, the failure is logged once (and its end once), ``state()`` says so, and the loop
  retries after a wait that doubles from ``retry_min`` to ``retry_max``.
- A pod seen for the first time is read once (``pod_metadata``) for its weight annotation and
  cluster label; refused (no RBAC for pods) means weight 1, said once.
"""

import asyncio
import logging
import time
from urllib.parse import quote

from .api import Api, ApiError
from .members import Gone, apply_event, pod_metadata, ready_endpoints, slice_members

log = logging.getLogger("fleetproxy.discovery")


class SliceWatch:
    def __init__(self, cfg, cluster, publish, env=None):
        """``cfg``: a KubernetesDiscovery; ``publish(members)`` applies a membership."""
        self.cfg = cfg
        self.cluster = cluster
        self.publish = publish
        self.env = env
        self.namespace = cfg.namespace or _read(cfg.namespace_file) or "default"
        self.source = f"k8s:{self.namespace}/{cfg.service}"
        selector = quote(f"kubernetes.io/service-name={cfg.service}", safe="")
        self.path = f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices?labelSelector={selector}"
        self.slices = {}
        self.version = None
        self.pods = {}  # pod name -> (weight, cluster label)
        self.members = 0
        self.reachable = None  # None until the first answer
        self.error = None
        self.failing_since = None
        self.relists = 0
        self.said_no_pods = False
        self.api = None

    async def run(self):
        wait = self.cfg.retry_min
        while True:
            try:
                if self.api is None:
                    self.api = Api(self.cfg, self.env)
                await self._list()
                wait = self.cfg.retry_min
                while True:
                    await self._watch()
            except Gone as exc:
                self.relists += 1
                log.info("%s: watch expired (%s): listing again", self.source, exc)
            except ApiError as exc:
                if exc.status == 410:
                    self.relists += 1
                    log.info("%s: watch expired (410): listing again", self.source)
                    continue
                self._failed(exc)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                self._failed(exc)
            else:
                continue
            if self.reachable is False:
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.cfg.retry_max)

    async def _list(self):
        answer = await self.api.get(self.path)
        self._ok()
        self.slices = {s["metadata"]["name"]: s for s in answer.get("items") or ()}
        self.version = (answer.get("metadata") or {}).get("resourceVersion")
        await self._publish()

    async def _watch(self):
        path = (
            f"{self.path}&watch=1&allowWatchBookmarks=true&timeoutSeconds={int(self.cfg.watch_timeout)}"
            + (f"&resourceVersion={self.version}" if self.version else "")
        )
        async with asyncio.timeout(self.cfg.watch_timeout + 30):
            async for event in self.api.watch(path):
                self._ok()
                slices, version = apply_event(self.slices, event)
                if version:
                    self.version = version
                if slices is not self.slices:
                    self.slices = slices
                    await self._publish()

    async def _publish(self):
        endpoints = ready_endpoints(self.slices, self.cfg.port_name, self.cfg.port)
        if self.cfg.pod_metadata:
            names = {pod for _, _, pod in endpoints if pod}
            for name in sorted(names - self.pods.keys()):
                self.pods[name] = await self._pod(name)
            for name in self.pods.keys() - names:
                del self.pods[name]
        members = slice_members(endpoints, self.cluster, self.pods)
        self.members = len(members)
        self.publish(members)

    async def _pod(self, name):
        try:
            weight, cluster, problem = pod_metadata(await self.api.get(f"/api/v1/namespaces/{self.namespace}/pods/{name}"))
        except ApiError as exc:
            if exc.status == 404:
                return 1, None  # gone already: its endpoint will go too
            if not self.said_no_pods:
                self.said_no_pods = True
                log.warning("%s: cannot read pod %s (%s): weight 1 (the Role needs get on pods)", self.source, name, exc)
            return 1, None
        if problem:
            log.warning("%s: pod %s: %s", self.source, name, problem)
        return weight, cluster

    def _ok(self):
        if self.reachable is False:
            log.warning("%s: the Kubernetes API answers again", self.source)
        self.reachable = True
        self.error = None
        self.failing_since = None

    def _failed(self, exc):
        self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.reachable is not False:
            self.failing_since = time.time()
            log.warning(
                "%s: the Kubernetes API is unreachable (%s): keeping the last %d member(s), retrying",
                self.source, self.error, self.members,
            )
        self.reachable = False

    def state(self):
        return {
            "source": self.source,
            "cluster": self.cluster,
            "members": self.members,
            "reachable": self.reachable,
            "error": self.error,
            "failing_since": self.failing_since,
            "relists": self.relists,
            "resource_version": self.version,
        }


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None
