"""GPU spawns end to end with fake_gpu_inventory (4 declared GPUs) and the fake GPU runtime in dockerd."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from spawner.core.contract import Labels, Scopes, StateLayout
from spawner.gpu.cache import ledger_for
from support.accounts import FAKE_GPU_INVENTORY, GPU_STUDENTS
from support.lab_fixtures import SITE_LABEL

pytestmark = [
    pytest.mark.hub,
    pytest.mark.docker,
    pytest.mark.usefixtures("print_container_logs_on_failure", "hub_log_on_failure"),
]

FAKE_UUIDS = {device["uuid"] for device in FAKE_GPU_INVENTORY}


class Admin:
    """An admin of the lab (signed in through the provider, in the admin group): starts servers for any user."""

    def __init__(self, lab, token: str):
        self.lab = lab
        self.headers = {"Authorization": f"token {token}"}

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, f"{self.lab.public_url}/hub/api{path}", headers=self.headers, timeout=180, **kwargs)

    def servers(self, course: str) -> dict[str, dict]:
        users = self.api("GET", "/users?state=active").json()
        return {user["name"]: user["servers"][course] for user in users if course in user["servers"]}

    def wait(self, condition, timeout: float = 120, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"{what} not reached in {timeout} s")


@pytest.fixture(scope="module")
def admin(lab, users):
    admin = Admin(lab, users("admin").token)
    response = admin.api("POST", "/users", json={"usernames": list(GPU_STUDENTS)})
    assert response.status_code in (201, 409), response.text
    return admin


@pytest.fixture(scope="module")
def ledger(lab):
    return ledger_for(StateLayout(lab.state_dir).gpu_ledger_url)


def _gpu_containers(docker_client, lab) -> dict[str, list[str]]:
    """username -> device IDs of running gpu-course containers, read from Docker and from inside them."""
    seen = {}
    for container in docker_client.containers.list(
        filters={"label": [Labels.GPUS, "org.teachlab.course=gpu-course", lab_label(lab)]}
    ):
        requested = [device for request in container.attrs["HostConfig"]["DeviceRequests"] for device in request["DeviceIDs"]]
        inside = container.exec_run(["bash", "-c", "echo $NVIDIA_VISIBLE_DEVICES"], user="1000:1000").output.decode().strip()
        assert inside.split(",") == requested == container.labels[Labels.GPUS].split(","), container.name
        seen[container.labels["org.teachlab.user"]] = requested
    return seen


def lab_label(lab) -> str:
    """Selects this lab's containers (other test sessions may run labs on the same engine)."""
    return f"{Labels.LAB}={lab.hub_settings().lab_id}"


def _ledger_view(ledger) -> dict[str, list[str]]:
    view: dict[str, list[str]] = {}
    for holding in ledger.holdings():
        view.setdefault(holding.username, []).append(holding.device_uuid)
    return view


def _stop_all(admin, course: str) -> None:
    for name in admin.servers(course):
        admin.api("DELETE", f"/users/{name}/servers/{course}")
    admin.wait(lambda: not admin.servers(course), what=f"all {course} servers stopped")


def _start_and_wait(admin, name: str) -> None:
    assert admin.api("POST", f"/users/{name}/servers/gpu-course").status_code in (201, 202)
    admin.wait(lambda: admin.servers("gpu-course").get(name, {}).get("ready"), what=f"{name} ready")


@pytest.fixture(autouse=True)
def no_gpu_servers_left(admin, ledger):
    """Each test starts and ends with every GPU free, so one failure does not cascade into the next."""
    yield
    _stop_all(admin, "gpu-course")
    assert ledger.holdings() == []


