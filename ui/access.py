"""Who may reach `tusou serve`: its API keys, and the address it binds without them.

Without a key the server is for this machine only: it binds 127.0.0.1, and a `--host` that is
not a loopback address is not honoured but named in one warning line. With a key it binds what
`--host` says, and every request but /healthz and the login page needs the key (ui.api.keys).
Light on purpose: a bad key is reported before anything loads.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from retrieval.errors import TusouError

LOOPBACK = "127.0.0.1"
CLIENT_CONCURRENCY = 8
"""API requests one client may have in flight at once, unless `--client-concurrency` says otherwise."""
KEYS_VARIABLE = "TUSOU_API_KEYS"
KEY_CHARACTERS = frozenset(chr(code) for code in range(0x21, 0x7F))
"""Visible ASCII: what an `Authorization` header and a cookie carry unchanged."""


def read_keys(flags: Iterable[str], variable: str) -> tuple[str, ...]:
    """The keys of `--api-key` (each flag one key) and of TUSOU_API_KEYS (comma-separated), each
    once; an empty or unsendable key is the user's mistake."""
    keys = [*flags, *(part.strip() for part in variable.split(",") if part.strip())]
    for key in keys:
        if not key or not set(key) <= KEY_CHARACTERS:
            raise TusouError(f"an API key must be visible ASCII characters without spaces (--api-key, {KEYS_VARIABLE})")
    return tuple(dict.fromkeys(keys))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may name any interface
        return False


def bound_host(host: str, keyed: bool) -> tuple[str, str | None]:
    """The address to bind for `--host`, and the warning to print when it is not the one asked for."""
    if keyed or is_loopback(host):
        return host, None
    return LOOPBACK, (f"tusou: warning: no API key, so serving {LOOPBACK} only, not {host}: "
                      f"give --api-key KEY or {KEYS_VARIABLE} to serve other machines")
