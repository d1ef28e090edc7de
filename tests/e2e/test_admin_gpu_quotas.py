"""Admins set GPU quotas in the browser (teachlab-gpu) and see the charts; the CLI and students see the result.

The real lab with four declared GPUs that do not exist (the stand-in nvidia-container-runtime-hook lets GPU
containers start; see docs/gpu.md). quinn (gpu-testers) takes gpu-course and has used no GPU before this test;
the quotas this test sets are put back afterwards. Pictures go to docs/img/ for docs/admins.md and
docs/students.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from support.a11y import assert_keyboard_and_screen_reader_basics
from support.accounts import FAKE_GPU_INVENTORY
from support.browser import VIEWPORT, goto, sign_in_at_the_provider

pytestmark = [pytest.mark.browser, pytest.mark.hub, pytest.mark.docker]

COURSE = "gpu-course"
STUDENT = "quinn"
ADMIN = "admin"
SERVICE = "teachlab-gpu"


@pytest.fixture
def ledger(lab):
    from spawner.gpu import GpuLedger

    ledger = GpuLedger.open(lab.hub_settings().ledger_url)
    yield ledger
    ledger.close()


@pytest.fixture
def quotas_put_back(ledger):
    """gpu-course's limits and quinn's override as they were before the test."""
    course = next((q for q in ledger.course_quotas() if q["course"] == COURSE), None)
    yield
    ledger.set_course_quota(
        COURSE,
        max_concurrent_gpus=course["max_concurrent_gpus"] if course else None,
        gpu_hours_per_student=course["gpu_hours_per_student"] if course else None,
        actor="tests",
    )
    ledger.set_user_override(STUDENT, COURSE, gpu_hours=None, max_gpus=None, actor="tests")


@pytest.fixture
def pictures(repo_root):
    folder = repo_root / "docs" / "img"

    def take(page, name: str, **kwargs) -> None:
        page.screenshot(path=folder / f"{name}.png", **kwargs)

    return take


def teachlab_cli(lab, *args) -> str:
    env = {**os.environ, "TEACHLAB_STATE_DIR": str(lab.state_dir), "TEACHLAB_GPU_INVENTORY": json.dumps(FAKE_GPU_INVENTORY)}
    result = subprocess.run([sys.executable, "-m", "spawner.cli", *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the CLI table's row that starts with ``first_cell``."""
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [first_cell])


def spawn_form_hours_left(page, lab) -> str:
    goto(page, f"{lab.public_url}/hub/spawn/{STUDENT}/{COURSE}")
    return page.locator("#gpu-hours-remaining").inner_text()


