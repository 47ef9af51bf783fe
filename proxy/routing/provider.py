"""Requests as an endpoint wants them: under its base path and, for an external provider, with
its API key and its model name. The one place that rewrites a request for an endpoint.

An endpoint URL's path is where the endpoint's API lives. For a provider it stands for the
client's ``/v1`` (``https://host/openai/v1`` turns ``/v1/chat/completions`` into
``/openai/v1/chat/completions``), because that is how providers publish their base URL; for a
vLLM endpoint it is a plain prefix (``http://gw/team-a`` serves ``/team-a/v1/...``).

Endpoints with no base path and no provider settings have no adapter at all: the data path
tests one attribute and forwards the request as it came.
"""

import logging
import os

import orjson

log = logging.getLogger("fleetproxy.routing")


def join_target(base_path, v1_base, target):
    """The request target on the endpoint. ``v1_base``: ``base_path`` ends in /v1 and stands
    for the client's /v1."""
    if v1_base and (target.startswith(b"/v1/") or target == b"/v1"):
        return base_path[:-3] + target
    return base_path + target


class Adapter:
    __slots__ = ("base_path", "v1_base", "extra", "model")

    def __init__(self, base_path, v1_base=False, api_key=None, model=None):
        self.base_path = base_path
        self.v1_base = v1_base
        # Fields the proxy adds to the upstream head after the client's were filtered.
        self.extra = ((b"authorization", b"Bearer " + api_key.encode()),) if api_key else ()
        self.model = model

    def adapt(self, target, headers, body):
        """Target, headers and body for the endpoint. With an API key, the client's own
        Authorization is dropped (``extra`` carries ours); with a model name, the body's model
        is renamed."""
        target = join_target(self.base_path, self.v1_base, target)
        if self.extra:
            headers = [h for h in headers if h[0] != b"authorization"]
        if self.model is not None and body:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict) and "model" in doc:
                doc["model"] = self.model
                body = orjson.dumps(doc)
        return target, headers, body


def adapter_for(spec, provider):
    """The Adapter an endpoint's requests need, or None when they go as they came."""
    base_path = spec.base_path.encode()
    if not provider:
        return Adapter(base_path) if base_path else None
    api_key = None
    if spec.api_key_env:
        api_key = os.environ.get(spec.api_key_env, "")
        if not api_key:
            log.warning("provider %s: environment variable %s is empty; no API key sent", spec.label, spec.api_key_env)
            api_key = None
    if not base_path and api_key is None and not spec.model:
        return None
    return Adapter(base_path, base_path.endswith(b"/v1"), api_key, spec.model or None)
