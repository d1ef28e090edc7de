"""The production stack on Docker-in-Docker servers, shared by the module's tests (``make test-cluster``).

* The stack's images, the node image and two published courses are built once on this machine's engine (the
  stack's and the node's are kept between sessions, like the base image).
* "The university": the real local OpenID Connect provider (deploy/oidc/provider.mjs), listening on this
  machine's address on the servers' network, and a certificate authority the test makes.
* ``server``: a fresh Docker-in-Docker node on which the steps of docs/admins.md's Install section run as
  written (the test gives its own values for the site-values block). Stand-in, named: the node starts with
  this session's images loaded (``docker save | docker load``) instead of building them again, so
  ``teachlab image build-base`` and ``teachlab deploy build`` find them current by their recipe digests.
* ``prod_lab``: that server after the admin publishes courses (the session's published versions and images are
  copied in) and declares four fake GPUs; every test of the module uses it.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from spawner.deploy.images import StackImageBuilder
from spawner.devlab.names import chromium_resolver_rules, names_on_loopback
from spawner.devlab.tls import LabCertificates
from support.accounts import FAKE_GPU_INVENTORY
from support.admin_docs import install_script
from support.browser import CHROMIUM_ARGS, VIEWPORT, trusting_home
from support.catalogs import copy_course
from support.cluster import Cluster, ensure_network, network_gateway, node_image
from support.hub import signed_in_users
from support.oidc import OidcProvider
from support.production import (
    ACCOUNTS,
    CACHE_LABEL,
    CLIENT_ID,
    DOMAIN,
    PASSWORD,
    PROD_COURSES,
    SITE_FILE,
    InstalledServer,
    ProdLab,
    publish_on_server,
    release_tarball,
)
from support.scale import build_scale_images, make_scale_catalog, publish_scale_courses, running_swarm, swarm_lab


@pytest.fixture(scope="session")
def stack_images(docker_client, build_settings, base_image):
    """The stack's images, built with `teachlab deploy build`'s code on this engine (kept between sessions)."""
    builder = StackImageBuilder(replace(build_settings, labels=CACHE_LABEL), docker_client)
    started = time.monotonic()
    images = builder.build()
    planned = builder.plan()
    print(f"\nstack images ready in {time.monotonic() - started:.1f} s: {', '.join(images.references())}")
    rootfs = builder.rootfs(build=False)
    return images, [rootfs, *(image.reference for image in planned), base_image]


@pytest.fixture(scope="session")
def prod_catalog(tmp_path_factory, repo_root) -> Path:
    """The examples plus a GPU course (intro-python's environment, one GPU)."""
    catalog = tmp_path_factory.mktemp("prod-catalog")
    for example in ("intro-python", "data-analysis", "deep-learning"):
        copy_course(repo_root, example, catalog)
    copy_course(
        repo_root,
        "intro-python",
        catalog,
        new_slug="gpu-course",
        title="GPU Course",
        gpu=1,
        students={"groups": ["gpu-testers"]},
    )
    return catalog


@pytest.fixture(scope="session")
def prod_courses(docker_client, build_settings, base_image, prod_catalog):
    """intro-python and gpu-course published on this engine: their versions and images go to the server."""
    from spawner.catalog import load_catalog
    from spawner.images.publish import publish_course

    catalog = load_catalog(prod_catalog)
    settings = replace(build_settings, labels=CACHE_LABEL)  # kept between sessions: a rerun publishes in seconds
    return {slug: publish_course(catalog.courses[slug], settings=settings, client=docker_client) for slug in PROD_COURSES}


@pytest.fixture(scope="session")
def dind_image(docker_client, build_settings, stack_images) -> str:
    _, references = stack_images
    return node_image(docker_client, references[0], build_settings.image_namespace, CACHE_LABEL, build_settings.log_dir)


@pytest.fixture(scope="session")
def servers_network(docker_client, session_id, session_labels) -> str:
    """The network of the servers, the university's provider and the test itself."""
    name = ensure_network(docker_client, f"tl-uni-{session_id}", session_labels)
    yield name
    try:
        docker_client.networks.get(name).remove()
    except Exception:  # noqa: BLE001 - the session's label cleanup removes it too
        pass


@pytest.fixture(scope="session")
def university(docker_client, servers_network, repo_root, tmp_path_factory):
    """The real local OpenID Connect provider, on this machine's address on the servers' network."""
    provider = OidcProvider(
        accounts=[{**account, "password": PASSWORD, "email": f"{account['username']}@example.edu"} for account in ACCOUNTS],
        clients=[
            {
                "client_id": CLIENT_ID,
                "client_secret": "university-client-secret",
                "redirect_uris": [f"https://{DOMAIN}/hub/oauth_callback"],
            }
        ],
        repo_root=repo_root,
        workdir=tmp_path_factory.mktemp("university"),
        host=network_gateway(docker_client, servers_network),
    )
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def prod_tls(tmp_path_factory) -> LabCertificates:
    """A CA the test makes, and a certificate for the lab's host and *.host."""
    return LabCertificates(tmp_path_factory.mktemp("prod-tls")).ensure(DOMAIN)


def site_values(node, university) -> dict[str, str]:
    """The test's values for the site-values block of docs/admins.md."""
    return {
        "LAB_HOST": DOMAIN,
        "SERVER_ADDRESS": node.address,
        "OIDC_ISSUER": university.issuer,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": "university-client-secret",
        "ADMIN_GROUP": "lab-admins",
    }


@pytest.fixture(scope="session")
def server(
    docker_client,
    session_id,
    session_labels,
    build_settings,
    dind_image,
    stack_images,
    servers_network,
    university,
    prod_tls,
    repo_root,
):
    """A fresh node where docs/admins.md's Install steps ran as written (their result is checked by a test)."""
    _, references = stack_images
    cluster = Cluster(docker_client, f"tl-prod-{session_id}-a", dind_image, session_labels, network=servers_network).start()
    node = cluster.nodes[0]
    load_seconds = cluster.load_images(references)
    node.write_file("/root/teachlab.tar.gz", release_tarball(repo_root))
    node.write_file("/etc/teachlab/tls/lab.crt", prod_tls.certificate.read_bytes())
    node.write_file("/etc/teachlab/tls/lab.key", prod_tls.key.read_bytes(), mode=0o644)  # the admin's chmod makes it 0600
    script = install_script(repo_root / "docs" / "admins.md", site_values(node, university))
    started = time.monotonic()
    # The one other difference from an admin's shell: images are named in this session's namespace.
    result = node.sh(script, timeout=1800, check=False, env={"TEACHLAB_IMAGE_NAMESPACE": build_settings.image_namespace})
    installed = InstalledServer(cluster, node, result.returncode, result.stdout, time.monotonic() - started, load_seconds)
    print(f"\nadmins.md Install on a fresh node: {installed.install_seconds:.0f} s (images loaded in {load_seconds:.0f} s)")
    yield installed
    cluster.remove()


@pytest.fixture(scope="session")
def prod_lab(server, build_settings, prod_courses, prod_catalog, prod_tls, university):
    if server.returncode != 0:
        pytest.fail(f"docs/admins.md's Install steps failed on the fresh server:\n{server.output[-4000:]}")
    node = server.node
    publish_on_server(node, server.cluster, build_settings, prod_courses, prod_catalog)
    site = yaml.safe_load(node.read_file(SITE_FILE))
    site["gpus"] = FAKE_GPU_INVENTORY
    node.write_file(SITE_FILE, yaml.safe_dump(site, sort_keys=False), mode=0o600)
    lab = ProdLab(node, university.issuer, prod_tls.ca_certificate, build_settings.image_namespace)
    lab.teachlab("deploy", "up")
    bundle = Path(prod_tls.ca_certificate.parent / "bundle.pem")
    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    bundle.write_bytes((Path(previous).read_bytes() if previous else b"") + prod_tls.ca_certificate.read_bytes())
    os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
    with names_on_loopback(DOMAIN, node.address):
        yield lab
    if previous is None:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
    else:
        os.environ["REQUESTS_CA_BUNDLE"] = previous


@pytest.fixture(scope="session")
def users(prod_lab):
    """People signed in to the production lab through the university's provider (one session each)."""
    return signed_in_users(prod_lab)


@pytest.fixture(scope="module")
def prod_browser(prod_lab, prod_tls, tmp_path_factory):
    """Headless Chromium (Debian's) that trusts the test's CA and resolves the lab's names to the server."""
    from playwright import sync_api

    home = trusting_home(tmp_path_factory.mktemp("prod-chromium-home"), prod_tls.ca_certificate)
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=[
                *CHROMIUM_ARGS,
                chromium_resolver_rules(DOMAIN, prod_lab.node.address),
                f"--window-size={VIEWPORT['width']},{VIEWPORT['height']}",
            ],
            env={**os.environ, "HOME": str(home)},
        )
        yield browser
        browser.close()
    finally:
        playwright.stop()


