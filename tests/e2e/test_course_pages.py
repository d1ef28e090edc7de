"""Instructors in the browser (teachlab-courses): publish a course environment, follow the class, roll back.

The real lab: the login provider, the hub, the courses service and its confined builder (the mirror proxy on
an internal network), real Chromium. The course is ``env-lab`` of the test catalog (a copy of data-analysis):
lena teaches it, nora takes it, olga is listed but never signs in; prof teaches other courses only. The
tests run in file order and share the course's history: v1 is published by a fixture, the browser publishes
v2 (a package more), the class page sees nora's server on v1 ("older than current"), a rollback makes v1
current again. Pictures of each page go to docs/img/ for docs/instructors.md.

Publishes take minutes on a 2-core machine: one real package change is published; the other publishes
reuse what the build cache and the registry already hold.
"""

from __future__ import annotations

import re
import time

import pytest
import requests
import yaml
from playwright.sync_api import expect

from support.a11y import assert_keyboard_and_screen_reader_basics
from support.browser import expect_jupyterlab, goto, sign_in_at_the_provider

pytestmark = [pytest.mark.browser, pytest.mark.hub, pytest.mark.docker]

COURSE = "env-lab"
TITLE = "Environment Lab"
INSTRUCTOR = "lena"
OTHER_INSTRUCTOR = "prof"  # teaches intro-python and others, not env-lab
STUDENT = "nora"
NEVER_SIGNED_IN = "olga"
NEW_PACKAGE, NEW_VERSION = "toolz", "1.0.0"  # pure Python, no dependencies: a small, quick change
PUBLISH_TIMEOUT_MS = 600_000
SPAWN_TIMEOUT_MS = 120_000
KERNEL_TIMEOUT_MS = 60_000
SERVICE = "teachlab-courses"


@pytest.fixture(scope="module")
def registry(lab):
    from spawner.images.registry import VersionRegistry

    return VersionRegistry(lab.layout.courses)


@pytest.fixture(scope="module")
def env_lab_v1(docker_client, build_settings, hub_courses, hub_catalog, registry):
    """env-lab published once (v1) as an admin would, from the catalog's environment.yml."""
    from spawner.catalog import load_catalog
    from spawner.images.publish import publish_course

    if registry.read(COURSE).current is None:
        publish_course(load_catalog(hub_catalog).courses[COURSE], settings=build_settings, client=docker_client, actor="admin")
    return registry.read(COURSE).current


@pytest.fixture
def pictures(repo_root):
    folder = repo_root / "docs" / "img"
    folder.mkdir(parents=True, exist_ok=True)

    def take(page, name: str, **kwargs) -> None:
        page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus ring left by a check
        page.screenshot(path=folder / f"{name}.png", **kwargs)

    return take


def course_page_url(lab) -> str:
    return f"{lab.service_url(SERVICE)}courses/{COURSE}/"


def environment_text(hub_catalog) -> str:
    return (hub_catalog / COURSE / "environment.yml").read_text()


def with_package(text: str, requirement: str) -> str:
    """environment.yml with one more entry in its pip list."""
    data = yaml.safe_load(text)
    pip = next(entry for entry in data["dependencies"] if isinstance(entry, dict))
    pip["pip"].append(requirement)
    return yaml.safe_dump(data, sort_keys=False)


def signed_in(browser_context, lab, username):
    page = browser_context.new_page()
    goto(page, f"{lab.public_url}/hub/login")
    sign_in_at_the_provider(page, lab, username)
    return page


def api(user, lab, method, path, **kwargs):
    """The courses service's API with a person's own hub token."""
    return requests.request(
        method,
        f"{lab.service_url(SERVICE)}api/courses/{path}",
        headers={"Authorization": f"token {user.token}"},
        timeout=60,
        **kwargs,
    )