def test_fifty_concurrent_spawns_on_four_gpus(admin, ledger, docker_client, lab):
    def spawn(name: str) -> requests.Response:
        return admin.api("POST", f"/users/{name}/servers/gpu-course")

    with ThreadPoolExecutor(len(GPU_STUDENTS)) as pool:
        responses = dict(zip(GPU_STUDENTS, pool.map(spawn, GPU_STUDENTS), strict=True))
    started = sorted(name for name, response in responses.items() if response.status_code in (201, 202))
    refused = {name: response for name, response in responses.items() if name not in started}
    assert len(started) == 4 and len(refused) == 46
    for response in refused.values():
        assert response.status_code == 503
        assert response.json()["message"] == "all 4 GPUs are in use; try again later"

    admin.wait(lambda: len([s for s in admin.servers("gpu-course").values() if s["ready"]]) == 4, what="4 GPU servers ready")
    containers = _gpu_containers(docker_client, lab)
    assert sorted(containers) == started
    # The site file of the test lab replaced c.CourseSpawner.extra_labels; the lab label is there all the same,
    # so the restart below keeps every GPU of a running server.
    for name in started:
        labels = docker_client.containers.get(lab.names.container(name, "gpu-course")).labels
        assert labels[SITE_LABEL] == "tests" and labels[Labels.LAB] == lab.hub_settings().lab_id
    devices = [device for held in containers.values() for device in held]
    assert len(devices) == len(set(devices)) == 4 and set(devices) == FAKE_UUIDS
    assert _ledger_view(ledger) == containers

    # The hub dies while servers hold GPUs; one container is removed while it is down.
    lab.hub.stop(signal.SIGKILL)
    gone = started[0]
    docker_client.containers.get(lab.names.container(gone, "gpu-course")).remove(force=True)
    lab.start_hub()
    remaining = _gpu_containers(docker_client, lab)
    assert gone not in remaining and len(remaining) == 3
    assert _ledger_view(ledger) == remaining
    first_newcomer, second_newcomer = sorted(refused)[:2]
    _start_and_wait(admin, first_newcomer)  # gone's device is the only free one
    assert _gpu_containers(docker_client, lab)[first_newcomer] == containers[gone]

    # Behind the hub's back, while it runs: the device is free again within one poll.
    taken_away = started[1]
    docker_client.containers.get(lab.names.container(taken_away, "gpu-course")).remove(force=True)
    admin.wait(lambda: taken_away not in _ledger_view(ledger), timeout=15, what="device released after one poll")
    assert _ledger_view(ledger) == _gpu_containers(docker_client, lab)
    _start_and_wait(admin, second_newcomer)  # refused a moment ago; now taken_away's device is the only free one
    assert _gpu_containers(docker_client, lab)[second_newcomer] == containers[taken_away]


def test_quota_refusals_reach_the_student_before_anything_starts(admin, ledger, docker_client, users):
    gail = users("gpu-gail")
    ledger.set_course_quota("gpu-course", max_concurrent_gpus=1, gpu_hours_per_student=None, actor="tests")
    try:
        assert admin.api("POST", "/users/gpu05/servers/gpu-course").status_code in (201, 202)
        response = gail.start("gpu-course")
        assert response.status_code == 429, response.text
        assert "gpu-course may hold at most 1 GPU" in response.json()["message"]
        assert (
            docker_client.containers.list(all=True, filters={"label": ["org.teachlab.user=gpu-gail", lab_label(admin.lab)]}) == []
        )
        _stop_all(admin, "gpu-course")

        ledger.set_user_override("gpu-gail", "gpu-course", gpu_hours=0.0, max_gpus=None, actor="tests")
        form = gail.session.get(f"{gail.lab.public_url}/hub/spawn/gpu-gail/gpu-course")
        assert form.status_code == 200 and "<strong>0.0</strong> GPU-hours left this term" in form.text
        response = gail.start("gpu-course")
        assert response.status_code == 403, response.text
        assert "GPU-hours" in response.json()["message"]
        assert ledger.holdings() == []
    finally:
        ledger.set_course_quota("gpu-course", max_concurrent_gpus=None, gpu_hours_per_student=None, actor="tests")
        ledger.set_user_override("gpu-gail", "gpu-course", gpu_hours=None, max_gpus=None, actor="tests")


