"""Course images on the real engine: base, publish, smoke test, failures, rollback, locks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spawner.catalog import load_course
from spawner.core.problems import ProblemsError, TeachlabError
from spawner.engine.build import BuildFailed
from spawner.images.build import ImageBuilder, label
from spawner.images.publish import login_name, publish_course, rollback_course
from spawner.images.registry import VersionRegistry
from spawner.images.smoke import SmokeTestFailed, run_smoke_test
from support.catalogs import add_pip_requirements, copy_course

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("print_container_logs_on_failure")]


def test_rootfs_from_debootstrap_is_bookworm_with_its_python_311(docker_client, base_image, build_settings):
    """The offline root filesystem (debootstrap + docker import) starts and runs bookworm's Python 3.11."""
    flavor = ImageBuilder(build_settings, client=docker_client).flavor("debian-py39")
    output = docker_client.containers.run(
        flavor.rootfs_image(build_settings.image_namespace),
        ["bash", "-c", "python3 -c 'import sys; print(sys.version.split()[0])'; . /etc/os-release; echo $VERSION_CODENAME"],
        remove=True,
        labels=build_settings.labels,
        network_mode="none",
    )
    assert output.decode().split() == ["3.11.2", "bookworm"]


def _pin(name: str) -> str:
    return next(line.split("==")[1] for line in Path("constraints.txt").read_text().splitlines() if line.startswith(f"{name}=="))


def test_base_image_contract(docker_client, base_image):
    """uid 1000 (jovyan) with bash as login shell, tini as PID 1, home and work dir; the hub's JupyterHub in
    the server environment on Python 3.11; Debian's Python 3.9 for course kernels; what SSH clients need."""
    image = docker_client.images.get(base_image)
    config = image.attrs["Config"]
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["/usr/bin/tini", "-g", "--"]
    assert config["WorkingDir"] == "/home/jovyan/work"
    assert config["Cmd"] == ["/opt/jupyter/bin/jupyterhub-singleuser"]
    assert base_image.endswith(":v2.1.0")
    labels = image.labels
    assert labels[label("base-flavor")] == "debian-py39" and labels[label("base-version")] == "2.1.0"
    assert (labels[label("python-kernel")], labels[label("python-server")]) == ("3.9.2", "3.11")
    assert labels[label("jupyter-server")] == _pin("jupyter-server") and labels[label("jupyterlab")] == _pin("jupyterlab")
    script = (
        "id -u; id -un; getent passwd jovyan | cut -d: -f7; "
        "/opt/jupyter/bin/python -c 'import sys, jupyterhub, jupyter_server, jupyterlab; "
        "print(sys.version.split()[0], jupyterhub.__version__, jupyter_server.__version__, jupyterlab.__version__)'; "
        "python3.9 -c 'import sys; print(sys.version.split()[0])'; "
        "stat -c %u /home/jovyan/work; cat /proc/1/comm; test -x /usr/lib/openssh/sftp-server && echo sftp-server; "
        "tar --version | head -1 | cut -d' ' -f1-2"
    )
    output = (
        docker_client.containers.run(
            base_image, ["bash", "-c", script], remove=True, network_mode="none", labels={"org.teachlab.test": "base"}
        )
        .decode()
        .splitlines()
    )
    assert output == [
        "1000",
        "jovyan",
        "/bin/bash",
        f"3.11.2 {_pin('jupyterhub')} {_pin('jupyter-server')} {_pin('jupyterlab')}",
        "3.9.2",
        "1000",
        "tini",
        "sftp-server",
        "tar (GNU",
    ]


def test_the_server_environment_leaves_out_what_only_slows_its_boot(docker_client, base_image):
    """The IRI grammar of jsonschema's format extra (SERVER_LEAVES_OUT) is not installed; jsonschema, the
    event schemas' uri check and pip's own consistency check still work without it."""
    script = (
        "cd /tmp; /opt/jupyter/bin/python -c 'import importlib.util as u; "
        'print(u.find_spec("rfc3987_syntax"), u.find_spec("lark"))\'; '
        "/opt/jupyter/bin/python -c 'import jsonschema; c = jsonschema.FormatChecker(); "
        'print("iri" in c.checkers, c.conforms("not a uri", "uri"), c.conforms("https://example.org/x", "uri"))\'; '
        "/opt/jupyter/bin/python -m pip check --disable-pip-version-check --no-cache-dir >/dev/null && echo consistent"
    )
    output = docker_client.containers.run(base_image, ["bash", "-c", script], remove=True, network_mode="none")
    assert output.decode().split("\n")[:3] == ["None None", "False False True", "consistent"]


