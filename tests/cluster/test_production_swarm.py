"""The production stack grown onto a two-node swarm (issue 14; docs/admins.md, "Adding machines").

A fresh Docker-in-Docker manager runs docs/admins.md's Install steps as written (as tests/cluster/conftest.py's
``server`` does), then the admin's scale-out steps: a worker joins the swarm, the site file gets its ``swarm``
section, ``teachlab deploy node-certificates`` makes the worker's folder on the manager and that folder's tree is
unpacked onto the worker's ``/`` (``docker exec`` in place of ``ssh``), and ``teachlab deploy up`` deploys the stack
with its registry and the hub's placement settings. Checked: the stack's registry answers over TLS with the lab's
node CA at the manager's address, and a student's server started through nginx runs on the worker.

Stand-ins, named: the machines are containers on this machine's engine; images are loaded into them
(``docker save | docker load``) instead of built there, and the published course's image is loaded into the worker
instead of pushed (the version was published on this machine's engine, before the lab had a registry). The
manager's engine was started before its certificate could exist, so it has no TCP socket: it is labelled a GPU node
without GPUs, which keeps students' servers off it (docs/admins.md has the manager take servers too, with its own
certificate).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import yaml

from spawner.core.contract import Labels
from spawner.deploy.images import StackImageBuilder
from spawner.devlab.names import names_on_loopback
from support.admin_docs import install_script
from support.cluster import Cluster
from support.hub import signed_in_users
from support.production import CACHE_LABEL, CLIENT_ID, DOMAIN, SITE_FILE, ProdLab, publish_on_server, release_tarball

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

COURSE = "intro-python"
SECRETS = "/srv/teachlab/secrets"


@pytest.fixture(scope="module")
def registry_image(docker_client, build_settings, stack_images) -> str:
    """The registry's image, built with `teachlab deploy build`'s code on this engine (kept between sessions)."""
    return StackImageBuilder(replace(build_settings, labels=CACHE_LABEL), docker_client, with_registry=True).build_registry()


@pytest.fixture(scope="module")
def swarm_lab(
    docker_client,
    session_id,
    session_labels,
    build_settings,
    dind_image,
    stack_images,
    registry_image,
    servers_network,
    university,
    prod_tls,
    prod_courses,
    prod_catalog,
    repo_root,
):
    """The manager installed as docs/admins.md says, a worker added as its "Adding machines" section says, and the
    stack deployed with the ``swarm`` section; yields (lab, cluster)."""
    _, references = stack_images
    cluster = Cluster(docker_client, f"tl-prodswarm-{session_id}", dind_image, session_labels, network=servers_network)
    try:
        cluster.start()
        manager = cluster.nodes[0]
        started = time.monotonic()
        cluster.load_images([*references, registry_image], [manager])
        manager.write_file("/root/teachlab.tar.gz", release_tarball(repo_root))
        manager.write_file("/etc/teachlab/tls/lab.crt", prod_tls.certificate.read_bytes())
        manager.write_file("/etc/teachlab/tls/lab.key", prod_tls.key.read_bytes(), mode=0o644)
        values = {
            "LAB_HOST": DOMAIN,
            "SERVER_ADDRESS": manager.address,
            "OIDC_ISSUER": university.issuer,
            "OIDC_CLIENT_ID": CLIENT_ID,
            "OIDC_CLIENT_SECRET": "university-client-secret",
            "ADMIN_GROUP": "lab-admins",
        }
        script = install_script(repo_root / "docs" / "admins.md", values)
        namespace = {"TEACHLAB_IMAGE_NAMESPACE": build_settings.image_namespace}
        result = manager.sh(script, timeout=1800, check=False, env=namespace)
        assert result.returncode == 0, f"docs/admins.md's Install steps failed:\n{result.stdout[-4000:]}"
        print(f"\nmanager installed in {time.monotonic() - started:.0f} s")
        publish_on_server(manager, cluster, build_settings, prod_courses, prod_catalog)
        lab = ProdLab(manager, university.issuer, prod_tls.ca_certificate, build_settings.image_namespace)

        # Adding machines, 1: the worker joins; the nodes' roles.
        worker = cluster.add_node(engine_tls=True)  # its dockerd waits for its certificate
        site = yaml.safe_load(manager.read_file(SITE_FILE))
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
        cluster.load_images([stack_images[0].hub, prod_courses[COURSE].image], [worker])
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
    finally:
        cluster.remove()


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
    alice = signed_in_users(lab)("alice")
    response = alice.start(COURSE)
    assert response.status_code in (201, 202), response.text
    alice.wait_until_ready(COURSE, timeout=300)
    assert alice.get_server_page("api/status", course=COURSE).status_code == 200
    on_worker = worker.docker("ps", "--filter", f"label={Labels.USER}=alice", "--format", "{{.Names}}").stdout.split()
    on_manager = manager.docker("ps", "--filter", f"label={Labels.USER}=alice", "--format", "{{.Names}}").stdout.split()
    assert len(on_worker) == 1 and on_manager == [], (on_worker, on_manager)
