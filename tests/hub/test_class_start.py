"""The first minute of a class on the real lab: a warmed class, a hundred first starts at once, the timetable's
pre-warm, and the metrics an admin watches meanwhile.

The tests run in this file's order on purpose: the warmed class is set up first (``warmed_class``), the crowd
runs while its grace passes, and the warm servers' outcome is checked last.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
import requests

from spawner.core.contract import Scopes
from support.accounts import CROWD_STUDENTS, TIMETABLE_STUDENTS, WARM_STUDENTS
from support.lab_fixtures import WARM_UNUSED_MINUTES

pytestmark = pytest.mark.usefixtures("hub_log_on_failure")

CROWD_COURSE = "crowd-course"
IN_LINE = re.compile(r"you are \d+(st|nd|rd|th) in line, about \d+ s")


def metrics(lab, token: str) -> requests.Response:
    return requests.get(f"{lab.public_url}/hub/metrics", headers={"Authorization": f"token {token}"}, timeout=60)


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from Prometheus' text format (None when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(\{{{re.escape(wanted)}\}})? (\S+)$" if wanted else rf"^{re.escape(name)} (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match and (not wanted or match.group(1)):
            return float(match.groups()[-1])
    return None


def lab_metrics(lab) -> str:
    response = metrics(lab, lab.secrets()["metrics_token"])
    assert response.status_code == 200, response.text[:300]
    return response.text


def wait_for_metric(lab, name: str, expected: float, timeout: float = 120, at_least: bool = False, **labels: str) -> str:
    """The gauges follow the hub's state within a catalog refresh (seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        text = lab_metrics(lab)
        value = sample(text, name, **labels)
        reached = value is not None and (value >= expected if at_least else value == expected)
        if reached or time.monotonic() > deadline:
            assert reached, (name, labels, value)
            return text
        time.sleep(2)


def servers(admin, course: str) -> dict[str, dict]:
    """username -> that user's server of ``course``, for every user that has one (pending or ready)."""
    found = {}
    for user in admin.api("GET", "/users").json():
        server = (user.get("servers") or {}).get(course)
        if server:
            found[user["name"]] = server
    return found


