"""Where Teachlab keeps its state, and the package mirrors and trust its image builds use.

Nothing here is read at import time. ``BuildSettings.from_environment()`` is called by the CLI when a
command runs; mirrors and the extra CA bundle come from ``TEACHLAB_*`` variables first and otherwise
from this host's own pip settings, so the repository never names a package registry.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..core.contract import REPO_ROOT, STATE_DIR_VARIABLE, StateLayout, default_state_dir
from ..core.naming import is_registry_address
from ..core.problems import TeachlabError
from ..core.units import parse_memory

REGISTRY_VARIABLES = {"registry_address": "TEACHLAB_REGISTRY", "registry_push_address": "TEACHLAB_REGISTRY_PUSH_ADDRESS"}


def _host_pip_config(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``[global]`` settings of this host's pip configuration files, later files winning."""
    parser = configparser.ConfigParser(interpolation=None)
    candidates = [
        Path("/etc/pip.conf"),
        Path("/etc/xdg/pip/pip.conf"),
        Path.home() / ".pip" / "pip.conf",
        Path.home() / ".config" / "pip" / "pip.conf",
    ]
    if environ.get("PIP_CONFIG_FILE"):
        candidates.append(Path(environ["PIP_CONFIG_FILE"]))
    parser.read([str(path) for path in candidates if path.is_file()])
    merged: dict[str, str] = {}
    for section in ("global", "install"):
        if parser.has_section(section):
            merged.update(parser.items(section))
    return merged


def _network_urls(text: str) -> tuple[str, ...]:
    """Keep only http(s) URLs: a ``file://`` index on the host is not reachable inside a build."""
    return tuple(url for url in text.split() if url.startswith(("http://", "https://")))


