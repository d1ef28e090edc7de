"""Rendered build plans (no Docker): the miniconda-py39 production flavor is checked here, since these
machines cannot reach conda channels; .github/workflows/miniconda-image.yml builds it for real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from spawner.catalog import load_course
from spawner.core.problems import ProblemsError, TeachlabError
from spawner.engine.build import summarize_build_failure
from spawner.images.plan import (
    CA_FILE,
    PipSettings,
    environment_hash,
    load_flavor,
    render_base_context,
    render_course_context,
    venv_requirements,
)

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = (REPO / "constraints.txt").read_text()
SERVER_LOCK = (REPO / "images" / "common" / "server-py3.11.lock.txt").read_text()
MIRROR = PipSettings(
    index_url="https://pypi-mirror.example.edu/simple",
    ca_bundle=b"-----BEGIN CERTIFICATE-----\nfake_ca_for_tests\n-----END CERTIFICATE-----\n",
    conda_channels=("conda-forge",),
    conda_channel_alias="https://conda-mirror.example.edu/anaconda",
)
INSTALLER = b"#!/bin/sh\n# stand-in for the Miniconda installer: only its bytes travel in the context\n"


@pytest.fixture
def miniconda():
    return load_flavor(REPO / "images", "miniconda-py39")


@pytest.fixture
def debian():
    return load_flavor(REPO / "images", "debian-py39")


def _text(files, name):
    return files[name].decode()


def _final_stage(dockerfile: str) -> str:
    return dockerfile.split("\nFROM ")[-1]


def test_miniconda_base_plan(miniconda):
    files = render_base_context(
        miniconda,
        rootfs_image="teachlab/rootfs-bookworm-minbase:abc",
        server_lock=SERVER_LOCK,
        pip=MIRROR,
        installer_bytes=INSTALLER,
    )
    dockerfile = _text(files, "Dockerfile")
    installer = miniconda.installer
    assert installer.file.startswith("Miniconda3-py39_") and re.fullmatch(r"[0-9a-f]{64}", installer.sha256)
    assert f'echo "{installer.sha256}  {installer.file}" | sha256sum -c -' in dockerfile
    assert f"bash {installer.file} -b -p /opt/conda" in dockerfile
    assert "conda clean --all --yes" in dockerfile
    # The server is its own conda environment on a newer Python, filled from the hashed lock.
    assert "conda create --yes -p /opt/jupyter python=3.11 pip" in dockerfile
    assert (
        "/opt/jupyter/bin/python -m pip install --no-deps --require-hashes -r /tmp/teachlab-build/server-lock.txt" in dockerfile
    )
    assert "cp /tmp/teachlab-build/server-lock.txt /opt/jupyter/teachlab-server-lock.txt" in dockerfile
    assert files["build/" + installer.file] == INSTALLER
    server_lock = _text(files, "build/server-lock.txt")
    assert re.search(r"^jupyter-server==2\.21\.1 --hash=sha256:[0-9a-f]{64}$", server_lock, re.MULTILINE)
    assert "teachlab-build/constraints.txt" not in dockerfile
    final = _final_stage(dockerfile)
    assert "teachlab-build" not in final.replace("COPY --from=build", "")  # no installer, settings or CA in the image
    assert "USER 1000:1000" in final and 'ENTRYPOINT ["/usr/bin/tini", "-g", "--"]' in final
    assert "WORKDIR /home/jovyan/work" in final
    assert miniconda.base_image("teachlab") == "teachlab/miniconda-py39:v2.1.0"
    assert miniconda.rootfs_suite == "bookworm" and "openssh-sftp-server" in miniconda.rootfs_packages
    assert "apt-get upgrade -y -qq" in final and "bookworm-security" in final and "bullseye" not in final

    condarc = yaml.safe_load(_text(files, "condarc"))
    assert condarc == {
        "channels": ["conda-forge"],
        "channel_alias": "https://conda-mirror.example.edu/anaconda",
        "pkgs_dirs": ["/opt/conda/pkgs"],
        "envs_dirs": ["/opt/conda/envs"],
        "show_channel_urls": True,
    }
    build_condarc = yaml.safe_load(_text(files, "build/condarc.build"))
    assert build_condarc["ssl_verify"] == "/tmp/teachlab-build/ca.crt"


def test_miniconda_base_needs_its_installer(miniconda):
    with pytest.raises(TeachlabError, match="needs its Miniconda installer"):
        render_base_context(miniconda, rootfs_image="r", server_lock=SERVER_LOCK, pip=MIRROR)


def test_miniconda_course_plan_uses_conda_with_the_instructors_file(miniconda):
    course = load_course(REPO / "course_envs" / "deep-learning")
    plan = render_course_context(
        course,
        miniconda,
        base_image="teachlab/miniconda-py39:v2.1.0",
        base_image_id="sha256:1",
        constraints=CONSTRAINTS,
        pip=MIRROR,
    )
    dockerfile = _text(plan.files, "Dockerfile")
    assert "conda env create -p /opt/course-env -f /tmp/teachlab-build/environment.yml" in dockerfile
    assert "conda list -p /opt/course-env --explicit --md5" in dockerfile and "conda clean --all --yes" in dockerfile
    environment = yaml.safe_load(_text(plan.files, "build/environment.yml"))
    assert environment["channels"] == ["pytorch", "defaults"]
    assert "pytorch" in environment["dependencies"] and "ipykernel=6.31.0" in environment["dependencies"]
    assert environment["dependencies"][-1] == {"pip": ["opencv-python", "torch-summary", "wandb"]}
    assert '"display_name": "Deep Learning"' in _text(plan.files, "kernel.json")
    assert "pytorch" in plan.top_level_distributions and "opencv-python" in plan.top_level_distributions


def test_miniconda_course_rebuilt_from_its_lock(miniconda):
    course = load_course(REPO / "course_envs" / "deep-learning")
    lock = "@EXPLICIT\nhttps://conda-mirror.example.edu/x/numpy-1.26.4-py39h0_0.conda#0123456789abcdef0123456789abcdef\n# pip\nwandb==0.18.0\n"
    plan = render_course_context(
        course, miniconda, base_image="b", base_image_id="sha256:1", constraints=CONSTRAINTS, pip=MIRROR, lock=lock
    )
    dockerfile = _text(plan.files, "Dockerfile")
    assert "conda create --yes -p /opt/course-env --file /tmp/teachlab-build/conda-lock.txt" in dockerfile
    assert _text(plan.files, "build/conda-lock.txt").startswith("@EXPLICIT")
    assert _text(plan.files, "build/requirements.txt") == "wandb==0.18.0\n"


def test_debian_course_plan_translates_conda_pins_for_pip(debian):
    course = load_course(REPO / "course_envs" / "intro-python")
    assert venv_requirements(course, debian, ipykernel_pin="ipykernel==6.31.0") == [
        "numpy==1.26.*",
        "pandas==2.2.*",
        "matplotlib==3.9.*",
        "ipykernel==6.31.0",
    ]


def test_build_settings_stay_out_of_the_environment_hash(debian):
    course = load_course(REPO / "course_envs" / "data-analysis")
    plain = render_course_context(
        course, debian, base_image="b", base_image_id="sha256:1", constraints=CONSTRAINTS, pip=PipSettings()
    )
    mirrored = render_course_context(
        course, debian, base_image="b", base_image_id="sha256:1", constraints=CONSTRAINTS, pip=MIRROR
    )
    other_base = render_course_context(
        course, debian, base_image="b", base_image_id="sha256:2", constraints=CONSTRAINTS, pip=MIRROR
    )
    assert plain.environment_hash == mirrored.environment_hash != other_base.environment_hash
    assert CA_FILE in mirrored.files and CA_FILE not in plain.files
    assert "ca.crt" not in _final_stage(_text(mirrored.files, "Dockerfile"))
    assert environment_hash(dict(plain.files), "sha256:1") == plain.environment_hash


def test_flavor_refusals_come_in_one_error(debian, tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "course.yaml").write_text((REPO / "course_envs" / "deep-learning" / "course.yaml").read_text())
    env = (REPO / "course_envs" / "deep-learning" / "environment.yml").read_text().replace("python=3.9", "python=3.10")
    (folder / "environment.yml").write_text(env)
    with pytest.raises(ProblemsError) as failure:
        venv_requirements(load_course(folder), debian, ipykernel_pin="ipykernel==6.31.0")
    messages = [problem.message for problem in failure.value.problems]
    assert messages == [
        "'python=3.10' cannot be met: debian-py39 provides Python 3.9.2",
        "debian-py39 cannot provide these conda packages: jupyter, pytorch, torchaudio, torchvision",
    ]


def test_unknown_flavor_names_the_known_ones():
    with pytest.raises(TeachlabError, match=r"unknown image flavor 'ubuntu' \(known flavors: debian-py39, miniconda-py39"):
        load_flavor(REPO / "images", "ubuntu")


@pytest.mark.parametrize(
    "log, error, expected",
    [
        pytest.param(
            [
                "Step 4/9 : RUN pip install",
                "ERROR: Could not find a version that satisfies the requirement nope-pkg (from versions: none)",
                "ERROR: No matching distribution found for nope-pkg",
            ],
            "returned a non-zero code: 1",
            "Could not find a version that satisfies the requirement nope-pkg (from versions: none); No matching distribution found for nope-pkg",
            id="missing-package",
        ),
        pytest.param(
            [
                "ERROR: Ignored the following versions that require a different python version: 2.0 Requires-Python >=3.10",
                "ERROR: Cannot install requests==2.31.0 and urllib3==1.20 because these package versions have conflicting dependencies.",
                "The conflict is caused by:",
                "    The user requested urllib3==1.20",
                "    requests 2.31.0 depends on urllib3<3 and >=1.21.1",
            ],
            "x",
            "Cannot install requests==2.31.0 and urllib3==1.20 because these package versions have conflicting dependencies.; "
            "The conflict is caused by:; The user requested urllib3==1.20; requests 2.31.0 depends on urllib3<3 and >=1.21.1",
            id="conflict",
        ),
        pytest.param(
            ["Step 1/3 : FROM nothing"], "pull access denied for nothing\n", "pull access denied for nothing", id="no-pip-lines"
        ),
    ],
)
def test_build_failure_summary(log, error, expected):
    assert summarize_build_failure(log, error) == expected


def test_debian_base_plan_two_pythons_each_with_its_job(debian):
    """bookworm's Python 3.11 for the server (from the hashed lock), bullseye's Python 3.9 for the kernel,
    pinned below bookworm by apt preferences; what SSH clients expect; the contract kept."""
    files = render_base_context(debian, rootfs_image="teachlab/rootfs-bookworm-minbase:abc", server_lock=SERVER_LOCK, pip=MIRROR)
    dockerfile = _text(files, "Dockerfile")
    assert debian.version == "2.1.0" and debian.base_image("t") == "t/debian-py39:v2.1.0"
    assert debian.rootfs_suite == "bookworm" and debian.server_python_version == "3.11"
    assert {"openssh-sftp-server", "bash", "tar", "tini", "python3"} <= set(debian.rootfs_packages)
    assert debian.kernel_python.suite == "bullseye" and debian.kernel_python.packages == ("python3.9",)
    assert "python3 -m venv /opt/jupyter;" in dockerfile
    assert "-m pip install --no-deps --require-hashes -r /tmp/teachlab-build/server-lock.txt" in dockerfile
    final = _final_stage(dockerfile)
    assert "apt-get install -y -qq --no-install-recommends python3.9;" in final
    assert '"$mirror" bullseye "$security" bullseye-security' in final
    assert '"$mirror" bookworm-updates "$security" bookworm-security' in final
    preferences = _text(files, "system/kernel-python.pref")
    assert "Package: *\nPin: release n=bullseye\nPin-Priority: 100\n" in preferences
    assert "--shell /bin/bash jovyan" in final and "USER 1000:1000" in final
    assert 'ENTRYPOINT ["/usr/bin/tini", "-g", "--"]' in final
    assert "system/debian-lock.txt" not in files and "--allow-downgrades" not in dockerfile


def test_debian_base_rebuilt_from_locks_installs_exactly_the_locked_debian_packages(debian):
    debian_lock = "tini=0.19.0-1\nbash=5.2.15-2+b7\n"
    files = render_base_context(debian, rootfs_image="r", server_lock=SERVER_LOCK, pip=PipSettings(), debian_lock=debian_lock)
    assert _text(files, "system/debian-lock.txt") == "bash=5.2.15-2+b7\ntini=0.19.0-1\n"  # sorted, as dpkg-query is compared
    final = _final_stage(_text(files, "Dockerfile"))
    assert "--allow-downgrades $(cat /tmp/teachlab-system/debian-lock.txt)" in final
    assert "diff -u /tmp/teachlab-system/debian-lock.txt /tmp/teachlab-system/installed.txt" in final


@pytest.mark.parametrize(
    "bad_line",
    [
        pytest.param("--extra-index-url https://evil.example.org/simple", id="extra-index-url"),
        pytest.param("-i https://evil.example.org/simple", id="index-url"),
        pytest.param("-e git+https://evil.example.org/x.git#egg=x", id="editable"),
        pytest.param("evil @ https://evil.example.org/evil-1.0.tar.gz", id="direct-url"),
        pytest.param("numpy>=1.26", id="not-pinned"),
        pytest.param("numpy==1.26.4; python_version < '3.10'", id="marker"),
        pytest.param("-r other.txt", id="include"),
    ],
)
def test_a_lock_cannot_smuggle_options_into_a_build(debian, bad_line):
    course = load_course(REPO / "course_envs" / "data-analysis")
    lock = f"tabulate==0.9.0\n{bad_line}\nrequests==2.32.3\n"
    with pytest.raises(ProblemsError) as refused:
        render_course_context(
            course, debian, base_image="b", base_image_id="sha256:1", constraints=CONSTRAINTS, pip=PipSettings(), lock=lock
        )
    (problem,) = refused.value.problems
    assert problem.path == "line 2" and "is not a lock line" in problem.message


def test_the_server_lock_needs_a_hash_on_every_line(debian):
    unhashed = SERVER_LOCK + "six==1.17.0\n"
    with pytest.raises(ProblemsError, match=r"'six==1.17.0' is not a lock line"):
        render_base_context(debian, rootfs_image="r", server_lock=unhashed, pip=PipSettings())


def test_debian_course_plan_makes_a_python39_venv_with_the_pinned_pip(debian):
    course = load_course(REPO / "course_envs" / "intro-python")
    plan = render_course_context(
        course, debian, base_image="b", base_image_id="sha256:1", constraints=CONSTRAINTS, pip=PipSettings()
    )
    dockerfile = _text(plan.files, "Dockerfile")
    assert "python3.9 -m venv --without-pip /opt/course-env" in dockerfile
    assert "--python-version 3.9.2 --dest /tmp/teachlab-pip pip==26.0.1;" in dockerfile
    assert '/opt/course-env/bin/python "$wheel/pip" install --quiet --no-deps pip==26.0.1 setuptools==82.0.1;' in dockerfile
    assert "sysconfig._PIP_USE_SYSCONFIG = True" in dockerfile
    assert "pip freeze --all > /opt/course-env/teachlab-lock.txt" in dockerfile
    assert _text(plan.files, "build/requirements.txt").splitlines()[-1] == "ipykernel==6.31.0"


@pytest.mark.parametrize(
    "python, ipykernel, pip",
    [
        pytest.param("3.9.2", "ipykernel==6.31.0", "pip==26.0.1", id="kernel-3.9"),
        pytest.param("3.11", "ipykernel==7.4.0", "pip==26.3", id="server-3.11"),
        pytest.param("3.12.1", "ipykernel==7.4.0", "pip==26.3", id="server-3.12"),
    ],
)
def test_constraint_markers_pick_each_pythons_pin(python, ipykernel, pip):
    from spawner.images.plan import constraint_pin

    assert constraint_pin(CONSTRAINTS, "ipykernel", python) == ipykernel
    assert constraint_pin(CONSTRAINTS, "pip", python) == pip


def test_the_hub_and_the_server_lock_run_the_same_jupyter():
    pins = {line.split("==")[0]: line.split("==")[1] for line in CONSTRAINTS.splitlines() if "==" in line and ";" not in line}
    locked = {line.split("==")[0]: line.split("==")[1].split()[0] for line in SERVER_LOCK.splitlines() if "==" in line}
    for name in ("jupyterhub", "jupyterlab", "jupyter-server", "notebook"):
        assert locked[name] == pins[name], name
    assert Version(pins["jupyterhub"]).major == 6
    assert Version(pins["jupyterlab"]) >= Version("4.6") and Version(pins["jupyter-server"]) >= Version("2.21.1")