@pytest.mark.usefixtures("hub_log_on_failure")
def test_a_broken_environment_shows_its_one_line_problem_and_changes_nothing(
    lab, users, browser_context, env_lab_v1, registry, hub_catalog, pictures
):
    before_text, before = environment_text(hub_catalog), registry.read(COURSE)
    page = signed_in(browser_context, lab, INSTRUCTOR)

    # The home page leads the instructor to the course's page.
    page.locator(f"#course-page-{COURSE}").click()
    page.wait_for_url(course_page_url(lab))
    expect(page.get_by_role("heading", level=1)).to_contain_text(TITLE)
    expect(page.locator(f"#version-{env_lab_v1} .current-marker")).to_have_text("current")
    editor = page.get_by_label("environment.yml")
    expect(editor).to_have_value(before_text)

    # A second pip list is a mistake `teachlab course validate` reports in one line; Check and Publish both show it.
    broken = before_text + "  - pip:\n      - six\n"
    editor.fill(broken)
    page.get_by_role("button", name="Check").click()
    problem = page.locator("#environment-problem-list li")
    expect(problem).to_have_count(1)
    expect(problem).to_have_text(re.compile(rf"^\S*{COURSE}/environment\.yml:dependencies\[\d\]: .*pip", re.IGNORECASE))
    line = problem.inner_text()
    page.get_by_role("button", name="Publish").click()
    expect(page.locator("#environment-problems")).to_contain_text("Nothing was published")
    expect(problem).to_have_text(line)
    pictures(page, "instructor-broken-environment", full_page=True)

    # The same line as the CLI's (the catalog's path, then the YAML path, the problem and the fix).
    checked = api(users(INSTRUCTOR), lab, "POST", f"{COURSE}/validate", json={"environment": broken}).json()
    assert checked["valid"] is False and checked["problems"] == [line]

    assert environment_text(hub_catalog) == before_text
    after = registry.read(COURSE)
    assert (after.current, after.versions, after.history) == (before.current, before.versions, before.history)


@pytest.mark.usefixtures("hub_log_on_failure")
def test_an_instructor_of_another_course_gets_403_on_its_pages_and_api(lab, users, browser_context, env_lab_v1, registry):
    prof = users(OTHER_INSTRUCTOR)
    before = registry.read(COURSE)

    # API: every endpoint of env-lab refuses prof, and nothing changes.
    refusals = {
        "versions": api(prof, lab, "GET", f"{COURSE}/versions"),
        "validate": api(prof, lab, "POST", f"{COURSE}/validate", json={"environment": "name: x\n"}),
        "publish": api(prof, lab, "POST", f"{COURSE}/publish", json={"environment": "name: x\n"}),
        "rollback": api(prof, lab, "POST", f"{COURSE}/rollback", json={"version": env_lab_v1}),
        "class": api(prof, lab, "GET", f"{COURSE}/class"),
        "start": api(prof, lab, "POST", f"{COURSE}/class/{STUDENT}/start"),
    }
    assert {name: response.status_code for name, response in refusals.items()} == dict.fromkeys(refusals, 403)
    assert "only its instructors" in refusals["publish"].json()["message"]
    assert registry.read(COURSE) == before
    # prof's own course answers him.
    assert api(prof, lab, "GET", "intro-python/versions").status_code == 200

    # Pages: the publish page and the class page of env-lab are 403 pages in the hub's frame.
    page = signed_in(browser_context, lab, OTHER_INSTRUCTOR)
    for url in (course_page_url(lab), course_page_url(lab) + "class"):
        response = goto(page, url)
        assert response.status == 403, url
        expect(page.locator("#error-title")).to_contain_text("403")
        expect(page.locator("#error-message")).to_contain_text(f"{COURSE}")
        expect(page.locator("#login_widget")).to_contain_text(OTHER_INSTRUCTOR)  # the hub's navigation bar
    assert goto(page, f"{lab.service_url(SERVICE)}courses/intro-python/").status == 200
    goto(page, lab.service_url(SERVICE))  # the service's index lists prof's courses only
    expect(page.locator("#course-intro-python")).to_be_visible()
    expect(page.locator(f"#course-{COURSE}")).to_have_count(0)