def test_only_what_bookworm_lacks_comes_from_bullseye(docker_client, base_image):
    """apt preferences pin bullseye below bookworm: Python 3.9 and the libraries only it needs come from
    bullseye; nothing that bookworm has is replaced by a bullseye version."""
    script = "dpkg-query -W -f '${Package} ${Version}\n' | grep -E '(deb11|bullseye)' | cut -d' ' -f1"
    output = docker_client.containers.run(base_image, ["bash", "-c", script], remove=True, network_mode="none", user="0")
    from_bullseye = set(output.decode().split())
    assert {"python3.9", "python3.9-minimal", "libpython3.9-stdlib", "libssl1.1"} <= from_bullseye
    assert not from_bullseye & {"libc6", "bash", "python3", "python3.11", "libssl3", "openssl", "tini"}


@pytest.mark.parametrize(
    "slug, packages",
    [
        pytest.param("intro-python", ("numpy", "pandas", "matplotlib"), id="intro-python"),
        pytest.param("data-analysis", ("requests", "tabulate", "python-dateutil"), id="data-analysis"),
    ],
)
def test_published_example_runs_code_in_its_default_kernel(
    docker_client, published_examples, build_settings, repo_root, slug, packages
):
    result = published_examples[slug]
    assert result.outcome in ("published", "unchanged")
    current = VersionRegistry(build_settings.registry_dir).current_image(slug)
    assert current.image == result.image
    course = load_course(repo_root / "course_envs" / slug)
    report = run_smoke_test(
        docker_client, image=current.image, course=course, distributions=packages, labels=build_settings.labels
    )
    assert report.python.startswith("3.9.")
    assert report.default_kernel_title == course.title
    assert set(report.imports) == set(packages)
    assert all(outcome == "ok" for modules in report.imports.values() for outcome in modules.values())
    image = docker_client.images.get(current.image_id)
    for key in ("course", "version", "env-hash", "base-flavor", "base-version", "build-time"):
        assert image.labels.get(label(key)), key
    assert image.labels[label("course")] == slug
    assert image.labels[label("version")] == current.version
    # What is inside, on the labels: both Pythons, the Jupyter server, major libraries.
    assert image.labels[label("python-kernel")] == report.python
    assert image.labels[label("python-server")] == "3.11.2" == current.server_python
    assert image.labels[label("jupyter-server")] == _pin("jupyter-server") == current.jupyter_server
    if slug == "intro-python":
        assert image.labels[label("lib.numpy")].startswith("1.26.") and image.labels[label("lib.pandas")].startswith("2.2.")
    assert label("cuda-runtime") not in image.labels and current.cuda_runtime is None


@pytest.fixture
def scratch_course(tmp_path, repo_root, published_examples):
    """A copy of data-analysis in a catalog of its own; its first publish reuses the example's cached build."""
    return copy_course(repo_root, "data-analysis", tmp_path / "catalog")


@pytest.fixture
def scratch_settings(build_settings, tmp_path):
    """The session's build settings with a version registry of the test's own."""
    from dataclasses import replace

    return replace(build_settings, state_dir=tmp_path / "state")


def _no_session_containers(docker_client, settings):
    """No smoke-test or lock-reading container of this session is left behind."""
    session = "=".join(next(iter(settings.labels.items())))
    return all(
        docker_client.containers.list(all=True, filters={"label": [session, label(kind)]}) == []
        for kind in ("smoke-test", "lock-reader")
    )


def test_nonexistent_package_fails_to_publish_and_previous_version_stays(docker_client, scratch_settings, scratch_course):
    first = publish_course(load_course(scratch_course), settings=scratch_settings, client=docker_client)
    add_pip_requirements(scratch_course, "teachlab-no-such-package-4d2f")
    with pytest.raises(BuildFailed) as failure:
        publish_course(load_course(scratch_course), settings=scratch_settings, client=docker_client)
    assert "teachlab-no-such-package-4d2f" in str(failure.value)
    assert len(str(failure.value).splitlines()) == 1
    record = VersionRegistry(scratch_settings.registry_dir).read("data-analysis")
    assert record.current == first.version
    assert _no_session_containers(docker_client, scratch_settings)


