"""Restarting the hub never stops students' servers; records of vanished containers are cleaned."""

from __future__ import annotations

import signal
import time

import pytest

pytestmark = [
    pytest.mark.hub,
    pytest.mark.docker,
    pytest.mark.usefixtures("print_container_logs_on_failure", "hub_log_on_failure"),
]

RUNNING = ("alice", "bob", "carol", "dave", "erin")


@pytest.mark.parametrize("how", [pytest.param(signal.SIGKILL, id="sigkill"), pytest.param(signal.SIGTERM, id="graceful")])
def test_hub_restart_keeps_five_running_servers(users, lab, docker_client, how):
    for name in RUNNING:
        users(name).start_and_wait("intro-python")
    users("fiona").start_and_wait("intro-python")
    containers = {name: docker_client.containers.get(lab.names.container(name, "intro-python")).id for name in RUNNING}

    lab.hub.stop(how)
    # While the hub is down, one container disappears behind its back.
    docker_client.containers.get(lab.names.container("fiona", "intro-python")).remove(force=True)
    lab.start_hub()

    for name in RUNNING:
        user = users(name)
        assert user.server("intro-python").get("ready"), name
        assert user.get_server_page("api/status", course="intro-python").status_code == 200, name
        assert docker_client.containers.get(lab.names.container(name, "intro-python")).id == containers[name]
    assert {lab.server_route(name, "intro-python") for name in RUNNING} <= set(lab.proxy_routes())
    fiona = users("fiona")
    fiona.wait_until_stopped("intro-python", timeout=30)  # the hub drops the vanished server's record...
    deadline = time.monotonic() + 30
    while lab.server_route("fiona", "intro-python") in lab.proxy_routes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lab.server_route("fiona", "intro-python") not in lab.proxy_routes()  # ...and its route
    fiona.start_and_wait("intro-python")  # the cleaned record does not block a new start
