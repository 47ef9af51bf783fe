"""Requests as an endpoint wants them: under its base path and, for an external provider, with
its API key and its model name. The one place that rewrites a request for an endpoint, and the
one place that decides what may go to an external provider at all.

An endpoint URL's path is where the endpoint's API lives. For a provider it stands for the
client's ``/v1`` (``https://host/openai/v1`` turns ``/v1/chat/completions`` into
``/openai/v1/chat/completions``), because that is how providers publish their base URL; for a
vLLM endpoint it is a plain prefix (``http://gw/team-a`` serves ``/team-a/v1/...``).

Endpoints with no base path and no provider settings have no adapter at all: the data path
tests one attribute and forwards the request as it came. Every provider has one.

Why a provider is fenced. A vLLM endpoint is ours: every path is forwarded to it. A provider
is someone else's API reached with *our* key, so whatever reaches it is done in our name and
billed to us. Three rules keep the proxy from lending that key to every client:

- Only inference goes there: an allow-list of method + path (``PROVIDER_ROUTES``, and
  ``GET /v1/models/ID``). Files, fine-tuning, batches, assistants, the organization's admin
  API, ... are refused with a 403 before anything is sent, so a client cannot read or delete
  what the key can reach.
- The target must be plain origin-form: no absolute-form (``http://other/...``), no
  dot-segments (``/v1/chat/../files``), literal or percent-encoded, no encoded slashes or
  backslashes. A provider's front end may normalize a path the allow-list did not see; the
  proxy refuses what it would have to normalize (400).
- The client's credentials never reach it (``CLIENT_CREDENTIALS``: they would leak the
  client's own secrets to a third party, or let the client choose the organization or project
  our key bills), and only the configured key is sent (``extra``, added after the client's
  fields were filtered, so no client Connection option can remove it).
"""

import logging
import os

import orjson

from ..http.errors import ClientError

log = logging.getLogger("fleetproxy.routing")

# Header fields (lower-cased) that carry a client's identity or secrets: never sent to a provider.
CLIENT_CREDENTIALS = frozenset(
    (b"authorization", b"api-key", b"x-api-key", b"cookie", b"openai-organization", b"openai-project")
)
# What a provider is used for: inference and the model list. Paths as the client sends them.
PROVIDER_ROUTES = frozenset(
    (
        (b"POST", b"/v1/chat/completions"),
        (b"POST", b"/v1/completions"),
        (b"POST", b"/v1/responses"),
        (b"POST", b"/v1/embeddings"),
        (b"GET", b"/v1/models"),
    )
)
_PATHS = frozenset(p for _, p in PROVIDER_ROUTES)
MODEL_PREFIX = b"/v1/models/"  # GET /v1/models/ID: one model (IDs like org/name take segments)
ALLOWED_TEXT = ", ".join(
    [f"{m.decode()} {p.decode()}" for m, p in sorted(PROVIDER_ROUTES)] + ["GET /v1/models/ID"]
)
# Percent-encodings of '.', '/' and '\': a target that needs them is refused, never decoded.
_ENCODED = (b"%2e", b"%2f", b"%5c")


def _shown(target):
    text = target[:200].decode("ascii", errors="replace")
    return text + ("..." if len(target) > 200 else "")


def provider_refusal(method, target, provider="the provider"):
    """The ClientError to answer instead of forwarding ``method`` ``target`` (bytes, as the
    client sent them) to an external provider, or None when it may go. ``method`` None: not
    known to the caller; the path must then be on the allow-list for some method.

    400 for a target the proxy would have to normalize (not origin-form, dot-segments, encoded
    dots or slashes, backslashes, a fragment); 403 for a route not on the allow-list. Sans-IO:
    call it before a connection to the provider is taken (see ``Adapter.refusal``).
    """
    if not target.startswith(b"/") or target.startswith(b"//"):
        return ClientError(
            f"only origin-form targets (/v1/...) are forwarded to {provider}, not {_shown(target)!r}",
            status=400,
        )
    path, _, _query = target.partition(b"?")
    lowered = target.lower()
    if b"\\" in target or b"#" in target or any(code in lowered for code in _ENCODED):
        return ClientError(
            f"the target {_shown(target)!r} is not forwarded to {provider}: "
            "encoded dots or slashes, backslashes and fragments are refused",
            status=400,
        )
    segments = path.split(b"/")[1:]
    if any(s in (b".", b"..") for s in segments):
        return ClientError(
            f"the target {_shown(target)!r} is not forwarded to {provider}: it has dot-segments", status=400
        )
    if method is None:  # the method unknown: the path must be allowed for some method
        if path in _PATHS:
            return None
    elif (method, path) in PROVIDER_ROUTES:
        return None
    if method in (b"GET", None) and path.startswith(MODEL_PREFIX) and len(path) > len(MODEL_PREFIX):
        if all(segments[2:]):  # GET /v1/models/ID, no empty segment
            return None
    shown_method = "" if method is None else method.decode("ascii", errors="replace") + " "
    return ClientError(
        f"{shown_method}{_shown(path)} is not forwarded to {provider} "
        f"(an external provider takes only {ALLOWED_TEXT})",
        status=403,
        type="permission_error",
    )


def join_target(base_path, v1_base, target):
    """The request target on the endpoint. ``v1_base``: ``base_path`` ends in /v1 and stands
    for the client's /v1."""
    if v1_base and (target.startswith(b"/v1/") or target == b"/v1"):
        return base_path[:-3] + target
    return base_path + target


class Adapter:
    __slots__ = ("base_path", "v1_base", "extra", "model", "provider")

    def __init__(self, base_path, v1_base=False, api_key=None, model=None, provider=None):
        self.base_path = base_path
        self.v1_base = v1_base
        # Fields the proxy adds to the upstream head after the client's were filtered.
        self.extra = ((b"authorization", b"Bearer " + api_key.encode()),) if api_key else ()
        self.model = model
        self.provider = provider  # the provider's name, None for a vLLM endpoint

    def refusal(self, method, target):
        """The ClientError to answer instead of sending this request here, or None. Only a
        provider refuses anything; meant to be asked before a connection is taken."""
        if self.provider is None:
            return None
        return provider_refusal(method, target, f"external provider {self.provider}")

    def adapt(self, target, headers, body, method=None):
        """Target, headers and body for the endpoint. With a model name, the body's model is
        renamed. For a provider, the client's credentials are dropped (``extra`` carries our
        key, if one is configured), and a request ``refusal`` names is raised as its
        ClientError, never sent: the last line of defence, since the caller should have asked
        ``refusal`` before taking a connection (without ``method``, only the path is judged)."""
        if self.provider is not None:
            refused = provider_refusal(method, target, f"external provider {self.provider}")
            if refused is not None:
                raise refused
            headers = [h for h in headers if h[0] not in CLIENT_CREDENTIALS]
        target = join_target(self.base_path, self.v1_base, target)
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
    """The Adapter an endpoint's requests need, or None when they go as they came (a vLLM
    endpoint without a base path). Every provider gets one: its fence applies even without a
    key, a base path or a model name."""
    base_path = spec.base_path.encode()
    if not provider:
        return Adapter(base_path) if base_path else None
    # Config load refused an api_key_env naming an empty or missing variable (ProviderConfig).
    api_key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
    return Adapter(base_path, base_path.endswith(b"/v1"), api_key or None, spec.model or None, spec.label)