def test_conflicting_pins_are_explained(docker_client, scratch_settings, scratch_course):
    add_pip_requirements(scratch_course, "urllib3==1.20")  # requests>=2.31 needs urllib3>=1.21.1
    with pytest.raises(BuildFailed) as failure:
        publish_course(load_course(scratch_course), settings=scratch_settings, client=docker_client)
    assert "conflict" in str(failure.value).lower()
    assert "urllib3" in str(failure.value)


def test_a_course_that_fails_its_smoke_test_is_not_published(docker_client, scratch_settings, scratch_course):
    first = publish_course(load_course(scratch_course), settings=scratch_settings, client=docker_client)
    add_pip_requirements(scratch_course, "python-magic==0.4.27")  # installs, but its import needs libmagic, which the image lacks
    with pytest.raises(SmokeTestFailed) as failure:
        publish_course(load_course(scratch_course), settings=scratch_settings, client=docker_client)
    assert "python-magic (magic: ImportError: failed to find libmagic" in str(failure.value)
    assert VersionRegistry(scratch_settings.registry_dir).read("data-analysis").current == first.version
    assert _no_session_containers(docker_client, scratch_settings)


def test_python_pin_the_flavor_cannot_provide_is_refused_before_building(docker_client, scratch_settings, scratch_course):
    env_file = scratch_course / "environment.yml"
    env_file.write_text(env_file.read_text().replace("python=3.9", "python=3.11"))
    with pytest.raises(ProblemsError) as failure:
        publish_course(load_course(scratch_course), settings=scratch_settings, client=docker_client)
    assert "debian-py39 provides Python 3.9.2" in str(failure.value)


def test_conda_packages_the_flavor_cannot_provide_are_listed(docker_client, build_settings, tmp_path, repo_root):
    folder = copy_course(repo_root, "deep-learning", tmp_path / "catalog", image_flavor="debian-py39")
    with pytest.raises(ProblemsError) as failure:
        publish_course(load_course(folder), settings=build_settings, client=docker_client)
    (problem,) = failure.value.problems
    assert problem.message == "debian-py39 cannot provide these conda packages: jupyter, pytorch, torchaudio, torchvision"


def test_rollback_and_republish(docker_client, scratch_settings, scratch_course):
    registry = VersionRegistry(scratch_settings.registry_dir)
    first = publish_course(load_course(scratch_course), settings=scratch_settings, client=docker_client)
    add_pip_requirements(scratch_course, "six==1.16.0")
    second = publish_course(load_course(scratch_course), settings=scratch_settings, client=docker_client)
    assert second.outcome == "published" and second.version != first.version
    assert registry.read("data-analysis").current == second.version

    record = rollback_course("data-analysis", settings=scratch_settings, client=docker_client)
    assert record.current == first.version
    record = rollback_course("data-analysis", settings=scratch_settings, to_version=second.version, client=docker_client)
    assert record.current == second.version

    again = publish_course(load_course(scratch_course), settings=scratch_settings, client=docker_client)
    assert (again.outcome, again.version) == ("unchanged", second.version)
    assert len(registry.read("data-analysis").versions) == len(record.versions)


def test_version_rebuilt_from_its_locks_has_the_same_packages_in_all_three_layers(
    docker_client, build_settings, published_examples
):
    """`--from-lock` rebuilds the whole image: the base from the version's server and Debian locks (a new
    base tag), the course environment from its lock; the rebuilt image's package sets equal the recorded ones."""
    import json

    from spawner.images.contents import ImageContents
    from spawner.images.evidence import read_contents
    from spawner.images.publish import build_from_locks, read_lock, read_version_locks

    registry = VersionRegistry(build_settings.registry_dir)
    current = registry.current_image("data-analysis")
    locks = read_version_locks(registry, "data-analysis", current.version)
    assert all(" --hash=sha256:" in line for line in locks.server.splitlines())
    assert "python3.9=" in locks.debian and "tabulate==0.9.0" in locks.course.splitlines()
    builder = ImageBuilder(build_settings, client=docker_client)
    candidate = build_from_locks(builder, load_course(Path("course_envs/data-analysis")), locks)
    assert "-lock-" in candidate.base_image
    recorded = ImageContents.from_dict(
        json.loads(registry.version_file("data-analysis", current.version, "contents").read_text())
    )
    rebuilt = read_contents(docker_client, candidate.image_id, build_settings.labels)
    assert rebuilt.debian_packages == recorded.debian_packages
    assert rebuilt.server_packages == recorded.server_packages
    assert rebuilt.course_packages == recorded.course_packages
    assert read_lock(docker_client, candidate, build_settings.labels) == locks.course


