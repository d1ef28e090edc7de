"""The pictures of docs/students.md and docs/instructors.md, taken from the real lab by a real browser.

Each step is a check first (the page shows what the guide says it shows) and a screenshot second, saved
under docs/img/ with the name the guide uses; tests/unit/test_guides.py fails when a guide names a
picture that is not there. Run this module after a UI change and commit the new pictures.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from support.browser import expect_jupyterlab, goto
from support.ssh import KeysPage, OpenSsh, make_key

pytestmark = [pytest.mark.browser, pytest.mark.hub, pytest.mark.docker]

STUDENT = "holly"  # in two courses, so the home page shows a list; no other browser test signs her in
INSTRUCTOR = "prof"
COURSE = "intro-python"
SPAWN_TIMEOUT_MS = 120_000


@pytest.fixture
def guide_pictures(repo_root):
    folder = repo_root / "docs" / "img"
    folder.mkdir(parents=True, exist_ok=True)

    def take(page, name: str, **kwargs) -> None:
        page.screenshot(path=folder / f"{name}.png", **kwargs)

    return take


@pytest.fixture
def servers_stopped_afterwards(users):
    yield
    for name in (STUDENT, INSTRUCTOR):
        users(name).ensure_stopped(COURSE)


def sign_in(page, lab, username: str, picture=None) -> None:
    goto(page, f"{lab.public_url}/hub/login")
    if picture:
        picture(page, "student-login")
    page.get_by_role("button", name="Sign in with University login").click()
    page.wait_for_url(f"{lab.issuer}/**")
    page.locator("#username").fill(username)
    page.locator("#password").fill(lab.password(username))
    if picture:
        picture(page, "student-university-login")
    page.locator("button#login").click()
    page.wait_for_url(f"{lab.public_url}/hub/home")


@pytest.mark.usefixtures("servers_stopped_afterwards", "print_container_logs_on_failure", "hub_log_on_failure")
def test_student_guide_pictures(lab, users, browser_context, guide_pictures, tmp_path):
    page = browser_context.new_page()
    sign_in(page, lab, STUDENT, picture=guide_pictures)

    expect(page.locator(f"tr#course-{COURSE} .course-status")).to_have_text("stopped")
    expect(page.locator("#ssh-keys-link")).to_be_visible()
    guide_pictures(page, "student-home")

    page.locator(f"a#start-{COURSE}").click()
    page.wait_for_url(re.compile(rf"/user/{STUDENT}/{COURSE}/lab"), timeout=SPAWN_TIMEOUT_MS)
    expect_jupyterlab(page, SPAWN_TIMEOUT_MS)
    guide_pictures(page, "student-jupyterlab")

    # The SSH keys page: paste the public key, add it.
    key = make_key(tmp_path, "holly_laptop")
    keys = browser_context.new_page()
    goto(keys, f"{lab.public_url}/hub/home")
    keys.locator("#ssh-keys-link").click()
    keys.wait_for_url(lab.service_url("teachlab-ssh"))
    keys.locator("#public-key").fill(key.with_suffix(".pub").read_text())
    keys.locator("#add-ssh-key").click()
    expect(keys.locator("#ssh-key-message")).to_contain_text("Added ssh-ed25519 key")
    expect(keys.locator(f"#ssh-course-{COURSE}")).to_contain_text(f"User {STUDENT}+{COURSE}")
    guide_pictures(keys, "student-ssh-keys", full_page=True)

    # A file sent with sftp shows in JupyterLab's file browser.
    upload = tmp_path / "homework-from-my-laptop.py"
    upload.write_text("print('sent over SSH')\n")
    sent = OpenSsh(lab, tmp_path).sftp(f"{STUDENT}+{COURSE}", f"put {upload}\n", key=key)
    assert sent.returncode == 0, sent.stderr
    page.reload()
    expect(page.locator(".jp-DirListing-content").get_by_text(upload.name, exact=True)).to_be_visible(timeout=60_000)
    guide_pictures(page, "student-file-from-ssh")


@pytest.mark.usefixtures("servers_stopped_afterwards", "print_container_logs_on_failure", "hub_log_on_failure")
def test_instructor_guide_pictures(lab, users, browser_context, guide_pictures):
    users(STUDENT).start_and_wait(COURSE)
    page = browser_context.new_page()
    sign_in(page, lab, INSTRUCTOR)
    row = page.locator(f"tr#course-{COURSE}")
    expect(row.locator(".badge")).to_have_text("instructor")
    expect(row.locator(f"#course-page-{COURSE}")).to_have_text("environment and class")
    guide_pictures(page, "instructor-home")

    # Opening a student's server: the hub asks the instructor to confirm, then shows the student's JupyterLab.
    goto(page, lab.server_url(STUDENT, COURSE) + "lab")
    authorize = page.get_by_role("button", name="Authorize")
    expect(authorize).to_be_visible(timeout=60_000)
    guide_pictures(page, "instructor-open-student-server")
    authorize.click()
    page.wait_for_url(re.compile(rf"/user/{STUDENT}/{COURSE}/lab"), timeout=SPAWN_TIMEOUT_MS)
    expect_jupyterlab(page, SPAWN_TIMEOUT_MS)
    guide_pictures(page, "instructor-student-jupyterlab")


def test_keys_page_for_a_person_without_courses_still_loads(users, lab):
    """The page renders for anyone signed in (admins have no course)."""
    assert 'id="no-ssh-keys"' in KeysPage(users("admin")).open().text
