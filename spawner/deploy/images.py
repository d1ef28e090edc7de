"""The stack's four images, and the registry's, built on this engine from the platform's offline root filesystem.

Each image starts from the root filesystem ``teachlab image build-base`` makes (debootstrap + ``docker
import``; no registry is ever asked) and adds Debian's packages (PostgreSQL, nginx, configurable-http-proxy,
docker-registry) or this repository's hub. The registry (docs/scale-out.md, "Images on every node") is one of
the stack's images only on a swarm (``with_registry``: the site file's ``swarm`` section). An image's tag is the
digest of its build context and root filesystem, so
``teachlab deploy up`` knows which tags the current source needs, an unchanged image is never rebuilt, and
a changed hub gets a new tag that ``teachlab deploy upgrade`` rolls the hub service to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import docker
import docker.errors
import jinja2
import tomllib

from ..core.contract import REPO_ROOT, Labels
from ..core.problems import TeachlabError
from ..core.progress import Progress
from ..engine.build import build_image, tar_context
from ..images.build import ImageBuilder
from ..images.plan import BUILD_DIR, environment_hash, render_settings_files
from ..images.settings import BuildSettings
from .stack import HUB_CONFIG, HUB_VENV, NGINX_CONFIG, STACK_DIR, StackImages

ROOTFS_FLAVOR = "debian-py39"  # the platform's bookworm root filesystem: every image here shares its layer
BASE = "stack-base"  # the root filesystem with its suite's updates: every stack image's first layers
STACK_IMAGE_NAMES = ("hub", "proxy", "postgres", "nginx")
REGISTRY = "registry"  # Debian's docker-registry, for a swarm's course images (TLS and storage given at run time)
PACKAGES = {
    BASE: (),
    "hub": ("iptables", "e2fsprogs"),  # the node agent's iptables and mkfs.ext4
    "proxy": ("node-configurable-http-proxy",),
    "postgres": ("postgresql",),
    "nginx": ("nginx",),
    REGISTRY: ("docker-registry",),
}
TEMPLATE_FOLDER = {BASE: "base"}
HUB_SOURCES = ("pyproject.toml", "constraints.txt", "jupyterhub_config.py")


def _hub_application(source: Path) -> dict[str, bytes]:
    """The files ``pip install`` needs to install the spawner package, and the hub's configuration; under
    ``deps/`` the package's dependencies alone (their layer is reused while they stay the same)."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    files = {
        "deps/requirements.txt": "".join(f"{requirement}\n" for requirement in project["dependencies"]).encode(),
        "deps/constraints.txt": (source / "constraints.txt").read_bytes(),
    }
    files |= {f"app/{name}": (source / name).read_bytes() for name in HUB_SOURCES}
    # pyproject.toml names a readme; the image needs none of the repository's prose (which would rebuild it).
    files["app/README.md"] = b"Teachlab: the hub image's copy of the spawner package.\n"
    for path in sorted((source / "spawner").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[f"app/{path.relative_to(source)}"] = path.read_bytes()
    return files


def _extra_files(name: str) -> dict[str, bytes]:
    folder = STACK_DIR / TEMPLATE_FOLDER.get(name, name)
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file() and not path.name.endswith(".j2")}


def build_context(
    name: str, rootfs: str, base: str, settings_files: dict[str, str | bytes], source: Path = REPO_ROOT
) -> dict[str, bytes]:
    """The whole build context of one stack image (byte-identical for identical inputs); ``source`` is the
    release whose spawner package the hub image installs."""
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(STACK_DIR / TEMPLATE_FOLDER.get(name, name)), str(STACK_DIR / "base")]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    dockerfile = templates.get_template("Dockerfile.j2").render(
        rootfs=rootfs,
        base=base,
        packages=PACKAGES[name],
        venv=HUB_VENV,
        config=HUB_CONFIG,
        workdir=str(Path(HUB_CONFIG).parent),
        nginx_config=NGINX_CONFIG,
    )
    files: dict[str, str | bytes] = {"Dockerfile": dockerfile, **_extra_files(name)}
    if name == "hub":
        files.update(_hub_application(source))
        files.update({key: value for key, value in settings_files.items() if key.startswith(BUILD_DIR)})
    return {key: value.encode() if isinstance(value, str) else value for key, value in files.items()}