def test_gpu_service_scopes_pages_and_audited_quota_changes(users, lab, ledger):
    admin, prof, gail = users("admin"), users("prof"), users("gpu-gail")
    api = lab.service_url(Scopes.GPU_SERVICE) + "api"

    def call(user, method, path, **kwargs):
        return requests.request(method, f"{api}/{path}", headers={"Authorization": f"token {user.token}"}, timeout=30, **kwargs)

    holdings = call(admin, "GET", "holdings")
    assert holdings.status_code == 200 and {d["uuid"] for d in holdings.json()} == FAKE_UUIDS
    assert call(gail, "GET", "holdings").status_code == 403
    assert call(gail, "GET", "quotas").status_code == 403
    assert call(prof, "GET", "usage?course=gpu-course").status_code == 200  # prof teaches gpu-course
    assert call(prof, "GET", "usage?course=data-analysis").status_code == 403
    assert call(gail, "GET", "usage?course=gpu-course").status_code == 403

    # Every admin endpoint refuses a student, and the refusal changes nothing.
    assert call(gail, "POST", "release", json={"username": "gpu01", "server_name": "gpu-course"}).status_code == 403
    assert call(gail, "PUT", "quotas/courses/gpu-course/users/gpu-gail", json={"gpu_hours": 999}).status_code == 403
    assert call(gail, "GET", "audit").status_code == 403
    assert call(prof, "GET", "audit").status_code == 403
    assert ledger.quota_for("gpu-gail", "gpu-course").gpu_hours is None

    changed = call(admin, "PUT", "quotas/courses/gpu-course", json={"max_concurrent_gpus": 3, "gpu_hours_per_student": 20})
    assert changed.status_code == 200, changed.text
    assert call(gail, "PUT", "quotas/courses/gpu-course", json={"max_concurrent_gpus": 99}).status_code == 403
    assert call(admin, "PUT", "quotas/courses/gpu-course", json={"max_concurrent_gpus": -1}).status_code == 400
    entry = ledger.audit_log(limit=1)[0]
    assert (entry.actor, entry.action, entry.new_value) == (
        "admin",
        "set course quota",
        {"max_concurrent_gpus": 3, "gpu_hours_per_student": 20},
    )
    try:
        _check_pages_and_own_usage(admin, gail, lab, call)
    finally:
        ledger.set_course_quota("gpu-course", max_concurrent_gpus=None, gpu_hours_per_student=None, actor="tests")


def _check_pages_and_own_usage(admin, gail, lab, call):
    mine = call(gail, "GET", "me").json()
    assert [(row["course"], row["remaining_gpu_hours"]) for row in mine] == [("gpu-course", 20.0)]

    admin_page = admin.session.get(lab.service_url(Scopes.GPU_SERVICE))
    assert admin_page.status_code == 200 and 'id="holdings"' in admin_page.text and "GPU-fa4e0000" in admin_page.text
    student_page = gail.session.get(lab.service_url(Scopes.GPU_SERVICE))
    assert student_page.status_code == 200 and 'id="my-gpu-usage"' in student_page.text and "holdings" not in student_page.text