@dataclass(frozen=True)
class Release:
    tarball: bytes
    images: list[str]  # what a server of this release loads in place of building: the stack's and the bases


@pytest.fixture(scope="session")
def next_release(docker_client, build_settings, stack_images, server, repo_root, tmp_path_factory) -> Release:
    """The next release: this tree with its version raised. Its hub image is built here (only the spawner
    package's layer differs) and loaded into the server, as for the install."""
    folder = tmp_path_factory.mktemp("next-release")
    with tarfile.open(fileobj=io.BytesIO(release_tarball(repo_root)), mode="r:gz") as archive:
        archive.extractall(folder, filter="data")
    source = folder / "teachlab"
    pyproject = source / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', 'version = "0.1.1"', 1))
    builder = StackImageBuilder(replace(build_settings, labels=CACHE_LABEL), docker_client, source=source)
    started = time.monotonic()
    images = builder.build()
    print(f"\nthe next release's hub image {images.hub} ready in {time.monotonic() - started:.0f} s")
    server.cluster.load_images([images.hub], [server.node])
    _, references = stack_images
    old = set(stack_images[0].references())
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as archive:
        archive.add(source, arcname="teachlab")
    return Release(buffer.getvalue(), [*(r for r in references if r not in old), *images.references()])


@dataclass(frozen=True)
class Restored:
    """The lab restored from a backup onto a fresh node (``cluster``'s only node), with what it was checked
    against: the records summary the backup was taken with, the backup's line, the restore's seconds."""

    lab: ProdLab
    cluster: Cluster
    before: dict
    backup_line: str
    seconds: float


