"""Checks for a real GPU host (not part of CI: these machines have no GPU).

    sudo .venv/bin/python tests/gpu_host/check_gpu_host.py [--image IMAGE]

1. NVML discovery (spawner.gpu.discover_nvml) finds the GPUs that `nvidia-smi -L` lists, with the same UUIDs.
2. For each GPU, a container started the way CourseSpawner starts one (a DeviceRequest with that UUID and
   NVIDIA_VISIBLE_DEVICES set to it) sees exactly that GPU in `nvidia-smi -L`, and no other.
Exits 0 when every check passes, 1 otherwise, printing one line per check.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import docker
from docker.types import DeviceRequest

from spawner.gpu import discover_nvml

UUID = re.compile(r"\(UUID: ((?:GPU|MIG)-[0-9a-fA-F-]+)\)")


def host_uuids() -> list[str]:
    output = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    return UUID.findall(output)


def container_uuids(client: docker.DockerClient, image: str, uuid: str) -> list[str]:
    output = client.containers.run(
        image,
        ["nvidia-smi", "-L"],
        remove=True,
        environment={"NVIDIA_VISIBLE_DEVICES": uuid},
        device_requests=[DeviceRequest(driver="nvidia", device_ids=[uuid], capabilities=[["gpu"]])],
    ).decode()
    return UUID.findall(output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--image", default="teachlab/debian-py39:v2.1.0", help="any image; the NVIDIA container toolkit mounts nvidia-smi into it"
    )
    args = parser.parse_args()
    failures = 0

    def check(ok: bool, text: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {text}")

    devices = discover_nvml()
    expected = host_uuids()
    check(
        sorted(d.uuid for d in devices) == sorted(expected),
        f"NVML found {len(devices)} device(s) {[d.uuid for d in devices]}; nvidia-smi lists {expected}",
    )
    client = docker.from_env()
    for device in devices:
        seen = container_uuids(client, args.image, device.uuid)
        check(seen == [device.uuid], f"a container given {device.uuid} sees {seen}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