@pytest.mark.usefixtures("hub_log_on_failure", "print_container_logs_on_failure")
def test_an_instructor_publishes_a_new_package_watches_the_log_and_imports_it(
    lab, users, browser_context, env_lab_v1, registry, hub_catalog, pictures
):
    # nora works on the current version before the publish (the class page shows it as older afterwards).
    nora = users(STUDENT)
    nora.start_and_wait(COURSE)

    page = signed_in(browser_context, lab, INSTRUCTOR)
    goto(page, course_page_url(lab))
    assert_keyboard_and_screen_reader_basics(page)
    pictures(page, "instructor-course-environment", full_page=True)
    editor = page.get_by_label("environment.yml")
    changed = with_package(editor.input_value(), f"{NEW_PACKAGE}=={NEW_VERSION}")
    editor.fill(changed)
    page.get_by_role("button", name="Check").click()
    expect(page.locator("#environment-valid")).to_contain_text("No problems")

    started = time.monotonic()
    page.get_by_role("button", name="Publish").click()
    log = page.locator("#publish-log")
    # The log streams while the build runs: the confined build's own lines, then the smoke test and the scan.
    expect(log).to_contain_text("through the lab's mirror proxy", timeout=60_000)
    expect(log).to_contain_text(f"build {COURSE} environment", timeout=120_000)
    expect(page.get_by_role("button", name="Publish")).to_be_disabled()
    expect(log).to_contain_text("smoke test passed", timeout=PUBLISH_TIMEOUT_MS)
    pictures(page, "instructor-publish-log", full_page=True)
    expect(page.locator("#publish-outcome")).to_contain_text("is published and current", timeout=PUBLISH_TIMEOUT_MS)
    print(f"publish from the browser: {time.monotonic() - started:.1f} s")
    expect(page.locator("#publish-smoke")).to_contain_text(NEW_PACKAGE)
    expect(page.locator("#publish-scan")).to_contain_text("Scan:")

    record = registry.read(COURSE)
    new = record.current
    assert new != env_lab_v1 and record.version(new).published_by == INSTRUCTOR
    assert (
        record.history[-1].actor,
        record.history[-1].action,
        record.history[-1].from_version,
        record.history[-1].to_version,
    ) == (
        INSTRUCTOR,
        "publish",
        env_lab_v1,
        new,
    )
    expect(page.locator(f"#version-{new} .current-marker")).to_have_text("current")
    expect(page.locator(f"#rollback-{env_lab_v1}")).to_be_visible()
    assert environment_text(hub_catalog) == changed
    pictures(page, "instructor-course-versions", full_page=True)

    # lena starts her own server of the course: the new package imports in the course kernel.
    lena = users(INSTRUCTOR)
    lena.ensure_stopped(COURSE)
    goto(page, f"{lab.public_url}/hub/home")
    page.locator(f"a#start-{COURSE}").click()
    page.wait_for_url(re.compile(rf"/user/{INSTRUCTOR}/{COURSE}/lab"), timeout=SPAWN_TIMEOUT_MS)
    page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{TITLE}"]').click(timeout=SPAWN_TIMEOUT_MS)
    expect(page.get_by_role("button", name=f"{TITLE} | Idle", exact=True)).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
    cells = page.locator(".jp-NotebookPanel:visible .jp-Notebook-cell")
    cell = cells.nth(cells.count() - 1)  # pinned by position: Shift+Enter adds a new cell below it
    cell.locator(".cm-content").click()
    cell.locator(".cm-content").fill(f"import {NEW_PACKAGE}; print({NEW_PACKAGE}.__version__)")
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-OutputArea-output")).to_have_text(NEW_VERSION, timeout=KERNEL_TIMEOUT_MS)
    assert lena.server(COURSE)["ready"]
    lena.stop(COURSE)


