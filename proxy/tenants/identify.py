"""Who is calling: the API key from the request head, hashed, looked up. Sans-IO.

The key is read from ``Authorization: Bearer <key>`` (what the OpenAI SDKs send), else from
``api-key`` (Azure OpenAI's SDKs) or ``x-api-key`` (Anthropic-style clients, many gateways).
A request carrying more than one of them, with different keys, is refused: which one counts
would otherwise be the proxy's guess.

Constant time. Keys are stored as their SHA-256, and the presented key is hashed and looked up
by that digest. A lookup's timing depends only on the digest of what the caller sent; learning
anything about a stored digest from it would need a caller able to choose keys whose SHA-256
shares a prefix with a stored one (a preimage search), and the stored digest is not the key
anyway. The entry found is still confirmed with ``hmac.compare_digest``, so no comparison of
secret bytes anywhere exits early.
"""

import hashlib
import hmac

KEY_HEADERS = (b"authorization", b"api-key", b"x-api-key")
_BEARER = b"bearer "

NO_KEY = None
BAD = False  # a key header that names no key (empty, not Bearer, two different keys)


def hash_key(key):
    """The config form of a key: ``sha256:<hex>`` of its UTF-8 bytes (what ``keys:`` holds)."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    return "sha256:" + hashlib.sha256(key).hexdigest()


def presented_key(headers):
    """The key a request carries (bytes), NO_KEY when it carries none, or BAD."""
    found = None
    for name, value in headers:
        if name not in KEY_HEADERS:
            continue
        if name == b"authorization":
            if value[:7].lower() != _BEARER:
                return BAD  # Basic or another scheme: not an API key we know how to read
            value = value[7:]
        value = value.strip()
        if not value or (found is not None and value != found):
            return BAD
        found = value
    return found


def strip_keys(headers):
    """``headers`` without the fields that carry API keys: a tenant's key stays at the proxy."""
    return [h for h in headers if h[0] not in KEY_HEADERS]


class KeyIndex:
    """SHA-256 digests of every tenant's keys -> the tenant (whatever object the caller keeps)."""

    __slots__ = ("by_digest",)

    def __init__(self, pairs):
        """``pairs``: (config key ``sha256:<hex>``, tenant)."""
        self.by_digest = {}
        for key, tenant in pairs:
            stored = bytes.fromhex(key[7:])
            self.by_digest[stored] = (stored, tenant)

    def lookup(self, key):
        """The tenant holding ``key`` (bytes), or None."""
        digest = hashlib.sha256(key).digest()
        entry = self.by_digest.get(digest)
        if entry is None or not hmac.compare_digest(entry[0], digest):
            return None
        return entry[1]
