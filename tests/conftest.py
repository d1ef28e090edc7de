"""Shared fixtures.

Unit tests (tests/unit) need none of these and run without a Docker daemon: nothing here connects
to Docker unless a test asks for ``docker_client`` (directly or through another fixture).

Docker objects made by tests carry ``org.teachlab.test-session=<id>`` and are removed by label when
the session ends. The offline root filesystem and base image are kept between sessions (label
``org.teachlab.test-cache``): building them is the slow part, and reusing them is what a developer
machine wants; a fresh machine builds them once.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from spawner.images.settings import BuildSettings
from support.cleanup import remove_labelled

REPO_ROOT = Path(__file__).resolve().parent.parent
# Images tests build go to this repository namespace; two checkouts testing at once on one engine set
# TEACHLAB_TEST_IMAGE_NAMESPACE to keep their course image tags apart.
TEST_NAMESPACE = os.environ.get("TEACHLAB_TEST_IMAGE_NAMESPACE", "teachlab-test")
SESSION_LABEL = "org.teachlab.test-session"
OUTPUT_DIR = REPO_ROOT / "test-output"

# The running lab (provider, proxy, hub) for tests/hub and tests/e2e: one plugin, so one lab per session.
pytest_plugins = ("support.lab_fixtures",)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def session_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def session_labels(session_id) -> dict[str, str]:
    return {SESSION_LABEL: session_id}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the test item, so fixtures can tell whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def docker_client(session_labels):
    """The real engine. Every object labelled with this session is removed at the end."""
    from spawner.engine import connect

    client = connect()
    yield client
    remove_labelled(client, f"{SESSION_LABEL}={session_labels[SESSION_LABEL]}")


@pytest.fixture
def print_container_logs_on_failure(request, docker_client, session_labels):
    """After a failed test, print the logs and state of this session's containers."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed:
        return
    filters = {"label": f"{SESSION_LABEL}={session_labels[SESSION_LABEL]}"}
    for container in docker_client.containers.list(all=True, filters=filters):
        logs = container.logs(tail=60).decode("utf-8", "replace")
        print(f"\n===== container {container.name} ({container.status}) =====\n{logs}")
        print(f"State: {container.attrs.get('State')}")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("teachlab-state")


@pytest.fixture(scope="session")
def build_settings(state_dir, session_labels) -> BuildSettings:
    """Settings of images built by tests: a namespace of their own, labelled with the session."""
    return BuildSettings.from_environment(state_dir=state_dir, image_namespace=TEST_NAMESPACE, labels=session_labels)


@pytest.fixture(scope="session")
def base_image(docker_client, build_settings) -> str:
    """The debian-py39 base (debootstrap + docker import + Jupyter), kept between sessions as a cache."""
    from dataclasses import replace

    from spawner.images.build import ImageBuilder

    cache_settings = replace(build_settings, labels={"org.teachlab.test-cache": "1"})
    return ImageBuilder(cache_settings, client=docker_client).build_base("debian-py39")


@pytest.fixture(scope="session")
def published_examples(docker_client, build_settings, base_image, repo_root):
    """The two CPU example courses, published from the repository's catalog."""
    from spawner.catalog import load_catalog
    from spawner.images.publish import publish_course

    catalog = load_catalog(repo_root / "course_envs")
    return {
        slug: publish_course(catalog.courses[slug], settings=build_settings, client=docker_client)
        for slug in ("intro-python", "data-analysis")
    }


@pytest.fixture
def output_dir(request) -> Path:
    """test-output/<test name>/ for screenshots and logs a person may want to look at."""
    folder = OUTPUT_DIR / request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
