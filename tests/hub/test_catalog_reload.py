"""The live catalog: a new or edited course needs no hub restart, and a broken edit keeps the last good catalog."""

from __future__ import annotations

import shutil
import time

import pytest

from spawner.catalog import load_course
from spawner.images.publish import publish_course
from support.catalogs import copy_course

pytestmark = [
    pytest.mark.hub,
    pytest.mark.docker,
    pytest.mark.usefixtures("print_container_logs_on_failure", "hub_log_on_failure"),
]


def _eventually(condition, what: str, timeout: float = 40):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.5)


def test_a_new_course_an_edit_and_a_broken_edit_need_no_restart(
    lab, users, hub_catalog, repo_root, build_settings, docker_client
):
    folder = copy_course(repo_root, "intro-python", hub_catalog, new_slug="late-course", title="Late Course")
    alice = users("alice")
    hub_pid = lab.hub.pid()
    try:
        publish_course(load_course(folder), settings=build_settings, client=docker_client)
        home = lambda: alice.session.get(f"{lab.public_url}/hub/home").text  # noqa: E731
        _eventually(lambda: 'id="course-late-course"' in home(), "the new course on the home page")
        alice.start_and_wait("late-course")
        alice.stop("late-course")
        alice.wait_until_stopped("late-course")

        course_file = folder / "course.yaml"
        good = course_file.read_text()
        course_file.write_text(good.replace("title: Late Course", "title: Late Course, Renamed"))
        _eventually(lambda: "Late Course, Renamed" in home(), "the edited title on the home page")

        course_file.write_text(course_file.read_text() + "not_a_key: 1\n")
        _eventually(
            lambda: "course catalog not reloaded" in lab.hub.tail(200) and "not_a_key: unknown key" in lab.hub.tail(200),
            "the broken edit's problem in the hub log",
        )
        assert "Late Course, Renamed" in home()  # the last good catalog stays in use
        alice.start_and_wait("late-course")
        alice.start_and_wait("intro-python")
        assert lab.hub.pid() == hub_pid  # no restart happened
    finally:
        alice.ensure_stopped("late-course")
        shutil.rmtree(folder)
