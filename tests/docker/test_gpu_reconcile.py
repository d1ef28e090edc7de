"""GPU reconciliation at hub start reads the labels of real containers (spawner/hub/gpus.py).

The containers are the base image running ``sleep``, labelled as a lab's student servers would be; the GPU
ids are names only (no GPU is attached). The ledger is a real SQLite ledger.
"""

from __future__ import annotations

from datetime import date

import pytest

from spawner.core.contract import Labels
from spawner.gpu import GpuLedger, declared_inventory
from spawner.hub.gpus import reconcile_with_containers

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("print_container_logs_on_failure")]

OURS, OTHER = "lab-ours-0001", "lab-other-002"
DEVICES = declared_inventory([{"uuid": f"GPU-r{n}", "index": n, "model": "Fake GPU (tests)", "memory": "16G"} for n in range(5)])
TERM = (date(2026, 9, 1), date(2027, 8, 31))


def _server(docker_client, base_image, session_labels, *, user: str, devices: str, lab: str | None):
    labels = {**session_labels, Labels.USER: user, Labels.SERVER: "gpu-course", Labels.GPUS: devices}
    if lab is not None:
        labels[Labels.LAB] = lab
    return docker_client.containers.run(base_image, ["sleep", "300"], detach=True, labels=labels, network_mode="none")


def test_only_this_labs_containers_count_and_unattributed_ones_keep_their_gpus(
    docker_client, base_image, session_labels, tmp_path
):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    with GpuLedger.open(url) as ledger:
        for user, uuid in (("alice", "GPU-r0"), ("bob", "GPU-r1"), ("dave", "GPU-r3")):
            ledger.allocate(
                username=user,
                course="gpu-course",
                server_name="gpu-course",
                count=1,
                devices=[d for d in DEVICES if d.uuid == uuid],
                term_start=TERM[0],
                term_end=TERM[1],
            )
    # alice's server runs, in this lab. bob's device is held by a container of another lab that happens to name
    # him: it does not confirm his holding. carol's container belongs to the other lab: its device is not ours
    # to record. dave's container has no lab label (an older release, a site's own labels): his GPU stays.
    _server(docker_client, base_image, session_labels, user="alice", devices="GPU-r0", lab=OURS)
    _server(docker_client, base_image, session_labels, user="bob", devices="GPU-r1", lab=OTHER)
    _server(docker_client, base_image, session_labels, user="carol", devices="GPU-r2", lab=OTHER)
    _server(docker_client, base_image, session_labels, user="dave", devices="GPU-r3", lab=None)

    report = reconcile_with_containers(url, docker_client, OURS)

    assert [h.username for h in report.released] == ["bob"]
    assert report.added == ()
    assert [h.username for h in report.protected] == ["dave"]
    with GpuLedger.open(url) as ledger:
        assert sorted((h.username, h.device_uuid) for h in ledger.holdings()) == [("alice", "GPU-r0"), ("dave", "GPU-r3")]
