"""The hub refuses to start on a broken catalog, an unreachable Docker, a network that lets containers reach
each other, a bad GPU inventory or an unreadable setting: one line per problem, no traceback, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.hub

LAST_LINE = "teachlab: the hub did not start; fix the lines above and start it again"


def start_hub(repo_root, tmp_path, **env) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "TEACHLAB_STATE_DIR": str(tmp_path),
        "TEACHLAB_CATALOG": str(repo_root / "course_envs"),
        "TEACHLAB_SITE_CONFIG_DIR": str(tmp_path / "no-site-files"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "jupyterhub", "-f", str(repo_root / "jupyterhub_config.py")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def refusal_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == LAST_LINE
    return lines[:-1]


@pytest.mark.parametrize("case", ["unknown-root-key", "two-python-pins", "term-end-before-start"])
def test_hub_refuses_to_start_on_a_broken_catalog(repo_root, tmp_path, case):
    catalog = repo_root / "tests" / "broken_catalogs" / case
    expected = [f"{catalog.parent}/{line}" for line in (catalog / "expected.txt").read_text().splitlines()]
    lines = refusal_lines(start_hub(repo_root, tmp_path, TEACHLAB_CATALOG=str(catalog)))
    assert lines[-len(expected) :] == expected


def test_hub_refuses_to_start_without_docker(repo_root, tmp_path):
    lines = refusal_lines(start_hub(repo_root, tmp_path, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock"))
    assert len(lines) == 1 and lines[0].startswith("teachlab: Docker is not running or not reachable")
    assert "ensure-docker" in lines[0]


@pytest.mark.docker
def test_hub_refuses_a_students_network_whose_containers_reach_each_other(
    repo_root, tmp_path, docker_client, session_labels, session_id
):
    name = f"teachlab-test-icc-{session_id}"
    docker_client.networks.create(
        name, driver="bridge", labels=session_labels, options={"com.docker.network.bridge.enable_icc": "true"}
    )
    lines = refusal_lines(start_hub(repo_root, tmp_path, TEACHLAB_NETWORK=name))
    assert lines == [
        f"teachlab: docker network {name} lets containers reach each other (enable_icc is not false); "
        f"remove it (docker network rm {name}) and start the hub again to recreate it"
    ]


@pytest.mark.docker
def test_hub_refuses_a_bad_gpu_inventory(repo_root, tmp_path, session_id, docker_client):
    inventory = '[{"uuid": "GPU-a", "index": 0, "model": "A100", "memory": "40G"}, {"uuid": "GPU-a", "index": "one"}]'
    network = f"teachlab-test-inv-{session_id}"
    try:
        lines = refusal_lines(start_hub(repo_root, tmp_path, TEACHLAB_GPU_INVENTORY=inventory, TEACHLAB_NETWORK=network))
    finally:
        for found in docker_client.networks.list(names=[network]):
            found.remove()
    assert lines == [
        "TEACHLAB_GPU_INVENTORY:[1].uuid: 'GPU-a' is declared twice (each device needs its own UUID)",
        "TEACHLAB_GPU_INVENTORY:[1].index: must be a whole number >= 0, not 'one' (write the GPU's index from `nvidia-smi -L`)",
        "TEACHLAB_GPU_INVENTORY:[1].model: missing or empty (write the model name, e.g. 'NVIDIA H100 80GB HBM3')",
        "TEACHLAB_GPU_INVENTORY:[1].memory: None is not a memory size (write e.g. '80G', or a number of bytes)",
    ]


def test_hub_refuses_an_unreadable_setting(repo_root, tmp_path):
    lines = refusal_lines(start_hub(repo_root, tmp_path, TEACHLAB_HUB_PORT="eighty", TEACHLAB_EXTRA_LABELS="not json"))
    assert lines == [
        "TEACHLAB_HUB_PORT:(value): 'eighty' cannot be read: invalid literal for int() with base 10: 'eighty' (write e.g. 8081)",
        "TEACHLAB_EXTRA_LABELS:(value): 'not json' cannot be read: Expecting value: line 1 column 1 (char 0) "
        '(write e.g. {"org.example.lab": "cs-department"})',
    ]


@pytest.mark.docker
def test_hub_refuses_to_start_when_it_cannot_install_the_egress_rules(repo_root, tmp_path, session_id, docker_client):
    """A stand-in iptables that is refused as an unprivileged hub would be (it names itself the fake)."""
    stand_in = tmp_path / "bin" / "iptables"
    stand_in.parent.mkdir()
    stand_in.write_text(
        "#!/bin/sh\n# stand-in iptables for a hub without CAP_NET_ADMIN\n"
        "echo 'iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied "
        "(you must be root)' >&2\nexit 4\n"
    )
    stand_in.chmod(0o755)
    network = f"teachlab-test-fw-{session_id}"
    try:
        lines = refusal_lines(
            start_hub(repo_root, tmp_path, TEACHLAB_NETWORK=network, PATH=f"{stand_in.parent}:{os.environ['PATH']}")
        )
    finally:
        for found in docker_client.networks.list(names=[network]):
            found.remove()
    assert lines == [
        "teachlab: iptables -S failed: iptables v1.8.9 (nf_tables): Could not fetch rule set "
        "generation id: Permission denied (you must be root) (the hub needs root or CAP_NET_ADMIN)"
    ]
