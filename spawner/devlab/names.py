"""Host names of a lab's domain, resolved to loopback in this process (the browser gets the same mapping from
Chromium's --host-resolver-rules), so tests and benchmarks reach a lab the way production is reached: by
name, over HTTPS, one host per user's servers. Only names under that domain are mapped; everything else
resolves as usual."""

from __future__ import annotations

import socket
from contextlib import contextmanager

LOOPBACK = "127.0.0.1"


@contextmanager
def names_on_loopback(domain: str, address: str = LOOPBACK):
    """``domain`` and every name under it resolve to ``address`` (loopback, or a container the test made)."""
    real = socket.getaddrinfo

    def resolve(host, port, *args, **kwargs):
        if isinstance(host, str) and (host == domain or host.endswith("." + domain)):
            host = address
        return real(host, port, *args, **kwargs)

    socket.getaddrinfo = resolve
    try:
        yield
    finally:
        socket.getaddrinfo = real


def chromium_resolver_rules(domain: str, address: str = LOOPBACK) -> str:
    return f"--host-resolver-rules=MAP {domain} {address}, MAP *.{domain} {address}"
