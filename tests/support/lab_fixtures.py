"""A real lab for tests/hub and tests/e2e: OIDC provider, configurable-http-proxy and JupyterHub as
processes, students' containers on the real engine, a test catalog published into the session's state
folder. Loaded as a plugin from tests/conftest.py (not a directory's conftest), so both test folders
share one lab per session."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from spawner.catalog.timetable import WEEKDAYS
from spawner.core.contract import Labels
from spawner.devlab.lab import Lab, LabPorts, free_port
from spawner.devlab.names import names_on_loopback
from spawner.node import firewall
from spawner.node.disks import VolumeStore
from support.accounts import (
    CROWD_STUDENTS,
    FAKE_GPU_INVENTORY,
    GPU_STUDENTS,
    HUB_COURSES,
    TEST_ACCOUNTS,
    TIMETABLE_STUDENTS,
    WARM_STUDENTS,
)
from support.catalogs import copy_course
from support.hub import signed_in_users


@pytest.fixture(scope="session")
def hub_catalog(tmp_path_factory, repo_root):
    """The example CPU courses plus courses made for tests: an ended term, a 1-minute idle limit,
    one republished during the tests, and one that is never published."""
    catalog = tmp_path_factory.mktemp("catalog")
    copy_course(repo_root, "intro-python", catalog)
    copy_course(repo_root, "data-analysis", catalog)
    copy_course(
        repo_root,
        "intro-python",
        catalog,
        new_slug="ended-course",
        title="An Ended Course",
        term={"start": "2025-01-01", "end": "2025-06-30"},
    )
    copy_course(
        repo_root,
        "intro-python",
        catalog,
        new_slug="quick-idle",
        title="Quick Idle",
        students={"groups": ["idle-testers"]},
        idle_timeout_minutes=1,
    )
    copy_course(
        repo_root,
        "data-analysis",
        catalog,
        new_slug="versioned",
        title="Versioned Course",
        students={"groups": ["cs101-students"]},
    )
    copy_course(repo_root, "intro-python", catalog, new_slug="not-published", title="Not Published")
    copy_course(repo_root, "intro-python", catalog, new_slug="offline-course", title="Offline Course", network="off")
    copy_course(
        repo_root,
        "intro-python",
        catalog,
        new_slug="tiny-disk",
        title="Tiny Disk",
        resources={"cpu": 1, "memory": "1G", "disk": "24M"},
    )
    # Published and republished from the browser by tests/e2e/test_course_pages.py (lena teaches it, nora takes it;
    # olga is listed but never signs in).
    copy_course(
        repo_root,
        "data-analysis",
        catalog,
        new_slug="env-lab",
        title="Environment Lab",
        students={"groups": ["envlab-students"], "users": ["olga"]},
        instructors={"users": ["lena"]},
    )
    copy_course(
        repo_root,
        "intro-python",
        catalog,
        new_slug="gpu-course",
        title="GPU Course",
        gpu=1,
        students={"users": list(GPU_STUDENTS), "groups": ["gpu-testers"]},
        gpu_idle_timeout_minutes=60,
    )
    copy_course(
        repo_root, "intro-python", catalog, new_slug="crowd-course", title="Crowd", students={"users": list(CROWD_STUDENTS)}
    )
    copy_course(repo_root, "intro-python", catalog, new_slug="warm-course", title="Warm", students={"users": list(WARM_STUDENTS)})
    # A session that began when the catalog was made and lasts the whole test run (the lab's time zone is UTC).
    began = datetime.now(timezone.utc)
    copy_course(
        repo_root,
        "intro-python",
        catalog,
        new_slug="timetable-course",
        title="Timetable",
        students={"users": list(TIMETABLE_STUDENTS)},
        sessions=[{"weekday": WEEKDAYS[began.weekday()], "start": began.strftime("%H:%M"), "minutes": 720}],
    )
    return catalog


@pytest.fixture(scope="session")
def hub_courses(docker_client, build_settings, base_image, published_examples, hub_catalog):
    from spawner.catalog import load_catalog
    from spawner.images.publish import publish_course

    catalog = load_catalog(hub_catalog)
    # Four at once, as instructors of different courses publish: most of a publish waits on its smoke test.
    with ThreadPoolExecutor(4) as pool:
        published = pool.map(
            lambda slug: publish_course(catalog.courses[slug], settings=build_settings, client=docker_client), HUB_COURSES
        )
        return dict(zip(HUB_COURSES, published, strict=True))


# "Today" for every hub and browser test: inside the example courses' term (2026-09-01 to 2027-08-31), so
# the tests do not start failing when that term ends.
TODAY = "2026-11-15"
SITE_LABEL = "org.example.site"


@pytest.fixture(scope="session")
def site_config_dir(tmp_path_factory, session_labels):
    """A site file that replaces c.CourseSpawner.extra_labels, as the trait's own help example does. The lab's
    own labels must survive it (GPU reconciliation keys on the lab label)."""
    folder = tmp_path_factory.mktemp("jupyterhub_config.d")
    labels = {**session_labels, SITE_LABEL: "tests"}
    (folder / "50-labels.py").write_text(f"c.CourseSpawner.extra_labels = {labels!r}\n")
    return folder


TEST_DOMAIN = "teachlab.test"
# Warm servers nobody opened are stopped this long after the session's start (production: 15 minutes).
WARM_UNUSED_MINUTES = 3


def start_test_lab(
    *,
    state_dir,
    catalog,
    network,
    labels,
    site_config_dir,
    name_prefix,
    per_server_origins=True,
    domain=TEST_DOMAIN,
    image_namespace=None,
) -> Lab:
    """A lab on its own ports and network, HTTPS with a CA of its own, its host names under a test domain.
    ``image_namespace``: where its teachlab-courses service builds (the session's, to reuse its base image)."""
    lab = Lab(
        state_dir=state_dir,
        catalog_path=catalog,
        ports=LabPorts(
            public=free_port(),
            http_redirect=free_port(),
            proxy_api=free_port(),
            hub=free_port(),
            oidc=free_port(),
            gpu_service=free_port(),
            ssh=free_port(),
            ssh_service=free_port(),
            warmer=free_port(),
            courses_service=free_port(),
            work_service=free_port(),
        ),
        network=network,
        extra_labels=labels,
        accounts=TEST_ACCOUNTS,
        today=TODAY,
        domain=domain,
        per_server_origins=per_server_origins,
        auth_refresh_seconds=AUTH_REFRESH_SECONDS,
        name_prefix=name_prefix,
        extra_env={
            "TEACHLAB_CULL_EVERY": "10",
            "TEACHLAB_POLL_INTERVAL": "5",
            "TEACHLAB_GPU_INVENTORY": json.dumps(FAKE_GPU_INVENTORY),
            "TEACHLAB_SITE_CONFIG_DIR": str(site_config_dir),
            "TEACHLAB_SSH_ACTIVITY_INTERVAL": "3",
            "TEACHLAB_WARM_UNUSED_MINUTES": str(WARM_UNUSED_MINUTES),
            **({"TEACHLAB_IMAGE_NAMESPACE": image_namespace} if image_namespace else {}),
        },
    )
    try:
        lab.up()
    except BaseException:
        lab.down()  # a hub that did not start must not leave the provider and the proxy running
        raise
    return lab


def stop_test_lab(lab: Lab, docker_client, labels) -> None:
    """Stop the lab, then take away what it made on the node: containers, firewall chains, sized volumes."""
    lab.down()
    # This lab's containers only: a second lab of the same session (a control lab) keeps the main lab's servers.
    selector = [f"{key}={value}" for key, value in labels.items()] + [f"{Labels.LAB}={lab.hub_settings().lab_id}"]
    for container in docker_client.containers.list(all=True, filters={"label": selector}):
        container.remove(force=True)
    firewall.remove(lab.student_network())
    store = VolumeStore(lab.layout.volumes)
    for name in store.names():
        store.remove(name)


# Short, so the revocation tests see a refresh within seconds; production's default is 300 s.
AUTH_REFRESH_SECONDS = 5


@pytest.fixture(scope="session")
def lab(docker_client, build_settings, hub_courses, hub_catalog, session_id, session_labels, site_config_dir):
    """The running lab; its containers, volumes and network carry the session label. Its domain resolves to
    loopback in this process, and requests trust its CA."""
    with names_on_loopback(TEST_DOMAIN):
        lab = start_test_lab(
            state_dir=build_settings.state_dir,
            catalog=hub_catalog,
            network=f"teachlab-test-{session_id}",
            labels=session_labels,
            site_config_dir=site_config_dir,
            name_prefix=f"tl{session_id}",
            image_namespace=build_settings.image_namespace,
        )
        os.environ["REQUESTS_CA_BUNDLE"] = str(lab.certificates.ca_certificate)
        yield lab
        stop_test_lab(lab, docker_client, session_labels)


@pytest.fixture(scope="session")
def users(lab):
    """Logged-in users by name, logged in once per session on first use."""
    return signed_in_users(lab)


@pytest.fixture
def hub_log_on_failure(request, lab):
    """After a failed test, print the end of the hub's log."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"\n===== hub log =====\n{lab.hub.tail(80)}")
