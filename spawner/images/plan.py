"""Build plans for base and course images: what a flavor can provide, and the rendered build contexts.

Pure (no Docker): plans are rendered from Jinja templates in ``images/<flavor>/`` and
``images/common/`` and can be unit-tested, printed (``teachlab image plan``), or handed to the
engine by ``spawner.imagebuild``. Build contexts are byte-identical for identical inputs, so Docker's
layer cache makes rebuilding an unchanged course take seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jinja2
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from ..catalog import Course
from ..core.contract import IMAGE
from ..core.problems import Problem, ProblemsError, TeachlabError
from ..core.schemacheck import schema_problems
from ..core.yamlfile import load_yaml_file
from .locks import CONDA_PIP_SEPARATOR, check_conda_lock, check_debian_lock, check_pip_lock

BUILD_DIR = "build/"
SYSTEM_DIR = "system/"
CA_FILE = BUILD_DIR + "ca.crt"
PIP_CONF_FILE = BUILD_DIR + "pip.conf"
SETTINGS_ONLY_FILES = (CA_FILE, PIP_CONF_FILE, BUILD_DIR + "condarc.build")
# What the Jupyter server environment is made of; their versions (and their dependencies') come from
# constraints.txt and are frozen with hashes in the server lock.
SERVER_REQUIREMENTS = ("jupyterhub", "jupyterlab", "jupyter-server", "notebook", "pip", "setuptools")


@dataclass(frozen=True)
class Installer:
    file: str
    sha256: str


@dataclass(frozen=True)
class KernelPython:
    """Debian packages of another suite that give a venv flavor its course kernel's Python."""

    suite: str
    packages: tuple[str, ...]
    command: str


@dataclass(frozen=True)
class Flavor:
    """One base image flavor, from ``images/<name>/flavor.yaml``."""

    name: str
    version: str
    python_version: str  # the course kernel's
    server_python_version: str  # the Jupyter server environment's
    environment_builder: str  # "venv" or "conda"
    rootfs_suite: str
    rootfs_variant: str
    rootfs_packages: tuple[str, ...]
    folder: Path
    conda_packages_from_pypi: frozenset[str] = frozenset()
    installer: Installer | None = None
    condarc: Mapping[str, object] = field(default_factory=dict)
    kernel_python: KernelPython | None = None

    @property
    def server_lock_file(self) -> Path:
        """The hashed lock of the Jupyter server environment for this flavor's server Python."""
        return self.folder.parent / "common" / f"server-py{self.server_python_version}.lock.txt"

    def base_image(self, namespace: str) -> str:
        return f"{namespace}/{self.name}:v{self.version}"

    def rootfs_image(self, namespace: str) -> str:
        recipe = json.dumps([self.rootfs_suite, self.rootfs_variant, sorted(self.rootfs_packages)])
        digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
        return f"{namespace}/rootfs-{self.rootfs_suite}-{self.rootfs_variant}:{digest}"