@pytest.mark.usefixtures("quotas_put_back", "hub_log_on_failure", "print_container_logs_on_failure")
def test_an_admin_sets_quotas_in_the_forms_the_cli_and_the_students_spawn_form_show_them(
    lab, users, chromium_browser, ledger, pictures
):
    quinn = users(STUDENT)
    admin_context, student_context = (chromium_browser.new_context(viewport=VIEWPORT) for _ in range(2))
    for context in (admin_context, student_context):
        context.set_default_timeout(30_000)
    try:
        page = admin_context.new_page()
        goto(page, f"{lab.public_url}/hub/login")
        sign_in_at_the_provider(page, lab, ADMIN)
        goto(page, lab.service_url(SERVICE))
        expect(page.get_by_role("heading", name="GPUs", level=1)).to_be_visible()
        expect(page.locator("#login_widget")).to_contain_text(ADMIN)  # the hub's navigation bar
        assert_keyboard_and_screen_reader_basics(page)

        # The course's limits: labelled fields, saved with the form's XSRF token, audited under the admin's name.
        form = page.locator("#course-quota-form")
        form.get_by_label("Course", exact=True).select_option(COURSE)
        form.get_by_label("GPUs the course's servers may hold at once").fill("3")
        form.get_by_label("GPU-hours per student this term").fill("12.5")
        form.get_by_role("button", name="Save the course's limits").click()
        expect(page.locator("#teachlab-message")).to_contain_text(f"{COURSE}: 3 GPUs at once, 12.5 GPU-hours per student")
        expect(page.locator(f'#course-quotas tr[data-course="{COURSE}"] .hours')).to_have_text("12.5")
        pictures(page, "admin-gpu-quota-saved")
        entry = ledger.audit_log(limit=1)[0]
        assert (entry.actor, entry.action, entry.new_value) == (
            ADMIN,
            "set course quota",
            {"max_concurrent_gpus": 3, "gpu_hours_per_student": 12.5},
        )
        assert table_row(teachlab_cli(lab, "gpu", "quota", "show", COURSE), COURSE) == [COURSE, "3", "12.5"]

        # quinn's spawn form shows the new allowance.
        student = student_context.new_page()
        goto(student, f"{lab.public_url}/hub/login")
        sign_in_at_the_provider(student, lab, STUDENT)
        assert "You have 12.5 GPU-hours left this term." in " ".join(spawn_form_hours_left(student, lab).split())

        # One student's own limit, then the form refuses nonsense with one line and changes nothing.
        form = page.locator("#student-quota-form")
        form.get_by_label("Course", exact=True).select_option(COURSE)
        form.get_by_label("Student (username)").fill(STUDENT)
        form.get_by_label("GPU-hours this term").fill("3")
        form.get_by_role("button", name="Save the student's limits").click()
        expect(page.locator("#teachlab-message")).to_contain_text(f"{STUDENT} in {COURSE}: 3 GPU-hours")
        assert table_row(teachlab_cli(lab, "gpu", "quota", "show", COURSE), STUDENT) == [STUDENT, COURSE, "3.0", "course's"]
        assert "You have 3.0 GPU-hours left this term." in " ".join(spawn_form_hours_left(student, lab).split())
        # quinn's own GPU page (Services -> GPUs) says the same, and only about quinn.
        goto(student, lab.service_url(SERVICE))
        expect(student.get_by_role("heading", name="Your GPU time this term", level=1)).to_be_visible()
        expect(student.locator(f'#my-gpu-usage tr[data-course="{COURSE}"] td').nth(2)).to_have_text("3.00")
        expect(student.locator("#course-quota-form")).to_have_count(0)
        pictures(student, "student-gpu-time")

        page.locator("#course-quota-form").evaluate("form => form.noValidate = true")  # past the browser's own check
        form = page.locator("#course-quota-form")
        form.get_by_label("Course", exact=True).select_option(COURSE)
        form.get_by_label("GPU-hours per student this term").fill("-2")
        form.get_by_role("button", name="Save the course's limits").click()
        expect(page.locator("#teachlab-message")).to_have_text(
            "Nothing was changed: GPU-hours per student: '-2' must be 0 or more (leave it empty for no limit)"
        )
        assert ledger.quota_for("nobody", COURSE).gpu_hours == 12.5

        # A form posted without the page's XSRF token (as another site would) is refused and changes nothing.
        status = page.evaluate(
            """async ([url, course]) => (await fetch(url, {method: "POST", body: new URLSearchParams({course: course,
                gpu_hours_per_student: "999"})})).status""",
            [lab.service_url(SERVICE) + "quotas/course", COURSE],
        )
        assert status == 403
        assert ledger.quota_for("nobody", COURSE).gpu_hours == 12.5

        # The charts: quinn holds a GPU now; the last day's chart and its summary say so.
        quinn.start_and_wait(COURSE)
        goto(page, lab.service_url(SERVICE))
        expect(page.locator("#held-summary")).to_contain_text("Now 1 of 4 GPUs are held")
        expect(page.locator("#held-chart canvas")).to_be_visible()
        expect(page.locator("#term-usage-chart canvas")).to_be_visible()
        expect(page.locator(f'#term-usage-summary tr[data-course="{COURSE}"]')).to_be_visible()
        page.locator("#charts-title").scroll_into_view_if_needed()
        pictures(page, "admin-gpu-charts")
        goto(page, lab.service_url(SERVICE))
        pictures(page, "admin-gpu-page", full_page=True)
    finally:
        quinn.ensure_stopped(COURSE)
        admin_context.close()
        student_context.close()