@pytest.fixture(scope="session")
def restored_lab(
    docker_client,
    session_id,
    session_labels,
    build_settings,
    dind_image,
    servers_network,
    university,
    prod_tls,
    repo_root,
    server,
    prod_lab,
    users,
    next_release,
) -> Iterator[Restored]:
    """The production lab backed up, its server destroyed (stack, volumes, engine), and on a fresh node Install's
    steps 1 to 4 and the Restore section of docs/admins.md run as written. The last test of
    test_production_stack.py checks it; test_production_swarm.py then grows it onto a second node."""
    users("alice").ensure_stopped("intro-python")  # her file is on her volume; stopped, her server ends cleanly
    before = prod_lab.records_summary()
    result = prod_lab.teachlab("deploy", "backup", "--to", "/srv/teachlab/backups")
    backup = re.search(r"backup written: (\S+)", result.stdout).group(1)
    copy = Path(tempfile.mkdtemp(prefix="teachlab-backup-", dir=os.environ.get("TMPDIR")))
    subprocess.run(["docker", "cp", f"{prod_lab.node.name}:{backup}", str(copy)], check=True, timeout=900)
    prod_lab.teachlab("deploy", "down")
    prod_lab.node.sh("docker rm -f $(docker ps -aq) >/dev/null 2>&1; docker volume rm $(docker volume ls -q) >/dev/null")
    server.cluster.remove()
    cluster = Cluster(docker_client, f"tl-prod-{session_id}-b", dind_image, session_labels, network=servers_network)
    try:
        cluster.start()
        node = cluster.nodes[0]
        cluster.load_images(next_release.images)
        node.write_file("/root/teachlab.tar.gz", next_release.tarball)
        node.write_file("/etc/teachlab/tls/lab.crt", prod_tls.certificate.read_bytes())
        node.write_file("/etc/teachlab/tls/lab.key", prod_tls.key.read_bytes(), mode=0o644)
        subprocess.run(["docker", "cp", str(copy / Path(backup).name), f"{node.name}:/root/"], check=True, timeout=900)
        shutil.rmtree(copy)
        document = repo_root / "docs" / "admins.md"
        script = install_script(document, site_values(node, university), first=4) + install_script(
            document, {"BACKUP": f"/root/{Path(backup).name}"}, "Restore onto a new server"
        )
        started = time.monotonic()
        restored = node.sh(script, timeout=1800, check=False, env={"TEACHLAB_IMAGE_NAMESPACE": build_settings.image_namespace})
        seconds = time.monotonic() - started
        assert restored.returncode == 0, f"the Restore steps failed:\n{restored.stdout[-4000:]}"
        lab = ProdLab(node, university.issuer, prod_tls.ca_certificate, build_settings.image_namespace)
        yield Restored(lab, cluster, before, result.stdout.strip(), seconds)
    finally:
        cluster.remove()