@dataclass(frozen=True)
class PlannedImage:
    name: str
    reference: str
    context: dict[str, bytes]
    recipe_hash: str


class StackImageBuilder:
    """Plans and builds the stack's images with the platform's image settings (namespace, mirrors, CA), the hub
    from the release at ``source`` (this checkout unless told)."""

    def __init__(
        self,
        settings: BuildSettings,
        client: docker.DockerClient,
        progress: Progress | None = None,
        source: Path = REPO_ROOT,
        *,
        with_registry: bool = False,
    ):
        self.settings = settings
        self.names = (*STACK_IMAGE_NAMES, REGISTRY) if with_registry else STACK_IMAGE_NAMES
        self.source = source
        self.client = client
        self.progress = progress or Progress(quiet=True)
        self.builder = ImageBuilder(settings, self.progress, client)

    def rootfs(self, *, build: bool) -> str:
        flavor = self.builder.flavor(ROOTFS_FLAVOR)
        reference = flavor.rootfs_image(self.settings.image_namespace)
        if build:
            return self.builder.ensure_rootfs(flavor)
        if self._image_id(reference) is None:
            raise TeachlabError(f"the root filesystem image {reference} is missing: run teachlab deploy build")
        return reference

    def _image_id(self, reference: str) -> str | None:
        try:
            return self.client.images.get(reference).id
        except docker.errors.ImageNotFound:
            return None

    def plan(self, *, build_rootfs: bool = False, names: Sequence[str] | None = None) -> list[PlannedImage]:
        """The base first (each image's recipe includes it), then the images ``names`` (the stack's)."""
        names = self.names if names is None else names
        rootfs = self.rootfs(build=build_rootfs)
        settings_files = render_settings_files(self.builder.flavor(ROOTFS_FLAVOR), self.builder.pip_settings())
        base_context = build_context(BASE, rootfs, "", settings_files)
        base_recipe = environment_hash(base_context, self._image_id(rootfs) or rootfs)
        base = PlannedImage(BASE, f"{self.settings.image_namespace}/{BASE}:{base_recipe[:12]}", base_context, base_recipe)
        planned = [base]
        for name in names:
            context = build_context(name, rootfs, base.reference, settings_files, self.source)
            recipe = environment_hash(context, base.recipe_hash)
            planned.append(PlannedImage(name, f"{self.settings.image_namespace}/{name}:{recipe[:12]}", context, recipe))
        return planned

    def current(self) -> StackImages:
        """The references the current source needs; TeachlabError names any image not built yet."""
        planned = self.plan()
        missing = [image.reference for image in planned if self._image_id(image.reference) is None]
        if missing:
            raise TeachlabError(f"the stack's images {', '.join(missing)} are not built: run teachlab deploy build")
        return _stack_images(planned)

    def build(self, names: Sequence[str] | None = None) -> StackImages:
        """Build every image the current source needs and this engine lacks (of ``names`` and the base, when given)."""
        planned = self.plan(build_rootfs=True)
        self._build(planned, names)
        return _stack_images(planned)

    def build_registry(self) -> str:
        """The registry's image (built when this engine lacks it); its reference."""
        planned = self.plan(build_rootfs=True, names=(REGISTRY,))
        self._build(planned, None)
        return planned[-1].reference

    def _build(self, planned: list[PlannedImage], names: Sequence[str] | None) -> None:
        for image in planned:
            if names is not None and image.name != BASE and image.name not in names:
                continue
            if self._image_id(image.reference) is not None:
                self.progress.info(f"{image.reference} is up to date")
                continue
            now = datetime.now(timezone.utc)
            with self.progress.step(f"build {image.reference}") as step:
                build_image(
                    self.client,
                    context=tar_context(image.context),
                    tag=image.reference,
                    labels={
                        **self.settings.labels,
                        Labels.STACK: image.name,
                        Labels.image("recipe-hash"): image.recipe_hash,
                        Labels.image("build-time"): now.isoformat(timespec="seconds"),
                    },
                    log_path=self.settings.log_dir / f"stack-{image.name}-{now.strftime('%Y%m%dT%H%M%S')}.log",
                    on_line=step.detail,
                )


def _stack_images(planned: list[PlannedImage]) -> StackImages:
    return StackImages(**{image.name: image.reference for image in planned if image.name in (*STACK_IMAGE_NAMES, REGISTRY)})