@dataclass(frozen=True)
class PipSettings:
    """Mirror and trust for pip and conda inside build stages (never copied into final images)."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    ca_bundle: bytes | None = None
    conda_channels: tuple[str, ...] = ()
    conda_channel_alias: str | None = None


@dataclass(frozen=True)
class CoursePlan:
    """What goes into one course image and what its smoke test must import."""

    files: Mapping[str, bytes]
    environment_hash: str
    top_level_distributions: tuple[str, ...]


@lru_cache(maxsize=1)
def flavor_schema() -> dict:
    return json.loads(resources.files("spawner.images").joinpath("schema/flavor.schema.json").read_text())


def load_flavor(images_dir: Path, name: str) -> Flavor:
    """Read and check ``images/<name>/flavor.yaml``; ProblemsError lists every problem, one line each."""
    folder = images_dir / name
    path = folder / "flavor.yaml"
    if not path.is_file():
        known = sorted(p.name for p in images_dir.iterdir() if (p / "flavor.yaml").is_file()) if images_dir.is_dir() else []
        raise TeachlabError(f"unknown image flavor '{name}' (known flavors: {', '.join(known) or 'none'} in {images_dir})")
    data = load_yaml_file(path, str(path))
    problems = schema_problems({} if data is None else data, flavor_schema(), str(path))
    if not problems and data["name"] != name:
        problems.append(
            Problem(str(path), "name", f"'{data['name']}' differs from the folder name '{name}'", f"write name: {name}")
        )
    if not problems and data["environment_builder"] == "conda" and "installer" not in data:
        problems.append(
            Problem(str(path), "installer", "a conda flavor needs its installer", "add installer.file and installer.sha256")
        )
    if not problems and data["environment_builder"] == "venv" and "kernel_python" not in data:
        problems.append(
            Problem(
                str(path),
                "kernel_python",
                "a venv flavor needs its kernel's Python",
                "add kernel_python.suite, .packages and .command",
            )
        )
    if problems:
        raise ProblemsError(problems)
    installer = data.get("installer")
    kernel_python = data.get("kernel_python")
    return Flavor(
        name=data["name"],
        version=str(data["version"]),
        python_version=str(data["python_version"]),
        server_python_version=str(data["server_python_version"]),
        environment_builder=data["environment_builder"],
        rootfs_suite=data["rootfs"]["suite"],
        rootfs_variant=data["rootfs"]["variant"],
        rootfs_packages=tuple(data["rootfs"]["packages"]),
        folder=folder,
        conda_packages_from_pypi=frozenset(data.get("conda_packages_from_pypi", ())),
        installer=Installer(**installer) if installer else None,
        condarc=data.get("condarc", {}),
        kernel_python=KernelPython(
            suite=kernel_python["suite"], packages=tuple(kernel_python["packages"]), command=kernel_python["command"]
        )
        if kernel_python
        else None,
    )


def _templates(flavor: Flavor) -> jinja2.Environment:
    loader = jinja2.FileSystemLoader([str(flavor.folder), str(flavor.folder.parent / "common")])
    environment = jinja2.Environment(
        loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )
    environment.globals["contract"] = IMAGE.template_values()
    return environment


def render_settings_files(flavor: Flavor, pip: PipSettings) -> dict[str, str | bytes]:
    """pip (and conda) settings and the CA bundle of build stages: never copied into a final image."""
    templates = _templates(flavor)
    files: dict[str, str | bytes] = {
        PIP_CONF_FILE: templates.get_template("pip.conf.j2").render(
            index_url=pip.index_url, extra_index_urls=pip.extra_index_urls, has_ca_bundle=pip.ca_bundle is not None
        ),
    }
    if pip.ca_bundle is not None:
        files[CA_FILE] = pip.ca_bundle
    if flavor.environment_builder == "conda":
        files[BUILD_DIR + "condarc.build"] = _render_condarc(flavor, pip, build_stage=True)
    return files


def _render_condarc(flavor: Flavor, pip: PipSettings, *, build_stage: bool) -> str:
    return (
        _templates(flavor)
        .get_template("condarc.j2")
        .render(
            flavor=flavor,
            channels=pip.conda_channels,
            channel_alias=pip.conda_channel_alias,
            build_stage=build_stage,
            has_ca_bundle=pip.ca_bundle is not None,
        )
    )


def _encode(files: Mapping[str, str | bytes]) -> dict[str, bytes]:
    return {name: data.encode("utf-8") if isinstance(data, str) else data for name, data in files.items()}


def render_base_context(
    flavor: Flavor,
    *,
    rootfs_image: str,
    server_lock: str,
    pip: PipSettings,
    installer_bytes: bytes | None = None,
    debian_lock: str | None = None,
) -> dict[str, bytes]:
    """Build context of a flavor's base image: the Jupyter server environment from ``server_lock`` (hashed
    ``name==version`` lines); ``debian_lock`` (``name=version`` lines) rebuilds a recorded Debian package set."""
    server_lock = check_pip_lock(server_lock, str(flavor.server_lock_file), hashes_required=True)
    templates = _templates(flavor)
    files: dict[str, str | bytes] = {
        "Dockerfile": templates.get_template("Dockerfile.base.j2").render(
            flavor=flavor, rootfs_image=rootfs_image, debian_lock=debian_lock is not None
        ),
        "jupyter_server_config.json": (flavor.folder.parent / "common" / "jupyter_server_config.json").read_text(),
        "page_config.json": (flavor.folder.parent / "common" / "page_config.json").read_text(),
        BUILD_DIR + "server-lock.txt": server_lock,
        SYSTEM_DIR + "README": "Files of the system layer; removed once it is installed.\n",
        **render_settings_files(flavor, pip),
    }
    if flavor.kernel_python is not None:
        files[SYSTEM_DIR + "kernel-python.pref"] = templates.get_template("kernel-python.pref.j2").render(flavor=flavor)
    if debian_lock is not None:
        files[SYSTEM_DIR + "debian-lock.txt"] = check_debian_lock(debian_lock, "the Debian lock")
    if flavor.environment_builder == "conda":
        if flavor.installer is None or installer_bytes is None:
            raise TeachlabError(f"flavor {flavor.name} needs its Miniconda installer to build")
        files["condarc"] = _render_condarc(flavor, pip, build_stage=False)
        files[BUILD_DIR + flavor.installer.file] = installer_bytes
    return _encode(files)


def constraint_pin(constraints: str, name: str, python_version: str) -> str:
    """The ``name==version`` pin of constraints.txt that applies on ``python_version`` (markers evaluated)."""
    environment = {"python_version": ".".join(python_version.split(".")[:2]), "python_full_version": python_version}
    for line in constraints.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.name == name and (requirement.marker is None or requirement.marker.evaluate(environment)):
            return f"{requirement.name}{requirement.specifier}"
    raise TeachlabError(f"constraints.txt has no pin for {name} on Python {python_version}; add e.g. '{name}==6.31.0'")


def venv_requirements(course: Course, flavor: Flavor, *, ipykernel_pin: str) -> list[str]:
    """pip requirement lines of a venv-flavor course; refuse what the flavor cannot provide, all at once."""
    env = course.environment
    where = str(course.folder / "environment.yml")
    problems = []
    if not env.python_specifier.contains(Version(flavor.python_version)):
        problems.append(
            Problem(
                where,
                "dependencies",
                f"'{env.python.raw}' cannot be met: {flavor.name} provides Python {flavor.python_version}",
                f"pin python={'.'.join(flavor.python_version.split('.')[:2])} or use another image_flavor",
            )
        )
    missing = sorted(spec.raw for spec in env.conda_dependencies if spec.name not in flavor.conda_packages_from_pypi)
    if missing:
        problems.append(
            Problem(
                where,
                "dependencies",
                f"{flavor.name} cannot provide these conda packages: {', '.join(missing)}",
                "move them to the 'pip:' list under their PyPI names, or set image_flavor: miniconda-py39",
            )
        )
    requirements = []
    for spec in env.conda_dependencies:
        if spec.name in missing or spec.name == "pip":
            continue
        if spec.build or spec.channel:
            problems.append(
                Problem(
                    where,
                    "dependencies",
                    f"'{spec.raw}' names a conda channel or build, which pip cannot honour",
                    f"write '{spec.name}{spec.version or ''}'",
                )
            )
            continue
        try:
            requirements.append(f"{spec.name}{spec.to_pep440()}")
        except ValueError as exc:
            problems.append(Problem(where, "dependencies", str(exc), "write the version as 'name>=1.2,<2'"))
    if problems:
        raise ProblemsError(problems)
    requirements.extend(env.pip_requirements)
    if "ipykernel" not in {Requirement(line).name.lower() for line in requirements}:
        requirements.append(ipykernel_pin)
    return requirements


def conda_environment_file(course: Course, *, ipykernel_pin: str) -> str:
    """The instructor's environment.yml, plus ipykernel for the default kernel when it is missing."""
    env = course.environment
    dependencies: list[object] = [env.python.raw, *(spec.raw for spec in env.conda_dependencies)]
    if "ipykernel" not in {spec.name for spec in env.conda_dependencies}:
        dependencies.append(ipykernel_pin.replace("==", "="))
    if env.pip_requirements:
        if "pip" not in {spec.name for spec in env.conda_dependencies}:
            dependencies.append("pip")
        dependencies.append({"pip": list(env.pip_requirements)})
    return yaml.safe_dump({"name": env.name, "channels": list(env.channels), "dependencies": dependencies}, sort_keys=False)