@pytest.fixture(autouse=True)
def server_logs_on_failure(request):
    """After a failed test, print what the server's services and the node agent said."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed or "prod_lab" not in request.fixturenames:
        return
    node = request.getfixturevalue("prod_lab").node
    script = (
        "docker service ps --no-trunc teachlab_hub teachlab_nginx teachlab_proxy teachlab_postgres | head -20; "
        'for service in teachlab_hub teachlab_nginx; do echo "== $service"; docker service logs --raw --tail 60 $service; done; '
        "for agent in $(docker ps -aq --filter label=org.teachlab.helper=node-agent); do echo '== node agent'; "
        "docker logs --tail 30 $agent; done"
    )
    print("\n" + node.sh(script, check=False, timeout=120).stdout[-12000:])


# The swarm of tests/support/scale.py, one per test module that uses it (module scope).
@pytest.fixture(scope="module")
def scale_catalog(tmp_path_factory, repo_root):
    return make_scale_catalog(tmp_path_factory.mktemp("scale-catalog"), repo_root)


@pytest.fixture(scope="module")
def scale_images(docker_client, build_settings):
    return build_scale_images(docker_client, build_settings)


@pytest.fixture(scope="module")
def swarm(docker_client, session_id, session_labels, scale_images, tmp_path_factory):
    with running_swarm(
        docker_client, f"tl-scale-{session_id}", scale_images, session_labels, tmp_path_factory.mktemp("engine-tls")
    ) as running:
        yield running


@pytest.fixture(scope="module")
def scale_courses(docker_client, build_settings, base_image, scale_catalog, swarm):
    """The courses published with the swarm's registry (the base image is the session's cache)."""
    began = time.monotonic()
    published = publish_scale_courses(docker_client, build_settings, scale_catalog, swarm.registry)
    print(f"\ncourses published and pushed to the registry in {time.monotonic() - began:.0f} s")
    return published


@pytest.fixture(scope="module")
def scale_lab(
    docker_client, build_settings, scale_images, scale_catalog, scale_courses, swarm, session_id, session_labels, tmp_path_factory
):
    with swarm_lab(
        docker_client,
        state_dir=build_settings.state_dir,
        image_namespace=build_settings.image_namespace,
        catalog=scale_catalog,
        images=scale_images,
        swarm=swarm,
        session_id=session_id,
        labels=session_labels,
        site_dir=tmp_path_factory.mktemp("scale-site"),
    ) as lab:
        yield lab