def wait_until(predicate, *, timeout: float, every: float = 2.0, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        time.sleep(every)


# -- metrics and the scope that guards them --------------------------------------------------------------
def test_metrics_need_the_read_metrics_scope_and_follow_real_spawns(lab, users):
    alice = users("alice")
    text = lab_metrics(lab)
    spawned_before = sample(text, "teachlab_spawn_duration_seconds_count", course="intro-python") or 0.0
    alice.ensure_stopped("intro-python")
    alice.start_and_wait("intro-python")
    wait_for_metric(lab, "teachlab_spawn_duration_seconds_count", spawned_before + 1, course="intro-python")
    text = wait_for_metric(lab, "teachlab_servers_running", 1, at_least=True, course="intro-python")
    assert sample(text, "teachlab_spawn_queue_length", course="intro-python") == 0
    held, free = sample(text, "teachlab_gpus_held"), sample(text, "teachlab_gpus_free")
    assert held is not None and held + free == 4  # the four fake GPUs of the test inventory
    assert sample(text, "teachlab_gpu_hours_used", course="gpu-course") is not None
    assert "teachlab_warm_servers" in text
    # JupyterHub's own metrics come along (the same endpoint, the same scope).
    assert "jupyterhub_running_servers" in text
    # Only read:metrics opens them: not a student's token, not the CLI's (which may start and stop servers).
    assert metrics(lab, alice.token).status_code == 403
    assert metrics(lab, lab.secrets()["cli_token"]).status_code == 403
    assert metrics(lab, "not-a-token").status_code == 403
    alice.stop("intro-python")


# -- a class warmed by hand --------------------------------------------------------------------------------
@dataclass
class WarmedClass:
    warmed_at: datetime
    output: str


@pytest.fixture(scope="module")
def warmed_class(lab, users, tmp_path_factory):
    """``teachlab class warm warm-course --now``; warm01 then comes to class and uses her server."""
    token_file = tmp_path_factory.mktemp("cli") / "admin-token"
    token_file.write_text(lab.secrets()["cli_token"] + "\n")
    warmed_at = datetime.now().astimezone()
    command = [sys.executable, "-m", "spawner.cli", "class", "warm", "warm-course", "--now"]
    command += ["--state-dir", str(lab.state_dir), "--token-file", str(token_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    admin = users("admin")
    wait_until(
        lambda: (
            all(server.get("ready") for server in servers(admin, "warm-course").values())
            and set(servers(admin, "warm-course")) == set(WARM_STUDENTS)
        ),
        timeout=300,
        message=f"warm servers not ready: {servers(admin, 'warm-course')}",
    )
    # warm01 signs in: her server is up before she asks for it, and opening it starts nothing.
    # The students listed in course.yaml were recorded before anyone signed in, with the hub's default role, so
    # their warm servers have the scopes a server needs (reporting activity).
    assert admin.api("GET", "/users/warm02").json()["roles"] == ["user"]
    wanda = users("warm01")
    server = wanda.server("warm-course")
    assert server.get("ready"), server
    started = datetime.fromisoformat(server["started"].replace("Z", "+00:00"))
    assert wanda.open_server("warm01", "warm-course").status_code == 200
    # She keeps working past the first half minute, so the hub sees activity after the warm start itself.
    time.sleep(max(0.0, (started + timedelta(seconds=40) - datetime.now().astimezone()).total_seconds()))
    assert wanda.open_server("warm01", "warm-course", "api/contents").status_code == 200
    assert wanda.server("warm-course")["started"] == server["started"]  # the same server, not a new start
    return WarmedClass(warmed_at=warmed_at, output=done.stdout)


def test_class_warm_now_starts_the_listed_students_servers(warmed_class):
    assert warmed_class.output.splitlines()[0] == "warm-course: started 3, refused 0, over the memory budget 0"


def test_class_warm_refuses_bad_input_in_one_line(lab, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(lab.secrets()["cli_token"])
    base = [sys.executable, "-m", "spawner.cli", "class", "warm"]
    where = ["--state-dir", str(lab.state_dir), "--token-file", str(token_file)]
    unknown = subprocess.run([*base, "no-such-course", "--now", *where], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: the warmer refused: no course 'no-such-course'; courses: ")
    assert len(unknown.stderr.strip().splitlines()) == 1
    token_file.write_text("a-forged-token")
    forged = subprocess.run([*base, "warm-course", "--now", *where], capture_output=True, text=True, timeout=60)
    assert forged.returncode == 1 and "Traceback" not in forged.stderr
    assert forged.stderr.startswith("error: the warmer refused:") and "HTTP 403" in forged.stderr


def test_a_student_may_not_warm_a_class(lab, users):
    """The warmer's API needs custom:teachlab-warmer:warm, which students do not have."""
    response = requests.post(
        f"http://127.0.0.1:{lab.ports.warmer}/services/{Scopes.WARMER_SERVICE}/api/warm/warm-course",
        headers={"Authorization": f"token {users('bob').token}"},
        timeout=60,
    )
    assert response.status_code == 403, response.text


# -- a hundred first starts at once ---------------------------------------------------------------------
def progress_messages(admin, username: str) -> list[str]:
    """The hub's progress events of a pending start, read to the end (the server ready or failed)."""
    response = requests.get(
        f"{admin.lab.public_url}/hub/api/users/{username}/servers/{CROWD_COURSE}/progress",
        headers={"Authorization": f"token {admin.token}", "Accept": "text/event-stream"},
        stream=True,
        timeout=900,
    )
    messages = []
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            messages.append(json.loads(line[5:]).get("message", ""))
    return messages


def test_a_hundred_first_starts_at_once_all_reach_jupyterlab(lab, users, warmed_class):
    admin = users("admin")
    assert not servers(admin, CROWD_COURSE), "crowd servers from an earlier run"

    def start(name: str) -> int:
        return admin.start(CROWD_COURSE, user=name).status_code

    try:
        with ThreadPoolExecutor(len(CROWD_STUDENTS)) as pool:
            answers = list(pool.map(start, CROWD_STUDENTS))
        assert set(answers) <= {201, 202}, answers
        # The last ones in are still waiting for a boot slot: their progress says where they are in line.
        with ThreadPoolExecutor(3) as pool:
            late = list(pool.map(lambda name: progress_messages(admin, name), CROWD_STUDENTS[-3:]))
        assert any(IN_LINE.search(message) for messages in late for message in messages), late

        def every_one_ready() -> bool:
            found = servers(admin, CROWD_COURSE)
            missing = set(CROWD_STUDENTS) - set(found)
            assert not missing, f"{len(missing)} start(s) failed: {sorted(missing)[:5]}"
            return all(server.get("ready") for server in found.values())

        wait_until(every_one_ready, timeout=900, every=3)

        def jupyterlab(name: str) -> tuple[str, int, bool]:
            page = requests.get(
                lab.server_url(name, CROWD_COURSE) + "lab",
                headers={"Authorization": f"token {admin.token}"},
                timeout=120,
                allow_redirects=False,
            )
            return name, page.status_code, "JupyterLab" in page.text

        with ThreadPoolExecutor(8) as pool:
            pages = list(pool.map(jupyterlab, CROWD_STUDENTS))
        assert [page for page in pages if page[1:] != (200, True)] == []
        # The gauges are a snapshot of the last catalog refresh: the queue empties there a refresh later.
        wait_for_metric(lab, "teachlab_spawn_queue_length", 0.0, course=CROWD_COURSE)
        text = wait_for_metric(lab, "teachlab_servers_running", float(len(CROWD_STUDENTS)), course=CROWD_COURSE)
        assert sample(text, "teachlab_spawn_duration_seconds_count", course=CROWD_COURSE) == len(CROWD_STUDENTS)
    finally:  # a hundred servers left behind would crowd every later test of the session
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda name: admin.stop(CROWD_COURSE, user=name), CROWD_STUDENTS))
        wait_until(lambda: not servers(admin, CROWD_COURSE), timeout=600, every=3, message="crowd servers still running")


# -- the warm servers' outcome -------------------------------------------------------------------------------
def test_warm_servers_nobody_opened_are_stopped_after_the_grace(lab, users, warmed_class):
    admin = users("admin")
    grace_ends = warmed_class.warmed_at + timedelta(minutes=WARM_UNUSED_MINUTES)
    wait_until(
        lambda: set(servers(admin, "warm-course")) == {"warm01"},
        timeout=max(0.0, (grace_ends - datetime.now().astimezone()).total_seconds()) + 120,
        message=f"after the grace: {sorted(servers(admin, 'warm-course'))}",
    )
    text = wait_for_metric(lab, "teachlab_warm_servers", 2.0, course="warm-course", outcome="wasted")
    assert sample(text, "teachlab_warm_servers", course="warm-course", outcome="used") == 1.0
    users("warm01").stop("warm-course")


def test_the_timetable_warmed_its_session_on_its_own(lab, users):
    """timetable-course meets from the moment the test catalog was made: the warmer started its students'
    servers without being asked; nobody opened them, so after the grace they were stopped as wasted."""
    text = wait_for_metric(
        lab, "teachlab_warm_servers", float(len(TIMETABLE_STUDENTS)), timeout=300, course="timetable-course", outcome="wasted"
    )
    assert sample(text, "teachlab_warm_servers", course="timetable-course", outcome="refused") is None
    # Both servers did boot (the spawn histogram counts starts that reached a running server only).
    assert sample(text, "teachlab_spawn_duration_seconds_count", course="timetable-course") == len(TIMETABLE_STUDENTS)
    assert not servers(users("admin"), "timetable-course")