def test_missing_base_image_is_one_clear_error(docker_client, build_settings, repo_root):
    from dataclasses import replace

    settings = replace(build_settings, image_namespace="teachlab-missing")
    version = re.escape(ImageBuilder(settings, client=docker_client).flavor("debian-py39").version)
    with pytest.raises(
        TeachlabError,
        match=rf"base image teachlab-missing/debian-py39:v{version} is missing \(build it: teachlab image build-base --flavor debian-py39\)",
    ):
        publish_course(load_course(repo_root / "course_envs" / "intro-python"), settings=settings, client=docker_client)


def _teachlab(*args: str, env_changes: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_changes}
    return subprocess.run([sys.executable, "-m", "spawner.cli", *args], capture_output=True, text=True, env=env)


def test_docker_not_running_is_one_line_and_exit_1(tmp_path):
    result = _teachlab(
        "course",
        "publish",
        "intro-python",
        "--state-dir",
        str(tmp_path),
        env_changes={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: Docker is not running or not reachable")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_cli_publish_versions_and_rollback(docker_client, build_settings, scratch_course, tmp_path):
    env = {"TEACHLAB_IMAGE_NAMESPACE": build_settings.image_namespace}
    common = ["--catalog", str(scratch_course.parent), "--state-dir", str(tmp_path / "state")]
    assert _teachlab("course", "publish", "data-analysis", *common, env_changes=env).returncode == 0
    add_pip_requirements(scratch_course, "six==1.16.0")
    published = _teachlab("course", "publish", "data-analysis", *common, env_changes=env)
    assert published.returncode == 0, published.stderr
    assert "published data-analysis v2" in published.stdout
    listing = _teachlab("course", "versions", "data-analysis", "--json", *common[2:], env_changes=env)
    import json

    data = json.loads(listing.stdout)
    assert data["current"] == "v2" and [v["version"] for v in data["versions"]] == ["v1", "v2"]
    rolled = _teachlab("course", "rollback", "data-analysis", *common[2:], env_changes={**env, "SUDO_USER": "ada"})
    assert rolled.returncode == 0 and "v1 is current" in rolled.stdout
    # The history names who ran each command (the admin behind sudo): the two publishes, then the rollback.
    shown = _teachlab("course", "versions", "data-analysis", *common[2:], env_changes={**env, "COLUMNS": "200"}).stdout
    history = [line.split(" ", 1)[1] for line in shown.splitlines() if re.match(r"^\d{4}-\d\d-\d\dT", line)]
    publisher = login_name()  # who ran the publishes: this test's user
    assert history == [
        f"{publisher} publish - -> v1 (published)",
        f"{publisher} publish v1 -> v2 (published)",
        "ada rollback v2 -> v1 (rolled back)",
    ]
    docker_client.images.remove(data["versions"][1]["image"], force=True)
    missing = _teachlab("course", "rollback", "data-analysis", "--to", "v2", *common[2:], env_changes=env)
    assert missing.returncode == 1 and "is gone from this engine" in missing.stderr


def test_two_publishes_of_one_course_at_once_make_one_version(docker_client, scratch_settings, scratch_course):
    """The per-course publish lock: the second publisher waits, then finds the first one's identical version."""
    from concurrent.futures import ThreadPoolExecutor

    first = publish_course(load_course(scratch_course), settings=scratch_settings, client=docker_client)
    add_pip_requirements(scratch_course, "six==1.16.0")
    course = load_course(scratch_course)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: publish_course(course, settings=scratch_settings, client=docker_client), range(2)))
    assert sorted(result.outcome for result in results) == ["published", "unchanged"]
    assert results[0].version == results[1].version != first.version
    record = VersionRegistry(scratch_settings.registry_dir).read("data-analysis")
    assert [v.version for v in record.versions] == [first.version, results[0].version]