def top_level_distributions(course: Course, flavor: Flavor) -> tuple[str, ...]:
    """The packages the instructor asked for, each of which the smoke test must import."""
    names = [spec.name for spec in course.environment.conda_dependencies if spec.name != "pip"]
    names += [Requirement(line).name for line in course.environment.pip_requirements]
    return tuple(dict.fromkeys(names))


def render_course_context(
    course: Course,
    flavor: Flavor,
    *,
    base_image: str,
    base_image_id: str,
    constraints: str,
    pip: PipSettings,
    lock: str | None = None,
) -> CoursePlan:
    """Build context of one course image; ``lock`` rebuilds a published version's exact package set."""
    templates = _templates(flavor)
    ipykernel_pin = constraint_pin(constraints, "ipykernel", flavor.python_version)
    dockerfile_values = {"slug": course.slug, "base_image": base_image, "from_lock": lock is not None, "flavor": flavor}
    if flavor.environment_builder == "venv":
        dockerfile_values["kernel_bootstrap_pins"] = [
            constraint_pin(constraints, name, flavor.python_version) for name in ("pip", "setuptools")
        ]
    files: dict[str, str | bytes] = {
        "Dockerfile": templates.get_template("Dockerfile.course.j2").render(**dockerfile_values),
        "kernel.json": templates.get_template("kernel.json.j2").render(title=course.title),
        **render_settings_files(flavor, pip),
    }
    where = f"the lock of {course.slug}"
    if flavor.environment_builder == "venv":
        files[BUILD_DIR + "requirements.txt"] = (
            check_pip_lock(lock, where, hashes_required=False)
            if lock is not None
            else "\n".join(venv_requirements(course, flavor, ipykernel_pin=ipykernel_pin)) + "\n"
        )
    elif lock is not None:
        conda_lock, _, pip_lock = lock.partition(CONDA_PIP_SEPARATOR)
        files[BUILD_DIR + "conda-lock.txt"] = check_conda_lock(conda_lock, where)
        files[BUILD_DIR + "requirements.txt"] = check_pip_lock(pip_lock, where, hashes_required=False)
    else:
        files[BUILD_DIR + "environment.yml"] = conda_environment_file(course, ipykernel_pin=ipykernel_pin)
    encoded = _encode(files)
    return CoursePlan(
        files=encoded,
        environment_hash=environment_hash(encoded, base_image_id),
        top_level_distributions=top_level_distributions(course, flavor),
    )


def environment_hash(files: Mapping[str, bytes], base_image_id: str) -> str:
    """Identity of a course environment: its recipe and base image, not the host's mirror or CA settings."""
    digest = hashlib.sha256(base_image_id.encode())
    for name in sorted(files):
        if name not in SETTINGS_ONLY_FILES:
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()