@dataclass(frozen=True)
class BuildSettings:
    """Settings of image builds and of the version registry shared by the CLI and the hub."""

    state_dir: Path
    images_dir: Path = REPO_ROOT / "images"
    constraints_file: Path = REPO_ROOT / "constraints.txt"
    image_namespace: str = "teachlab"
    pip_index_url: str | None = None
    pip_extra_index_urls: tuple[str, ...] = ()
    ca_bundle: Path | None = None
    conda_channels: tuple[str, ...] = ()
    conda_channel_alias: str | None = None
    miniconda_mirror: str | None = None
    debian_mirror: str | None = None
    advisory_db: Path | None = None
    trivy_cache_dir: Path | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    # Confined builds (the teachlab-courses service's builds of instructors' environments):
    build_allowed_hosts: tuple[str, ...] = ()
    build_memory_bytes: int = 4 * 2**30
    build_cpu_shares: int = 512
    build_time_limit_seconds: int = 1800
    # The stack's registry (issue 14, docs/scale-out.md): published versions are pushed there and recorded by digest.
    # None: no registry, the image stays on this engine (a single server).
    registry_address: str | None = None  # host:port as the swarm's nodes reach it; it names the recorded images
    registry_push_address: str | None = None  # host:port as this engine reaches the same registry; None: the same

    def __post_init__(self) -> None:
        for name in ("registry_address", "registry_push_address"):
            value = getattr(self, name)
            if value is not None and not is_registry_address(value):
                raise TeachlabError(
                    f"{name.replace('_', ' ')} {value!r} is not host:port (e.g. 10.0.0.2:5000): set "
                    f"{REGISTRY_VARIABLES[name]} to the registry's address and port, without https:// or a path"
                )
        if self.registry_push_address is not None and self.registry_address is None:
            raise TeachlabError(
                f"{REGISTRY_VARIABLES['registry_push_address']} is set without {REGISTRY_VARIABLES['registry_address']}: "
                "set the registry's address as the nodes reach it too"
            )

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.state_dir)

    @property
    def registry_dir(self) -> Path:
        return self.layout.courses

    @property
    def log_dir(self) -> Path:
        return self.layout.logs

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides) -> BuildSettings:
        """Read ``TEACHLAB_*`` variables, falling back to the host's pip settings for mirrors and trust.

        TEACHLAB_STATE_DIR, TEACHLAB_IMAGE_NAMESPACE, TEACHLAB_PIP_INDEX_URL,
        TEACHLAB_PIP_EXTRA_INDEX_URLS (space separated), TEACHLAB_CA_BUNDLE,
        TEACHLAB_CONDA_CHANNELS (space separated), TEACHLAB_CONDA_CHANNEL_ALIAS, TEACHLAB_MINICONDA_MIRROR,
        TEACHLAB_DEBIAN_MIRROR (for debootstrap; its default mirror when unset),
        TEACHLAB_ADVISORY_DB (folder of OSV advisory records; unset: images are "not scanned"),
        TEACHLAB_TRIVY_CACHE_DIR (Trivy's cache folder holding db/trivy.db; unset: Debian packages are "not scanned"),
        TEACHLAB_BUILD_ALLOWED_HOSTS (space separated: hosts a confined build may reach beside the mirrors' own),
        TEACHLAB_BUILD_MEMORY (bytes, or e.g. 4G), TEACHLAB_BUILD_CPU_SHARES, TEACHLAB_BUILD_TIME_LIMIT (seconds),
        TEACHLAB_REGISTRY (host:port of the stack's registry as the nodes reach it; unset: no push),
        TEACHLAB_REGISTRY_PUSH_ADDRESS (host:port of the same registry as this engine reaches it, e.g. 127.0.0.1:5000).
        """
        env = os.environ if environ is None else environ
        pip = _host_pip_config(env)
        index_url = env.get("TEACHLAB_PIP_INDEX_URL") or env.get("PIP_INDEX_URL") or pip.get("index-url")
        extra = env.get("TEACHLAB_PIP_EXTRA_INDEX_URLS") or env.get("PIP_EXTRA_INDEX_URL") or pip.get("extra-index-url", "")
        ca_text = env.get("TEACHLAB_CA_BUNDLE") or env.get("PIP_CERT") or pip.get("cert") or env.get("REQUESTS_CA_BUNDLE")
        ca_bundle = Path(ca_text) if ca_text and Path(ca_text).is_file() else None
        values = dict(
            state_dir=default_state_dir(env),
            image_namespace=env.get("TEACHLAB_IMAGE_NAMESPACE", "teachlab"),
            pip_index_url=index_url if index_url and _network_urls(index_url) else None,
            pip_extra_index_urls=_network_urls(extra),
            ca_bundle=ca_bundle,
            conda_channels=tuple(env.get("TEACHLAB_CONDA_CHANNELS", "").split()),
            conda_channel_alias=env.get("TEACHLAB_CONDA_CHANNEL_ALIAS") or None,
            miniconda_mirror=env.get("TEACHLAB_MINICONDA_MIRROR") or None,
            debian_mirror=env.get("TEACHLAB_DEBIAN_MIRROR") or None,
            advisory_db=Path(env["TEACHLAB_ADVISORY_DB"]) if env.get("TEACHLAB_ADVISORY_DB") else None,
            trivy_cache_dir=Path(env["TEACHLAB_TRIVY_CACHE_DIR"]) if env.get("TEACHLAB_TRIVY_CACHE_DIR") else None,
            build_allowed_hosts=tuple(env.get("TEACHLAB_BUILD_ALLOWED_HOSTS", "").split()),
            **{name: env.get(variable) or None for name, variable in REGISTRY_VARIABLES.items()},
        )
        if env.get("TEACHLAB_BUILD_MEMORY"):
            memory = env["TEACHLAB_BUILD_MEMORY"]
            values["build_memory_bytes"] = int(memory) if memory.isdigit() else parse_memory(memory)
        if env.get("TEACHLAB_BUILD_CPU_SHARES"):
            values["build_cpu_shares"] = int(env["TEACHLAB_BUILD_CPU_SHARES"])
        if env.get("TEACHLAB_BUILD_TIME_LIMIT"):
            values["build_time_limit_seconds"] = int(env["TEACHLAB_BUILD_TIME_LIMIT"])
        values.update(overrides)
        return cls(**values)


# Every variable ``BuildSettings.from_environment`` reads (besides the host's pip files): the hub hands them
# to the teachlab-courses service, whose builds must use the same mirrors, trust and image namespace.
BUILD_VARIABLES = (
    STATE_DIR_VARIABLE,
    "TEACHLAB_IMAGE_NAMESPACE",
    "TEACHLAB_PIP_INDEX_URL",
    "TEACHLAB_PIP_EXTRA_INDEX_URLS",
    "TEACHLAB_CA_BUNDLE",
    "TEACHLAB_CONDA_CHANNELS",
    "TEACHLAB_CONDA_CHANNEL_ALIAS",
    "TEACHLAB_MINICONDA_MIRROR",
    "TEACHLAB_DEBIAN_MIRROR",
    "TEACHLAB_ADVISORY_DB",
    "TEACHLAB_TRIVY_CACHE_DIR",
    "TEACHLAB_BUILD_ALLOWED_HOSTS",
    "TEACHLAB_BUILD_MEMORY",
    "TEACHLAB_BUILD_CPU_SHARES",
    "TEACHLAB_BUILD_TIME_LIMIT",
    *REGISTRY_VARIABLES.values(),
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_CERT",
    "PIP_CONFIG_FILE",
    "REQUESTS_CA_BUNDLE",
)
