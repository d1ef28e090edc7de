"""The production stack grown onto a two-node swarm (issue 14; docs/admins.md, "Adding machines").

The lab is the one test_production_stack.py restored from its backup onto a fresh node (``restored_lab`` in
tests/cluster/conftest.py: docs/admins.md's Install steps 1 to 4 and its Restore section, run as written), so the
manager is an installed lab with published courses, students and their work. Then the admin's scale-out steps: a
worker joins the swarm, the site file gets its ``swarm`` section (and loses its ``gpus``: on a swarm GPUs are
declared per node), ``teachlab deploy node-certificates`` makes the worker's folder on the manager and that folder's
tree is unpacked onto the worker's ``/`` (``docker exec`` in place of ``ssh``), and ``teachlab deploy up`` deploys
the stack with its registry and the hub's placement settings. Checked: the stack's registry answers over TLS with
the lab's node CA at the manager's address, and a student's server started through nginx runs on the worker.

Stand-ins, named: the machines are containers on this machine's engine; images are loaded into them
(``docker save | docker load``) instead of built there, and the published course's image is loaded into the worker
instead of pushed (the version was published before the lab had a registry). The manager's engine was started
before its certificate could exist, so it has no TCP socket: it is labelled a GPU node without GPUs, which keeps
students' servers off it (docs/admins.md has the manager take servers too, with its own certificate).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import yaml

from spawner.core.contract import Labels
from spawner.deploy.images import StackImageBuilder
from spawner.devlab.names import names_on_loopback
from support.hub import signed_in_users
from support.production import CACHE_LABEL, DOMAIN, SITE_FILE

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

COURSE = "intro-python"
STUDENT = "erin"  # no server and no work anywhere yet (the restored lab's other students have theirs on the manager)
SECRETS = "/srv/teachlab/secrets"


@pytest.fixture(scope="module")
def registry_image(docker_client, build_settings, stack_images) -> str:
    """The registry's image, built with `teachlab deploy build`'s code on this engine (kept between sessions)."""
    return StackImageBuilder(replace(build_settings, labels=CACHE_LABEL), docker_client, with_registry=True).build_registry()


@pytest.fixture(scope="module")
def swarm_lab(restored_lab, registry_image, prod_courses, prod_tls):
    """The restored lab with a worker added as docs/admins.md's "Adding machines" section says, and the stack
    deployed with the ``swarm`` section; yields (lab, cluster)."""
    lab, cluster = restored_lab.lab, restored_lab.cluster
    manager = lab.node
    cluster.load_images([registry_image], [manager])
    # Adding machines, 1: the worker joins; the nodes' roles.
    worker = cluster.add_node(engine_tls=True)  # its dockerd waits for its certificate
    site = yaml.safe_load(manager.read_file(SITE_FILE))
    site.pop("gpus", None)
    site["swarm"] = {"manager_address": manager.address, "course_data_node": worker.name}
    manager.write_file(SITE_FILE, yaml.safe_dump(site, sort_keys=False), mode=0o600)
    # 3: the certificates, made on the manager, and the worker's folder unpacked onto its /.
    made = lab.teachlab("deploy", "node-certificates", worker.address)
    assert f"{worker.address}: copy " in made.stdout, made.stdout
    tree = f"{SECRETS}/nodes/node/{worker.address}/root"
    subprocess.run(
        f"docker exec {manager.name} tar -C {tree} --owner=0 --group=0 -cf - . "
        f"| docker exec -i {worker.name} tar -C / --no-overwrite-dir -xf -",
        shell=True,
        check=True,
        timeout=120,
    )
    worker.wait_for_dockerd()
    token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    worker.docker("swarm", "join", "--token", token, f"{manager.address}:2377")
    manager.docker("node", "update", "--label-add", f"{Labels.NODE_ROLE}=cpu", worker.name)
    manager.docker("node", "update", "--label-add", f"{Labels.NODE_ROLE}=gpu", manager.name)  # see the docstring
    # 4: the hub's image (the node agent) on the worker, and the course's image (stand-in for the registry).
    cluster.load_images([lab.hub_image(), prod_courses[COURSE].image], [worker])
    deployed = lab.teachlab("deploy", "up", check=False)
    assert deployed.returncode == 0, (
        deployed.stdout[-4000:]
        + lab.docker("service", "ps", "--no-trunc", "teachlab_registry", "teachlab_hub", check=False).stdout
    )
    bundle = prod_tls.ca_certificate.parent / "swarm-bundle.pem"
    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    bundle.write_bytes((Path(previous).read_bytes() if previous else b"") + prod_tls.ca_certificate.read_bytes())
    os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
    try:
        with names_on_loopback(DOMAIN, manager.address):
            yield lab, cluster
    finally:
        if previous is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = previous
        print(lab.docker("service", "logs", "--raw", "--tail", "80", "teachlab_hub", check=False).stdout[-8000:])


def test_the_stacks_registry_answers_over_tls_with_the_labs_node_ca(swarm_lab, tmp_path):
    lab, cluster = swarm_lab
    manager = cluster.nodes[0]
    ca = tmp_path / "nodes-ca.crt"
    ca.write_bytes(manager.read_file(f"{SECRETS}/nodes/ca.crt"))
    session = requests.Session()
    session.trust_env = False  # the lab's node CA, not REQUESTS_CA_BUNDLE
    answer = session.get(f"https://{manager.address}:5000/v2/", verify=str(ca), timeout=10)
    assert answer.status_code == 200, answer.text
    with pytest.raises(requests.exceptions.SSLError):
        session.get(f"https://{manager.address}:5000/v2/", verify=str(lab.ca_certificate), timeout=10)  # another CA
    services = lab.docker("service", "ls", "--format", "{{.Name}} {{.Replicas}}").stdout.split("\n")
    assert "teachlab_registry 1/1" in services, services


def test_a_students_server_runs_on_the_worker_and_answers_through_the_stack(swarm_lab):
    lab, cluster = swarm_lab
    manager, worker = cluster.nodes
    student = signed_in_users(lab)(STUDENT)
    response = student.start(COURSE)
    assert response.status_code in (201, 202), response.text
    student.wait_until_ready(COURSE, timeout=300)
    assert student.get_server_page("api/status", course=COURSE).status_code == 200
    mine = ("ps", "--filter", f"label={Labels.USER}={STUDENT}", "--format", "{{.Names}}")
    on_worker = worker.docker(*mine).stdout.split()
    on_manager = manager.docker(*mine).stdout.split()
    assert len(on_worker) == 1 and on_manager == [], (on_worker, on_manager)
