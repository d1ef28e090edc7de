"""One student cannot fill the node: a size-limited work volume (the kernel says "No space left on device"),
a read-only root filesystem with bounded scratch space, rotating logs. The full student still starts their
server and deletes files; another student's server and the hub keep working."""

from __future__ import annotations

import pytest

from spawner.core.contract import StateLayout
from spawner.node.disks import VolumeStore

pytestmark = [
    pytest.mark.hub,
    pytest.mark.docker,
    pytest.mark.usefixtures("print_container_logs_on_failure", "hub_log_on_failure"),
]


def _exec(container, script: str) -> tuple[int, str]:
    result = container.exec_run(["bash", "-c", script], user="1000:1000")
    return result.exit_code, result.output.decode("utf-8", "replace").strip()


def test_writing_past_the_course_disk_fails_and_nothing_else_suffers(users, docker_client, lab):
    dave, erin = users("dave"), users("erin")
    dave.start_and_wait("tiny-disk")
    erin.start_and_wait("intro-python")
    container = docker_client.containers.get(lab.names.container("dave", "tiny-disk"))

    code, output = _exec(container, "stat -c '%u %a' /home/jovyan/work; ls -A /home/jovyan/work")
    owner, *entries = output.splitlines()
    assert code == 0 and owner == "1000 755"  # the student's from the start
    assert "lost+found" not in entries  # no root-owned folder in the way
    code, output = _exec(container, "dd if=/dev/zero of=/home/jovyan/work/big bs=1M count=64 2>&1")
    assert code != 0 and "No space left on device" in output
    code, output = _exec(container, "df -B1M --output=size /home/jovyan/work | tail -1")
    assert code == 0 and int(output) <= 24

    assert dave.api("GET", "/").status_code == 200  # the hub keeps working
    assert erin.get_server_page("api/status", course="intro-python").status_code == 200  # and so does erin's server

    # The full student restarts the server and deletes what filled it.
    dave.stop("tiny-disk")
    dave.wait_until_stopped("tiny-disk")
    dave.start_and_wait("tiny-disk")
    container = docker_client.containers.get(lab.names.container("dave", "tiny-disk"))
    assert _exec(
        container, "rm /home/jovyan/work/big && echo ok > /home/jovyan/work/after.txt && cat /home/jovyan/work/after.txt"
    ) == (0, "ok")
    dave.stop("tiny-disk")


def test_the_root_filesystem_is_read_only_scratch_is_bounded_and_logs_rotate(users, docker_client, lab):
    frank = users("frank")
    frank.start_and_wait("data-analysis")
    container = docker_client.containers.get(lab.names.container("frank", "data-analysis"))
    code, output = _exec(container, "touch /opt/course-env/planted 2>&1; touch /usr/local/bin/planted 2>&1")
    assert code != 0 and output.count("Read-only file system") == 2
    code, output = _exec(container, "df -B1M --output=size /tmp | tail -1; df -B1M --output=size /home/jovyan | tail -1")
    tmp_size, home_size = map(int, output.split())
    assert (code, tmp_size, home_size) == (0, 1024, 256)
    host_config = container.attrs["HostConfig"]
    assert host_config["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    assert host_config["ReadonlyRootfs"] is True
    frank.stop("data-analysis")


def test_a_volume_comes_back_after_its_loop_device_went_away(users, docker_client, lab):
    """As after a reboot: the filesystem is attached again by file at the next start, with the student's work."""
    gina = users("gina")
    gina.start_and_wait("tiny-disk")
    container = docker_client.containers.get(lab.names.container("gina", "tiny-disk"))
    assert _exec(container, "echo kept > /home/jovyan/work/kept.txt")[0] == 0
    gina.stop("tiny-disk")
    gina.wait_until_stopped("tiny-disk")
    store = VolumeStore(StateLayout(lab.state_dir).volumes)
    volume = lab.names.home_volume("gina", "tiny-disk")
    mount_point = store.mount_point(volume)
    assert store.is_mounted(volume)
    import subprocess

    subprocess.run(["umount", "-d", str(mount_point)], check=True)
    assert not store.is_mounted(volume)
    assert oct(mount_point.stat().st_mode & 0o777) == "0o0"  # nobody writes there while it is not mounted
    gina.start_and_wait("tiny-disk")
    container = docker_client.containers.get(lab.names.container("gina", "tiny-disk"))
    assert _exec(container, "cat /home/jovyan/work/kept.txt") == (0, "kept")
    gina.stop("tiny-disk")
