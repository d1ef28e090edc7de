"""A student's day in a real browser: sign in, start the course, work in JupyterLab, stop, come back.

Everything goes through the doors a student uses: the hub's login page, the university's login form
(the real OIDC provider), the hub home page and its buttons, and JupyterLab. The course's kernel runs
Python 3.9 while the Jupyter server beside it runs a current jupyter-server and JupyterLab on Python 3.11. Each step leaves a
screenshot in test-output/<test name>/; the spawn times are printed and written to timings.json there.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import requests
from packaging.version import Version
from playwright.sync_api import expect  # a test dependency: missing fails the run instead of skipping this tier

from support.browser import expect_jupyterlab, goto, sign_in_at_the_provider

STUDENT = "gina"  # no other test signs gina in, so her server and work volume are this test's alone
COURSE = "intro-python"
COURSE_TITLE = "Introduction to Python"
WORK_FILE = "/home/jovyan/work/from-the-browser.txt"
NOTEBOOK_NAME = "from-the-browser.ipynb"
SERVER_PYTHON_CODE = (
    "import os, subprocess; server = os.readlink(f'/proc/{os.getppid()}/exe'); "
    "print('server Python', subprocess.run([server, '-c', 'import platform; print(platform.python_version())'], "
    "capture_output=True, text=True).stdout.strip())"
)
SPAWN_TIMEOUT_MS = 120_000
KERNEL_TIMEOUT_MS = 60_000
STOP_TIMEOUT_S = 60

pytestmark = [pytest.mark.browser, pytest.mark.hub, pytest.mark.docker]


class Screenshots:
    """Numbered screenshots of one page: 01-login.png, 02-home.png, ..."""

    def __init__(self, page, folder):
        self.page, self.folder, self.count = page, folder, 0

    def take(self, step: str) -> None:
        self.count += 1
        self.page.screenshot(path=self.folder / f"{self.count:02d}-{step}.png", full_page=True)


# -- the hub ------------------------------------------------------------------------------------------
def course_row(page, slug: str):
    return page.locator(f"tr#course-{slug}")


def wait_for_course_status(page, slug: str, status: str, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Reload the home page until the course's row shows ``status``.

    The hub renders the status cell; the home page's scripts only swap the buttons, so a reload is
    what shows the student the server's real state.
    """
    deadline = time.monotonic() + timeout_s
    status_cell = course_row(page, slug).locator(".course-status")
    while True:
        page.reload()
        shown = status_cell.inner_text().strip()
        if shown == status:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the home page shows {slug} as {shown!r}, not {status!r}, after {timeout_s:.0f} s")
        page.wait_for_timeout(500)  # the interval between two reloads


def stop_from_home(page, lab, slug: str) -> None:
    """Click stop on the home page and wait until the course shows as stopped."""
    goto(page, f"{lab.public_url}/hub/home")
    page.locator(f"a#stop-{slug}").click()
    # The start button comes back once the hub answered the stop request; reloading earlier would cancel it.
    expect(page.locator(f"a#start-{slug}")).to_be_visible(timeout=STOP_TIMEOUT_S * 1000)
    wait_for_course_status(page, slug, "stopped")


def start_from_home_and_wait_for_jupyterlab(page, username: str, slug: str) -> float:
    """Click start on the home page; return the seconds from the click until JupyterLab's launcher shows."""
    started = time.monotonic()
    page.locator(f"a#start-{slug}").click()
    page.wait_for_url(re.compile(rf"/user/{username}/{slug}/lab"), timeout=SPAWN_TIMEOUT_MS)
    expect_jupyterlab(page, SPAWN_TIMEOUT_MS)
    return time.monotonic() - started


# -- JupyterLab ---------------------------------------------------------------------------------------
def wait_for_idle_course_kernel(page) -> None:
    """Wait until the status bar shows the course kernel idle ("Introduction to Python | Idle").

    A cell run before the kernel is connected is dropped without a word, hence the wait.
    """
    expect(page.get_by_role("button", name=f"{COURSE_TITLE} | Idle", exact=True)).to_be_visible(timeout=KERNEL_TIMEOUT_MS)


def new_notebook_with_course_kernel(page) -> None:
    """Click the course's card in the launcher's "Notebook" section (the card is titled with the course)."""
    page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{COURSE_TITLE}"]').click()
    wait_for_idle_course_kernel(page)


def open_notebook_from_file_browser(page, name: str) -> None:
    page.locator(".jp-DirListing-content").get_by_text(name, exact=True).dblclick()
    expect(current_tab(page)).to_contain_text(name)
    wait_for_idle_course_kernel(page)


def current_tab(page):
    return page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-current")


def notebook_cells(page):
    return page.locator(".jp-NotebookPanel:visible .jp-Notebook-cell")


def run_in_last_cell(page, code: str):
    """Type ``code`` into the notebook's last cell and run it with Shift+Enter; return the cell's output area.

    Shift+Enter adds a new cell below, so the cell is pinned by its position before it runs.
    """
    cells = notebook_cells(page)
    cell = cells.nth(cells.count() - 1)
    editor = cell.locator(".cm-content")
    editor.click()
    editor.fill(code)
    page.keyboard.press("Shift+Enter")
    return cell.locator(".jp-OutputArea-output")