def test_cli_gpu_commands(lab, ledger, admin):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "TEACHLAB_STATE_DIR": str(lab.state_dir), "TEACHLAB_GPU_INVENTORY": json.dumps(FAKE_GPU_INVENTORY)}

    def teachlab(*args):
        return subprocess.run([sys.executable, "-m", "spawner.cli", "gpu", *args], env=env, capture_output=True, text=True)

    assert admin.api("POST", "/users/gpu07/servers/gpu-course").status_code in (201, 202)
    admin.wait(lambda: admin.servers("gpu-course").get("gpu07", {}).get("ready"), what="gpu07 ready")
    status = teachlab("status")
    assert status.returncode == 0 and status.stdout.count("free") == 3 and "gpu07" in status.stdout
    _stop_all(admin, "gpu-course")
    assert teachlab("quota", "set", "gpu-course", "--max-concurrent", "2", "--hours", "10").returncode == 0
    assert teachlab("quota", "set", "gpu-course", "--user", "gpu07", "--hours", "25").returncode == 0
    shown = teachlab("quota", "show", "gpu-course").stdout
    assert "gpu-course" in shown and "gpu07" in shown and "25.0" in shown
    bad = teachlab("quota", "set", "gpu-course", "--max-concurrent", "two")
    assert bad.returncode == 1 and bad.stderr.strip() == "error: 'two' is not a whole number; write e.g. 2, or none for no limit"
    usage = teachlab("usage", "--course", "gpu-course", "--csv")
    assert usage.returncode == 0 and usage.stdout.splitlines()[0] == "course,username,gpu_hours"
    hours = {line.split(",")[1]: float(line.split(",")[2]) for line in usage.stdout.splitlines()[1:]}
    assert hours["gpu07"] > 0
    assert "holds no GPU" in teachlab("release", "gpu07", "gpu-course").stdout
    assert teachlab("quota", "set", "gpu-course", "--max-concurrent", "none", "--hours", "none").returncode == 0
    assert teachlab("quota", "set", "gpu-course", "--user", "gpu07", "--hours", "none").returncode == 0


def test_a_start_that_fails_after_the_reservation_releases_the_gpu(admin, ledger, docker_client, build_settings, lab):
    """gpu-course's current image disappears from the engine: the reservation succeeds, the container cannot be
    created, and the GPU goes back at once (not at the next hub start)."""
    from spawner.images.registry import VersionRegistry

    current = VersionRegistry(build_settings.registry_dir).current_image("gpu-course")
    spare_tag = f"{current.image}-spare"
    docker_client.images.get(current.image).tag(spare_tag)
    docker_client.images.remove(current.image)

    def gpu09_seconds() -> float:  # gpu09 may have held a GPU in an earlier test: compare before and after
        return sum(row.gpu_seconds for row in ledger.usage_report(course="gpu-course") if row.username == "gpu09")

    seconds_before = gpu09_seconds()
    try:
        response = admin.api("POST", "/users/gpu09/servers/gpu-course")
        if response.status_code == 202:  # slow spawn: the failure comes later
            admin.wait(lambda: "gpu09" not in admin.servers("gpu-course"), what="failed start cleaned up")
        else:
            assert response.status_code >= 500, response.text
        assert ledger.holdings() == []
        assert gpu09_seconds() - seconds_before < 5  # the reservation ended with the failed start
    finally:
        docker_client.images.get(spare_tag).tag(current.image)
        docker_client.images.remove(spare_tag)


def test_a_running_gpu_server_is_stopped_when_its_hours_run_out(admin, ledger, users, lab):
    """GPU-hours hold while a server runs: the ledger's verdict is checked at every poll (spawner/gpu/quotas.py)."""
    gail = users("gpu-gail")
    ledger.set_user_override("gpu-gail", "gpu-course", gpu_hours=0.003, max_gpus=None, actor="tests")  # 10.8 s
    try:
        gail.start_and_wait("gpu-course")
        admin.wait(lambda: not gail.server("gpu-course"), timeout=60, what="gail's GPU server stopped by its quota")
        assert ledger.holdings() == []
        home = gail.session.get(f"{lab.public_url}/hub/home").text
        assert "GPU-hours for this term in gpu-course are used up" in home
        refused = gail.start("gpu-course")
        assert refused.status_code == 403 and "GPU-hours" in refused.json()["message"]
    finally:
        ledger.set_user_override("gpu-gail", "gpu-course", gpu_hours=None, max_gpus=None, actor="tests")
