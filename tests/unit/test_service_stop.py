"""A hub-managed service stops quietly when the hub stops it (SIGINT): no traceback in the admin's log. The
services share ``spawner.services.run_until_stopped``; the GPU service is the one started here."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

from spawner.devlab.lab import free_port


def wait_for_listener(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the service did not listen on {port} within {timeout} s")


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_the_gpu_service_stopped_by_the_hub_exits_0_without_a_traceback(inherited, tmp_path, repo_root):
    """``ignored``: started as a background shell starts a process, SIGINT ignored on entry (this suite run in the
    background hands that on to everything it starts)."""
    port = free_port()
    (tmp_path / "catalog").mkdir()
    env = {
        **os.environ,
        "JUPYTERHUB_SERVICE_PREFIX": "/services/teachlab-gpu/",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
        "JUPYTERHUB_API_TOKEN": "service-token",
        "TEACHLAB_GPU_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "TEACHLAB_CATALOG": str(tmp_path / "catalog"),
        "PYTHONPATH": str(repo_root),
    }
    command = shlex.join([sys.executable, "-m", "spawner.services.gpu"])
    trap = "trap '' INT; " if inherited == "ignored" else ""
    process = subprocess.Popen(
        ["sh", "-c", f"{trap}exec {command}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_listener(port, process)
        process.send_signal(signal.SIGINT)  # what JupyterHub sends its managed services when it stops
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr + stdout, stderr
