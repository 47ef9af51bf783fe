"""``python -m proxy.tenants hash-key [KEY]``: the ``sha256:<hex>`` a tenant's ``keys:`` holds.

Without KEY, the key is read from the first line of standard input (so it stays out of the
shell's history: ``python -m proxy.tenants hash-key < key.txt``). ``--new`` makes a random key
(32 bytes, URL-safe base64, ``sk-`` prefix) and prints the key, then its hash.
"""

import secrets
import sys

from .identify import hash_key

USAGE = "usage: python -m proxy.tenants hash-key [KEY | --new]   (no KEY: read it from stdin)"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "hash-key" or len(argv) > 2:
        print(USAGE, file=sys.stderr)
        return 2
    if len(argv) == 2 and argv[1] == "--new":
        key = "sk-" + secrets.token_urlsafe(32)
        print(key)
    elif len(argv) == 2:
        key = argv[1]
    else:
        key = sys.stdin.readline().strip()
    if not key:
        print("hash-key: the key is empty", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
