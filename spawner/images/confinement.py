"""Confined course builds: what an instructor's environment build may reach and use (pure).

An instructor's environment.yml runs code at build time (a package's setup script), so the service that
builds it gives the build only what it needs: the package mirrors, nothing else. The build's ``RUN`` steps
run on an internal Docker network whose one way out is the lab's mirror proxy (tinyproxy, from Debian's
packages), which forwards only to the allow-listed mirror hosts; memory, CPU share and time are limited;
the only secret in the build is the mirror's own (a read-only credential in its index URL, if the site
uses one). ``spawner.images.mirror_proxy`` runs the proxy and its networks; this module says what they
are: the allow-list, the proxy's configuration and the build's arguments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from ..core.problems import TeachlabError

PROXY_PORT = 8888
PROXY_CONFIG = "/etc/teachlab-proxy/tinyproxy.conf"
PROXY_FILTER = "/etc/teachlab-proxy/allowed-hosts"
# Docker's predefined build arguments: set for RUN steps, kept out of the image's history and of the
# build cache's keys, so a confined build reuses the layers of an unconfined one.
PROXY_BUILD_ARGUMENTS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


@dataclass(frozen=True)
class BuildLimits:
    """What one confined build may use: memory (swap included), a CPU share against other containers, time."""

    memory_bytes: int
    cpu_shares: int
    seconds: int

    def container_limits(self) -> dict[str, int]:
        """docker-py's ``container_limits`` of a build (applied to every ``RUN`` step's container)."""
        return {"memory": self.memory_bytes, "memswap": self.memory_bytes, "cpushares": self.cpu_shares}


@dataclass(frozen=True)
class BuildConfinement:
    """Where a confined build runs: the internal network, the proxy on it, and the limits."""

    network: str
    proxy_url: str
    limits: BuildLimits

    def build_arguments(self) -> dict[str, str]:
        return dict.fromkeys(PROXY_BUILD_ARGUMENTS, self.proxy_url)


def url_host(url: str) -> str | None:
    """The host of an http(s) URL (credentials and port dropped), lowercase; None for other URLs."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return None
    return parsed.hostname.lower()


def mirror_hosts(
    *,
    index_url: str | None,
    extra_index_urls: Sequence[str],
    conda_channels: Sequence[str],
    conda_channel_alias: str | None,
    extra_hosts: Iterable[str],
    default_index_hosts: Sequence[str],
) -> tuple[str, ...]:
    """The hosts a confined build may reach: the hosts of the configured mirrors (pip's default index and
    its file host when no index is configured), plus the site's extra hosts (a mirror that serves its files
    from another host). Raises TeachlabError naming a host that is not a plain host name."""
    hosts = [] if index_url else list(default_index_hosts)
    for url in (index_url, *extra_index_urls, conda_channel_alias, *conda_channels):
        host = url_host(url) if url else None
        if host:
            hosts.append(host)
    for host in extra_hosts:
        hosts.append(host.strip().lower())
    unique = tuple(dict.fromkeys(host for host in hosts if host))
    for host in unique:
        if not _HOST.match(host):
            raise TeachlabError(
                f"TEACHLAB_BUILD_ALLOWED_HOSTS: {host!r} is not a host name (write names like mirror.example.edu, "
                "separated by spaces)"
            )
    if not unique:
        raise TeachlabError("confined builds have no mirror to reach: set TEACHLAB_PIP_INDEX_URL or TEACHLAB_BUILD_ALLOWED_HOSTS")
    return unique


def proxy_filter(hosts: Sequence[str]) -> str:
    """tinyproxy's allow-list: one anchored extended regular expression per host (exact names only)."""
    return "".join(f"^{re.escape(host)}$\n" for host in hosts)


def proxy_config(allowed_subnet: str) -> str:
    """tinyproxy's configuration: only the builds' subnet may use it, only allow-listed hosts are reached,
    tunnels (HTTPS) only to port 443; every request is logged with its verdict."""
    return "\n".join(
        [
            f"Port {PROXY_PORT}",
            "Timeout 600",
            "MaxClients 32",
            "LogLevel Connect",
            f"Allow {allowed_subnet}",
            "ConnectPort 443",
            "FilterDefaultDeny Yes",
            f'Filter "{PROXY_FILTER}"',
            "FilterType ere",
            "FilterURLs Off",
            "DisableViaHeader Yes",
            "XTinyproxy No",
            "",
        ]
    )