@pytest.mark.usefixtures("hub_log_on_failure", "print_container_logs_on_failure")
def test_the_class_page_shows_the_students_and_starts_stops_and_opens_a_server(
    lab, users, browser_context, env_lab_v1, registry, pictures
):
    nora = users(STUDENT)
    nora.start_and_wait(COURSE)
    nora_version = lab_container_version(lab, STUDENT)
    current = registry.read(COURSE).current

    page = signed_in(browser_context, lab, INSTRUCTOR)
    goto(page, course_page_url(lab) + "class")
    row = page.locator(f"#student-{STUDENT}")
    expect(row.locator(".status")).to_have_text("running")
    expect(row.locator(".version")).to_contain_text(nora_version)
    if nora_version != current:
        expect(row.locator(".version")).to_contain_text("older than current")
    expect(page.locator(f"#student-{NEVER_SIGNED_IN} .status")).to_have_text("never signed in")
    expect(row.locator(".gpus")).to_have_text("0")
    assert_keyboard_and_screen_reader_basics(page)
    pictures(page, "instructor-class-page", full_page=True)

    # Stop and start nora's server from the page: the hub does it with lena's own rights.
    page.locator(f"#stop-{STUDENT}").click()
    expect(row.locator(".status")).to_have_text("stopped", timeout=90_000)
    assert nora.server(COURSE) == {}
    page.locator(f"#start-{STUDENT}").click()
    expect(row.locator(".status")).to_have_text("running", timeout=SPAWN_TIMEOUT_MS)

    # Open it: the hub asks lena to confirm, then shows nora's JupyterLab.
    with page.context.expect_page() as opened:
        page.locator(f"#open-{STUDENT}").click()
    student_page = opened.value
    authorize = student_page.get_by_role("button", name="Authorize")
    expect(authorize).to_be_visible(timeout=60_000)
    authorize.click()
    student_page.wait_for_url(re.compile(rf"/user/{STUDENT}/{COURSE}/lab"), timeout=SPAWN_TIMEOUT_MS)
    expect_jupyterlab(student_page, SPAWN_TIMEOUT_MS)

    # The same rights through the API, and a student who is not in the course is no one to start.
    lena = users(INSTRUCTOR)
    assert api(lena, lab, "POST", f"{COURSE}/class/alice/start").status_code == 404
    nora.stop(COURSE)
    nora.wait_until_stopped(COURSE)


@pytest.mark.usefixtures("hub_log_on_failure")
def test_one_click_rollback_and_one_publish_at_a_time(lab, users, browser_context, env_lab_v1, registry, hub_catalog):
    lena = users(INSTRUCTOR)
    page = signed_in(browser_context, lab, INSTRUCTOR)
    goto(page, course_page_url(lab))
    before = registry.read(COURSE)
    if before.current == env_lab_v1:
        pytest.skip("only one version of env-lab: run the publish test first")

    page.locator(f"#rollback-{env_lab_v1}").click()
    expect(page.locator(f"#version-{env_lab_v1} .current-marker")).to_have_text("current")
    after = registry.read(COURSE)
    assert after.current == env_lab_v1
    assert (after.history[-1].actor, after.history[-1].action, after.history[-1].from_version, after.history[-1].to_version) == (
        INSTRUCTOR,
        "rollback",
        before.current,
        env_lab_v1,
    )
    v1_environment = registry.version_file(COURSE, env_lab_v1, "environment").read_text()
    assert environment_text(hub_catalog) == v1_environment
    expect(page.get_by_label("environment.yml")).to_have_value(v1_environment)

    # Two publishes of one course at once: the second is refused with who runs the first; nothing half-written.
    newer = before.version(before.current)
    environment = registry.version_file(COURSE, newer.version, "environment").read_text()
    first = api(lena, lab, "POST", f"{COURSE}/publish", json={"environment": environment})
    second = api(lena, lab, "POST", f"{COURSE}/publish", json={"environment": environment})
    assert first.status_code == 202, first.text
    assert second.status_code == 409 and f"a publish of {COURSE} by {INSTRUCTOR} is running" in second.json()["message"]
    rollback = api(lena, lab, "POST", f"{COURSE}/rollback", json={"version": env_lab_v1})
    assert rollback.status_code == 409
    deadline = time.monotonic() + 300
    while (versions := api(lena, lab, "GET", f"{COURSE}/versions").json())["job"]["state"] == "running":
        assert time.monotonic() < deadline, versions["job"]
        time.sleep(1)
    assert versions["job"]["state"] == "succeeded", versions["job"]
    assert versions["job"]["result"]["outcome"] == "restored"  # the same environment as the newer version: reused
    assert registry.read(COURSE).current == newer.version
    assert len(registry.read(COURSE).versions) == len(before.versions)


def lab_container_version(lab, username: str) -> str:
    """The version label of a user's running env-lab container (what the class page must show)."""
    import docker

    container = docker.from_env().containers.get(lab.names.container(username, COURSE))
    return container.labels["org.teachlab.version"]
