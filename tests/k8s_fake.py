"""A fake Kubernetes API server for discovery tests: a raw asyncio HTTP/1.1 server on its own
thread that speaks the list/watch protocol for EndpointSlices (and GET for pods) the way the
API server does: a list answers the items and the collection's resourceVersion; a watch
(``watch=1``) streams chunked JSON lines of ADDED/MODIFIED/DELETED events after the version it
was given, BOOKMARKs on request, and answers 410 Gone for a version older than the compaction
point (or says so in the stream: an ERROR event carrying a Status with code 410).

The test drives it from its own thread: ``put_slice``, ``delete_slice``, ``expire`` (end every
watch with a 410 ERROR and compact the history, optionally changing slices *without* events so
only a relist can see the change), ``down``/``up`` (reset every connection, as an unreachable API).
"""

import asyncio
import copy
import threading
from urllib.parse import parse_qs, urlsplit

import orjson

from conftest import free_port


def endpoint_slice(name, service, endpoints, port=8000, port_name="http", address_type="IPv4"):
    """An EndpointSlice as the endpointslice controller writes it. ``endpoints``: (address,
    ready, pod name) tuples, or (address, ready, pod name, terminating)."""
    items = []
    for address, ready, pod, *rest in endpoints:
        conditions = {"ready": ready, "serving": ready, "terminating": bool(rest and rest[0])}
        items.append(
            {
                "addresses": [address],
                "conditions": conditions,
                "targetRef": {"kind": "Pod", "name": pod, "namespace": "ns", "uid": f"uid-{pod}"},
                "nodeName": "node-1",
            }
        )
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        },
        "addressType": address_type,
        "endpoints": items,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    }


def pod(name, weight=None, cluster=None):
    meta = {"name": name, "namespace": "ns", "labels": {}, "annotations": {}}
    if weight is not None:
        meta["annotations"]["fleetproxy.io/weight"] = str(weight)
    if cluster is not None:
        meta["labels"]["fleetproxy.io/cluster"] = cluster
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta}


class FakeKube:
    def __init__(self, namespace="ns"):
        self.namespace = namespace
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.version = 100
        self.compacted = 0  # watches from an older version get 410
        self.slices = {}
        self.history = []  # (version, event)
        self.pods = {}
        self.watchers = set()  # asyncio.Queue per open watch
        self.requests = []  # (kind, query) of every request: "list", "watch", "pod"
        self.server = None
        self.refusing = False  # "down": every connection is reset (the port stays ours)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(5)

    def _call(self, fn, *args):
        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    # -- what a test does --

    def put_slice(self, obj, silent=False):
        self._call(self._put, obj, silent)

    def delete_slice(self, name):
        self._call(self._delete, name)

    def expire(self, change=None):
        """End every open watch with a 410 ERROR event and compact the history, after applying
        ``change`` (a callable) silently: only a relist shows its effect."""
        self._call(self._expire, change)

    def down(self):
        asyncio.run_coroutine_threadsafe(self._down(), self.loop).result(5)

    def up(self):
        asyncio.run_coroutine_threadsafe(self._up(), self.loop).result(5)

    def count(self, kind):
        return sum(1 for k, _ in self.requests if k == kind)

    def close(self):
        self.down()
        self._call(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    # -- on the server's loop --

    def _emit(self, kind, obj):
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        event = {"type": kind, "object": obj}
        self.history.append((self.version, event))
        for queue in self.watchers:
            queue.put_nowait(event)
        return obj

    def _put(self, obj, silent):
        name = obj["metadata"]["name"]
        if silent:
            self.version += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.version)
            self.slices[name] = obj
        else:
            self.slices[name] = self._emit("MODIFIED" if name in self.slices else "ADDED", obj)

    def _delete(self, name):
        obj = self.slices.pop(name, None)
        if obj is not None:
            self._emit("DELETED", obj)

    def _expire(self, change):
        if change is not None:
            change(self)
        self.version += 1
        self.compacted = self.version
        self.history.clear()
        gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "message": "too old resource version", "reason": "Expired", "code": 410}}
        for queue in self.watchers:
            queue.put_nowait(gone)
            queue.put_nowait(None)

    async def _listen(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _up(self):
        self.refusing = False

    async def _down(self):
        # Reset connections rather than closing the port: another process could take a freed
        # port in the meantime, and the API would not come back where the proxy looks for it.
        self.refusing = True
        for queue in self.watchers:
            queue.put_nowait(False)  # abort: a connection reset, not a clean end

    async def _handle(self, reader, writer):
        if self.refusing:
            writer.transport.abort()
            return
        try:
            line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            target = line.split(b" ")[1].decode()
            parts = urlsplit(target)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            slices_path = f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"
            pods_path = f"/api/v1/namespaces/{self.namespace}/pods/"
            if parts.path == slices_path and query.get("watch") in ("1", "true"):
                self.requests.append(("watch", query))
                await self._watch(writer, query)
            elif parts.path == slices_path:
                self.requests.append(("list", query))
                self._answer(writer, 200, self._list(query))
            elif parts.path.startswith(pods_path):
                self.requests.append(("pod", parts.path))
                found = self.pods.get(parts.path[len(pods_path):])
                self._answer(writer, 200 if found else 404, found or self._status(404, "NotFound"))
            else:
                self._answer(writer, 404, self._status(404, "NotFound"))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _selected(self, query):
        want = query.get("labelSelector", "")
        key, _, value = want.partition("=")
        return [s for s in self.slices.values() if not key or s["metadata"]["labels"].get(key) == value]

    def _list(self, query):
        return {
            "kind": "EndpointSliceList",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": str(self.version)},
            "items": self._selected(query),
        }

    @staticmethod
    def _status(code, reason):
        return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
                "message": reason}

    @staticmethod
    def _answer(writer, status, obj):
        body = orjson.dumps(obj)
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (status, len(body), body))

    async def _watch(self, writer, query):
        since = int(query.get("resourceVersion") or self.version)
        if since < self.compacted:
            self._answer(writer, 410, {**self._status(410, "Expired"), "message": "too old resource version"})
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        queue = asyncio.Queue()
        for version, event in self.history:
            if version > since:
                queue.put_nowait(event)
        if query.get("allowWatchBookmarks") == "true":
            queue.put_nowait({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                                             "metadata": {"resourceVersion": str(self.version)}}})
        self.watchers.add(queue)
        try:
            while True:
                event = await queue.get()
                if event is False:
                    writer.transport.abort()
                    return
                if event is None:
                    break
                line = orjson.dumps(event) + b"\n"
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        finally:
            self.watchers.discard(queue)