def save_untitled_notebook_as(page, name: str) -> None:
    """Ctrl+S; JupyterLab asks for a name when an untitled notebook is saved for the first time."""
    expect(current_tab(page)).to_have_class(re.compile(r"\bjp-mod-dirty\b"))
    page.keyboard.press("Control+s")
    rename = page.get_by_role("dialog").filter(has_text="Rename file")
    rename.get_by_placeholder("File name").fill(name)
    rename.get_by_role("button", name="Rename and Save").click()
    expect(current_tab(page)).to_contain_text(name)
    expect(current_tab(page)).not_to_have_class(re.compile(r"\bjp-mod-dirty\b"))


# -- the test -----------------------------------------------------------------------------------------
@pytest.fixture
def course_server_stopped_afterwards(users):
    """Stop the student's course server after the test, also when it failed half-way.

    Listed first in the test's fixtures, so it runs after the others saved screenshots and printed logs.
    """
    yield
    student = users(STUDENT)
    if student.server(COURSE):
        student.stop(COURSE)
        student.wait_until_stopped(COURSE, timeout=STOP_TIMEOUT_S)


@pytest.mark.usefixtures("course_server_stopped_afterwards", "print_container_logs_on_failure", "hub_log_on_failure")
def test_student_works_in_jupyterlab_and_finds_the_work_again_after_a_restart(lab, browser_context, output_dir):
    page = browser_context.new_page()
    screenshots = Screenshots(page, output_dir)
    timings: dict[str, float] = {}

    def record(name: str, seconds: float) -> None:
        timings[name] = round(seconds, 1)
        (output_dir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
        print(f"{name}: {seconds:.1f} s")

    # 1. The hub's login page sends the student to the university's login form and back.
    goto(page, f"{lab.public_url}/hub/login")
    screenshots.take("login")
    sign_in_at_the_provider(page, lab, STUDENT)

    # 2. The home page lists the course, stopped, with a start button.
    row = course_row(page, COURSE)
    expect(row.locator(".course-title")).to_have_text(COURSE_TITLE)
    expect(row.locator(".course-status")).to_have_text("stopped")
    expect(row.locator(f"a#start-{COURSE}")).to_be_visible()
    screenshots.take("home")

    # 3. Start: JupyterLab opens on the course's server.
    record("spawn-to-jupyterlab", start_from_home_and_wait_for_jupyterlab(page, STUDENT, COURSE))
    expect(page).to_have_url(re.compile(rf"/user/{STUDENT}/{COURSE}/lab"))
    screenshots.take("jupyterlab")

    # 4. A notebook with the course kernel runs the course's Python 3.9 and pandas.
    new_notebook_with_course_kernel(page)
    output = run_in_last_cell(page, "import sys, pandas; print(sys.version.split()[0], pandas.__version__)")
    expect(output).to_have_text(re.compile(r"^\s*3\.9\.\d+ \d+\.\d+\.\d+\s*$"), timeout=KERNEL_TIMEOUT_MS)
    screenshots.take("notebook-python-and-pandas")

    # 4b. Beside the kernel, the server: jupyter-server >= 2.21.1 and JupyterLab >= 4.6 on Python >= 3.11.
    #     The kernel's parent process is the Jupyter server: its Python is the one /proc names.
    server = requests.get(lab.server_url(STUDENT, COURSE) + "api", timeout=30).json()  # the version needs no sign-in
    assert Version(server["version"]) >= Version("2.21.1"), server
    lab_version = page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).appVersion")
    assert Version(lab_version) >= Version("4.6"), lab_version
    output = run_in_last_cell(page, SERVER_PYTHON_CODE)
    expect(output).to_have_text(re.compile(r"^\s*server Python 3\.(1[1-9]|[2-9]\d)\.\d+\s*$"), timeout=KERNEL_TIMEOUT_MS)
    record_versions = {
        "jupyter-server": server["version"],
        "jupyterlab": lab_version,
        "server-python": output.inner_text().split()[-1],
    }
    (output_dir / "server-versions.json").write_text(json.dumps(record_versions, indent=2) + "\n")

    # 5. Write a file into the work folder; save the notebook there too.
    output = run_in_last_cell(page, f"open({WORK_FILE!r}, 'w').write('written by {STUDENT}')")
    expect(output).to_have_text(str(len(f"written by {STUDENT}")), timeout=KERNEL_TIMEOUT_MS)
    save_untitled_notebook_as(page, NOTEBOOK_NAME)
    screenshots.take("notebook-saved")

    # 6. Stop from the home page, start again: the notebook and the file are still there.
    stop_from_home(page, lab, COURSE)
    screenshots.take("home-stopped")
    record("restart-to-jupyterlab", start_from_home_and_wait_for_jupyterlab(page, STUDENT, COURSE))
    screenshots.take("jupyterlab-again")
    open_notebook_from_file_browser(page, NOTEBOOK_NAME)
    expect(notebook_cells(page).first.locator(".jp-OutputArea-output")).to_have_text(re.compile(r"3\.9\.\d+"))
    output = run_in_last_cell(page, f"print(open({WORK_FILE!r}).read())")
    expect(output).to_have_text(f"written by {STUDENT}", timeout=KERNEL_TIMEOUT_MS)
    screenshots.take("work-after-restart")

    # 7. Stop again, so the server does not outlive the test.
    stop_from_home(page, lab, COURSE)
    screenshots.take("home-stopped-at-the-end")
