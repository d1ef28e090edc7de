"""Revocation and roles that follow the catalog, with the real provider and hub.

The lab refreshes a person's groups when their last refresh is older than AUTH_REFRESH_SECONDS (5 s in the test
lab, 300 s by default): before every start, and for running servers at each poll (every 5 s here).
"""

from __future__ import annotations

import time

import pytest
import requests
import yaml

from support.lab_fixtures import AUTH_REFRESH_SECONDS

pytestmark = [
    pytest.mark.hub,
    pytest.mark.docker,
    pytest.mark.usefixtures("print_container_logs_on_failure", "hub_log_on_failure"),
]

POLL_SECONDS = 5
WITHIN = AUTH_REFRESH_SECONDS + 2 * POLL_SECONDS + 15  # refresh age, two polls, the stop itself


def _eventually(condition, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s"
        time.sleep(0.5)


def test_a_student_removed_from_the_course_group_loses_it_within_the_refresh_age(users, lab, docker_client):
    rita = users("rita")
    earlier_token = rita.token  # made while she was enrolled
    rita.start_and_wait("intro-python")
    container = lab.names.container("rita", "intro-python")
    removed_at = time.monotonic()
    lab.set_groups("rita", [])  # the university takes her out of cs101
    try:
        _eventually(lambda: not rita.server("intro-python"), "rita's running server stopped", WITHIN)
        _eventually(lambda: not docker_client.containers.list(all=True, filters={"name": container}), "container gone", 30)
        assert time.monotonic() - removed_at < WITHIN + 30
        home = rita.session.get(f"{lab.public_url}/hub/home")
        assert "no longer have access to Introduction to Python" in home.text
        # A start with the token made earlier is refused, and so is one from the browser session.
        by_token = requests.post(
            f"{lab.public_url}/hub/api/users/rita/servers/intro-python",
            headers={"Authorization": f"token {earlier_token}"},
            timeout=60,
        )
        assert by_token.status_code == 400 and "not enrolled" in by_token.json()["message"]
        by_browser = rita.session.get(f"{lab.public_url}/hub/spawn/rita/intro-python")
        assert by_browser.status_code == 400 and "not enrolled" in by_browser.text
        assert not docker_client.containers.list(filters={"name": container})
    finally:
        lab.set_groups("rita", ["cs101-students"])


def test_an_instructor_added_to_course_yaml_gains_access_and_a_removed_one_loses_it(users, lab, hub_catalog):
    tom, ivy = users("tom"), users("ivy")
    ivy.start_and_wait("quick-idle")
    course_file = hub_catalog / "quick-idle" / "course.yaml"
    original = course_file.read_text()
    data = yaml.safe_load(original)
    data["instructors"] = {"users": ["tom"], "groups": data["instructors"].get("groups", [])}
    try:
        assert tom.api("GET", "/users/ivy").status_code in (403, 404)
        course_file.write_text(yaml.safe_dump(data, sort_keys=False))
        _eventually(lambda: tom.api("GET", "/users/ivy").status_code == 200, "tom's new instructor role", 40)
        assert tom.open_server("ivy", "quick-idle").status_code == 200
        course_file.write_text(original)
        _eventually(lambda: tom.api("GET", "/users/ivy").status_code in (403, 404), "tom's role taken away", 40)
        assert tom.stop("quick-idle", user="ivy").status_code in (403, 404)
        assert ivy.server("quick-idle").get("ready")
    finally:
        course_file.write_text(original)
        ivy.ensure_stopped("quick-idle")
