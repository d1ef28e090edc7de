"""The lab's mirror proxy and the networks of confined builds, on the engine.

* ``<prefix>-builds``: an internal network (no route off the host's bridge): course builds' ``RUN`` steps.
* ``<prefix>-builds-egress``: an ordinary bridge network, the proxy's way out.
* ``<prefix>-mirror-proxy``: tinyproxy (Debian's package on the platform's offline root filesystem) on both,
  forwarding only to the allow-listed mirror hosts; read-only root, no capabilities, its own user.

``MirrorProxy.ensure()`` makes what is missing (and replaces a proxy whose allow-list changed) and returns
the ``BuildConfinement`` for ``ImageBuilder``. Everything carries the label ``Labels.BUILD_PROXY=<lab>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import docker
import docker.errors
import jinja2

from ..core.contract import REPO_ROOT, Labels
from ..core.hardening import Hardening
from ..engine.build import build_image, tar_context
from .build import ImageBuilder
from .confinement import (
    PROXY_CONFIG,
    PROXY_FILTER,
    PROXY_PORT,
    BuildConfinement,
    BuildLimits,
    mirror_hosts,
    proxy_config,
    proxy_filter,
)

DOCKERFILE_TEMPLATE = REPO_ROOT / "images" / "mirror-proxy" / "Dockerfile.j2"
ROOTFS_FLAVOR = "debian-py39"  # the offline flavor: its debootstrap root filesystem needs no registry
PROXY_HARDENING = Hardening(pids_limit=64)  # no capabilities, no new privileges, read-only root, rotated logs


def pip_default_index_hosts() -> tuple[str, ...]:
    """pip's own default index and the host it serves files from (used when the site names no mirror)."""
    from pip._internal.models.index import PyPI

    return (PyPI.netloc, PyPI.file_storage_domain)


class MirrorProxy:
    """One lab's mirror proxy; ``lab`` labels its objects, ``name_prefix`` names them."""

    def __init__(
        self,
        builder: ImageBuilder,
        *,
        lab: str,
        name_prefix: str,
        labels: Mapping[str, str] | None = None,
        egress_network: str | None = None,
    ):
        self.builder = builder
        self.client: docker.DockerClient = builder.client
        self.settings = builder.settings
        self.lab = lab
        self.internal_network = f"{name_prefix}-builds"
        self.egress_network = egress_network or f"{name_prefix}-builds-egress"
        self.container_name = f"{name_prefix}-mirror-proxy"
        self.labels = {**(labels or {}), Labels.BUILD_PROXY: lab}

    def allowed_hosts(self) -> tuple[str, ...]:
        settings = self.settings
        return mirror_hosts(
            index_url=settings.pip_index_url,
            extra_index_urls=settings.pip_extra_index_urls,
            conda_channels=settings.conda_channels,
            conda_channel_alias=settings.conda_channel_alias,
            extra_hosts=settings.build_allowed_hosts,
            default_index_hosts=pip_default_index_hosts(),
        )

    def limits(self) -> BuildLimits:
        return BuildLimits(
            memory_bytes=self.settings.build_memory_bytes,
            cpu_shares=self.settings.build_cpu_shares,
            seconds=self.settings.build_time_limit_seconds,
        )

    def _network(self, name: str, *, internal: bool) -> docker.models.networks.Network:
        try:
            network = self.client.networks.get(name)
        except docker.errors.NotFound:
            network = self.client.networks.create(name, driver="bridge", internal=internal, labels=self.labels)
        network.reload()
        if bool(network.attrs.get("Internal")) != internal:
            kind = "internal" if internal else "ordinary"
            raise docker.errors.APIError(f"docker network {name} is not {kind}; remove it (docker network rm {name})")
        return network

    def _image(self, subnet: str, hosts: tuple[str, ...]) -> str:
        flavor = self.builder.flavor(ROOTFS_FLAVOR)
        rootfs = self.builder.ensure_rootfs(flavor)
        dockerfile = jinja2.Template(DOCKERFILE_TEMPLATE.read_text(), keep_trailing_newline=True).render(
            rootfs_image=rootfs, suite=flavor.rootfs_suite, config=PROXY_CONFIG, filter=PROXY_FILTER, port=PROXY_PORT
        )
        files = {"Dockerfile": dockerfile, "tinyproxy.conf": proxy_config(subnet), "allowed-hosts": proxy_filter(hosts)}
        rootfs_id = self.client.images.get(rootfs).id
        digest = hashlib.sha256("\0".join([rootfs_id, *(files[name] for name in sorted(files))]).encode()).hexdigest()[:12]
        reference = f"{self.settings.image_namespace}/mirror-proxy:{digest}"
        try:
            self.client.images.get(reference)
        except docker.errors.ImageNotFound:
            with self.builder.progress.step(f"build the mirror proxy image {reference}") as step:
                build_image(
                    self.client,
                    context=tar_context(files),
                    tag=reference,
                    labels={**self.labels, Labels.image("allowed-hosts"): " ".join(hosts)},
                    log_path=self.settings.log_dir / f"mirror-proxy-{digest}.log",
                    on_line=step.detail,
                )
        return reference

    def ensure(self) -> BuildConfinement:
        """The proxy running with today's allow-list, on both networks; the confinement builds use."""
        internal = self._network(self.internal_network, internal=True)
        egress = self._network(self.egress_network, internal=False)
        subnet = internal.attrs["IPAM"]["Config"][0]["Subnet"]
        image = self._image(subnet, self.allowed_hosts())
        container = self._container(image, egress)
        address = container.attrs["NetworkSettings"]["Networks"][self.internal_network]["IPAddress"]
        return BuildConfinement(network=self.internal_network, proxy_url=f"http://{address}:{PROXY_PORT}", limits=self.limits())

    def _container(self, image: str, egress: docker.models.networks.Network) -> docker.models.containers.Container:
        image_id = self.client.images.get(image).id
        try:
            container = self.client.containers.get(self.container_name)
            if container.image.id == image_id and container.status == "running":
                return container
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        container = self.client.containers.create(
            image,
            name=self.container_name,
            labels=self.labels,
            network=egress.name,
            mem_limit="256m",
            restart_policy={"Name": "unless-stopped"},
            **PROXY_HARDENING.docker_py_kwargs(),
        )
        self.client.networks.get(self.internal_network).connect(container)
        container.start()
        container.reload()
        return container

    def remove(self) -> None:
        remove_mirror_proxy(self.client, self.lab)

    def log_tail(self, lines: int = 20) -> list[str]:
        """The proxy's newest log lines (requests forwarded and refused), for a failed build's report."""
        try:
            output = self.client.containers.get(self.container_name).logs(tail=lines)
        except docker.errors.NotFound:
            return []
        return output.decode("utf-8", "replace").splitlines()


def remove_mirror_proxy(client: docker.DockerClient, lab: str) -> None:
    """Take a lab's mirror proxy and both networks of its confined builds away (the lab is going down)."""
    for container in client.containers.list(all=True, filters={"label": f"{Labels.BUILD_PROXY}={lab}"}):
        container.remove(force=True)
    for network in client.networks.list(filters={"label": f"{Labels.BUILD_PROXY}={lab}"}):
        network.remove()
