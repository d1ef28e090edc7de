"""The production stack (issue 13) on Docker-in-Docker servers: install from docs/admins.md, sign-in over HTTPS
through nginx, isolation, a broken site file, the hub killed, an upgrade with five servers running, the end of a
term and erasure, and last a backup restored onto a fresh swarm. One server is shared by the module
(tests/cluster/conftest.py); the tests run in this order and each leaves the lab as the next one expects."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile

import pytest
import requests
from playwright.sync_api import expect

from spawner.devlab.names import names_on_loopback
from support.browser import (
    expect_jupyterlab,
    forget_failed_requests,
    goto,
    sign_in_at_the_provider,
    watch_failed_requests,
)
from support.hub import HubUser
from support.probes import probe_arguments
from support.production import DOMAIN, GPU_COURSE, PREVIOUS_JUPYTERHUB_HEAD

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

COURSE = "intro-python"
COURSE_TITLE = "Introduction to Python"
WORK_FILE = "from-the-browser.txt"
WORK_TEXT = "written in the production lab"
SPAWN_TIMEOUT_MS = 180_000
USER_LABEL = "org.teachlab.user"


def test_the_install_steps_of_admins_md_end_with_a_working_https_lab(server, prod_tls):
    assert server.returncode == 0, f"the Install steps failed:\n{server.output[-4000:]}"
    assert "Teachlab is up: https://teachlab-prod.test" in server.output
    with names_on_loopback(DOMAIN, server.node.address):
        login = requests.get(f"https://{DOMAIN}/hub/login", verify=str(prod_tls.ca_certificate), timeout=30)
        assert login.status_code == 200 and "Sign in with University login" in login.text
        assert login.headers["Strict-Transport-Security"].startswith("max-age=")
        plain = requests.get(f"http://{DOMAIN}/hub/login?next=x", allow_redirects=False, timeout=30)
        assert plain.status_code == 301 and plain.headers["Location"] == f"https://{DOMAIN}/hub/login?next=x"
        user_host = requests.get(f"http://alice.{DOMAIN}/user/alice/", allow_redirects=False, timeout=30)
        assert user_host.headers["Location"] == f"https://alice.{DOMAIN}/user/alice/"


def test_a_site_file_with_mistakes_gets_one_line_per_problem_and_nothing_is_deployed(prod_lab):
    site = prod_lab.node.read_file("/etc/teachlab/site.yaml").decode()
    broken = site.replace("host:", "hots:", 1) + "network:\n  students_subnet: 172.30.0.0/28\n  ssh_port: twenty-two\n"
    prod_lab.node.write_file("/root/broken-site.yaml", broken, mode=0o600)
    before = prod_lab.stack_fingerprint()
    result = prod_lab.teachlab("deploy", "up", "--site", "/root/broken-site.yaml", check=False)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode != 0
    assert [line.split(": ", 1)[0] for line in lines] == [
        "/root/broken-site.yaml:hots",
        "/root/broken-site.yaml:host",
        "/root/broken-site.yaml:network.ssh_port",
    ], lines
    assert "Traceback" not in result.stdout
    assert prod_lab.stack_fingerprint() == before


def new_notebook_and_run(page, code: str):
    page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{COURSE_TITLE}"]').click()
    expect(page.get_by_role("button", name=f"{COURSE_TITLE} | Idle", exact=True)).to_be_visible(timeout=SPAWN_TIMEOUT_MS)
    cells = page.locator(".jp-NotebookPanel:visible .jp-Notebook-cell")
    cell = cells.nth(cells.count() - 1)  # pinned by position: Shift+Enter adds a cell below
    editor = cell.locator(".cm-content")
    editor.click()
    editor.fill(code)
    page.keyboard.press("Shift+Enter")
    return cell.locator(".jp-OutputArea-output")


def test_a_student_signs_in_over_https_starts_a_course_and_writes_a_file(prod_lab, prod_browser, output_dir):
    context = prod_browser.new_context()
    context.set_default_timeout(30_000)
    watch_failed_requests(context)
    page = context.new_page()
    try:
        goto(page, f"http://{DOMAIN}/hub/login")
        assert page.url.startswith(f"https://{DOMAIN}/hub/login"), page.url  # HTTP redirected to HTTPS
        sign_in_at_the_provider(page, prod_lab, "alice")
        page.locator(f"a#start-{COURSE}").click()
        page.wait_for_url(re.compile(rf"https://alice\.{re.escape(DOMAIN)}/user/alice/{COURSE}/lab"), timeout=SPAWN_TIMEOUT_MS)
        expect_jupyterlab(page, SPAWN_TIMEOUT_MS)
        code = f"open('/home/jovyan/work/{WORK_FILE}', 'w').write({WORK_TEXT!r}); print('written')"
        try:
            expect(new_notebook_and_run(page, code)).to_contain_text("written", timeout=60_000)
        except AssertionError:
            # JupyterLab's own requests fail as "Failed to fetch" when this machine's interfaces change (see
            # support.browser.goto): then, and only then, open the lab again and try once more.
            if not page.get_by_text("Failed to fetch").is_visible():
                raise
            goto(page, page.url.split("/lab")[0] + "/lab")
            page.get_by_role("button", name="New Launcher (Ctrl+Shift+L)").click()
            expect(new_notebook_and_run(page, code)).to_contain_text("written", timeout=60_000)
    finally:
        page.screenshot(path=output_dir / "last.png")
        for url, reason in forget_failed_requests(context):
            print(f"request failed: {url}: {reason}")
        context.close()
    container = prod_lab.server_container("alice", COURSE)
    assert prod_lab.docker("exec", container, "cat", f"/home/jovyan/work/{WORK_FILE}").stdout == WORK_TEXT


def test_the_proxy_api_and_postgresql_are_not_reachable_from_a_student_container(prod_lab):
    container = prod_lab.server_container("alice", COURSE)
    hub_address = prod_lab.site_value("hub_address")
    targets = {
        "hub (control)": (hub_address, 8081),
        "proxy API on the hub's address": (hub_address, 8001),
        "PostgreSQL on the hub's address": (hub_address, 5432),
        "proxy API on the server's address": (prod_lab.node.address, 8001),
        "PostgreSQL on the server's address": (prod_lab.node.address, 5432),
        "proxy on the server's address": (prod_lab.node.address, 8000),
    }
    reached = json.loads(prod_lab.docker(*probe_arguments(container, targets)).stdout)
    assert reached.pop("hub (control)") == "open"
    assert all(state != "open" for state in reached.values()), reached


def test_killing_the_hub_task_swarm_restarts_it_and_servers_stay_reachable(prod_lab, users):
    gail = users("gail")
    gail.start_and_wait(GPU_COURSE)
    alice = users("alice")
    assert alice.get_server_page("api/status", course=COURSE).status_code == 200
    servers = prod_lab.server_containers()
    old_hub = prod_lab.hub_container()
    prod_lab.docker("kill", old_hub)
    # Swarm starts a new task; the proxy keeps the routes meanwhile.
    assert alice.get_server_page("api/status", course=COURSE).status_code == 200
    new_hub = prod_lab.wait_for_new_hub(old_hub)
    assert new_hub != old_hub
    assert prod_lab.server_containers() == servers
    for user, course in (("alice", COURSE), ("gail", GPU_COURSE)):
        assert users(user).get_server_page("api/status", course=course).status_code == 200, user
        assert users(user).server(course)["ready"]
    facts = prod_lab.gpu_facts()
    assert facts["holdings"] == facts["containers"] and len(facts["holdings"]) == 1, facts


def test_an_upgrade_from_the_previous_release_database_keeps_five_servers_running(prod_lab, users, next_release, repo_root):
    for name in ("bob", "carol", "dave"):
        users(name).start_and_wait(COURSE)
    servers = prod_lab.server_containers()
    assert len(servers) == 5, servers
    old_image = prod_lab.hub_image()
    # The previous release's database (stand-in, named): the hub database taken back to JupyterHub's previous
    # migration head while that release's hub is stopped; the records are at the ledger's only revision.
    prod_lab.docker("service", "scale", "teachlab_hub=0", timeout=180)
    prod_lab.downgrade_hub_database(PREVIOUS_JUPYTERHUB_HEAD)
    started = time.monotonic()
    result = prod_lab.upgrade_as_documented(next_release.tarball, repo_root / "docs" / "admins.md")
    seconds = time.monotonic() - started
    print(f"\nteachlab deploy upgrade with five servers running: {seconds:.0f} s\n{result.stdout}")
    assert f"jupyterhub: {PREVIOUS_JUPYTERHUB_HEAD} -> " in result.stdout
    assert "students' servers still running: 5" in result.stdout
    assert prod_lab.hub_image() != old_image
    assert prod_lab.server_containers() == servers
    for name, course in (("alice", COURSE), ("bob", COURSE), ("carol", COURSE), ("dave", COURSE), ("gail", GPU_COURSE)):
        assert users(name).get_server_page("api/status", course=course).status_code == 200, name
        assert users(name).server(course)["ready"], name


def test_end_of_term_archives_and_deletes_a_course_and_erasing_a_person_leaves_nothing(prod_lab, users):
    eve = users("eve")
    for course in (COURSE, GPU_COURSE):
        eve.start_and_wait(course)
    prod_lab.add_ssh_key("eve")
    gail = prod_lab.server_container("gail", GPU_COURSE)
    prod_lab.docker("exec", gail, "sh", "-c", "echo 'my term project' > /home/jovyan/work/project.txt")
    # Before the term ends, a student downloads her work as one zip (her own only: the name comes from her login).
    download = users("gail").session.get(prod_lab.service_url("teachlab-work") + f"{GPU_COURSE}.zip", timeout=120)
    assert download.status_code == 200 and download.headers["Content-Type"] == "application/zip", download.text[:300]
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert archive.read(f"{GPU_COURSE}-work/project.txt") == b"my term project\n", archive.namelist()
    users("gail").ensure_stopped(GPU_COURSE)
    eve.ensure_stopped(GPU_COURSE)
    prod_lab.teachlab("gpu", "quota", "set", GPU_COURSE, "--max-concurrent", "2", "--hours", "10")
    owners = sorted(labels[USER_LABEL] for labels in prod_lab.volumes(course=GPU_COURSE).values() if USER_LABEL in labels)
    assert owners == ["eve", "gail"]

    too_early = prod_lab.teachlab("deploy", "archive-course", GPU_COURSE, check=False)
    assert too_early.returncode != 0 and "archive it after that day" in too_early.stdout
    after_term = {"TEACHLAB_TODAY": "2027-09-01"}
    archived = prod_lab.teachlab("deploy", "archive-course", GPU_COURSE, env=after_term)
    assert "2 work volume(s) archived" in archived.stdout
    left = prod_lab.volumes(course=GPU_COURSE)
    assert left and not any(USER_LABEL in labels for labels in left.values()), left  # the course's data stays
    assert prod_lab.node.sh("ls /srv/teachlab/archives/gpu-course").stdout.split() == [
        "eve.tar.gz",
        "gail.tar.gz",
        "manifest.json",
    ]
    listing = prod_lab.node.sh("tar -tzf /srv/teachlab/archives/gpu-course/gail.tar.gz").stdout.split()
    assert any(name.endswith("project.txt") for name in listing), listing
    assert '"action": "archive-course"' in prod_lab.audit_log()

    erased = prod_lab.teachlab("deploy", "erase-person", "eve", "--confirm", "eve")
    assert "volumes: 1" in erased.stdout and "ssh_keys: 1" in erased.stdout, erased.stdout
    assert prod_lab.volumes(user="eve") == {}
    assert prod_lab.docker("ps", "-aq", "--filter", "label=org.teachlab.user=eve").stdout.strip() == ""
    assert prod_lab.records_of("eve") == {"ssh_keys": 0, "gpu_rows": 0, "hub_user": False}
    assert prod_lab.node.sh("ls /srv/teachlab/archives/gpu-course").stdout.split() == ["gail.tar.gz", "manifest.json"]
    audit = prod_lab.audit_log()
    assert '"action": "erase-person"' in audit and '"eve"' not in audit

    prune = prod_lab.teachlab("deploy", "prune-archives", env={"TEACHLAB_TODAY": "2028-09-01"})
    assert "1 expired course archive(s) deleted" in prune.stdout
    assert prod_lab.node.sh("ls /srv/teachlab/archives").stdout.split() == []


def test_a_backup_restored_onto_a_fresh_swarm_brings_everything_back(restored_lab):
    """The backup is taken after the tests above (``restored_lab`` in tests/cluster/conftest.py)."""
    before = restored_lab.before
    assert [quota["course"] for quota in before["quotas"]] == [GPU_COURSE], before
    assert any(row[:2] == [GPU_COURSE, "gail"] and row[2] > 0 for row in before["usage"]), before
    assert all(course["current"] and course["versions"] for course in before["courses"].values()), before
    print(f"\nbackup: {restored_lab.backup_line}\nrestore onto a fresh swarm: {restored_lab.seconds:.0f} s")
    restored = restored_lab.lab
    assert restored.records_summary() == before
    with names_on_loopback(DOMAIN, restored.node.address):
        alice = HubUser(restored, "alice")
        alice.start_and_wait(COURSE)
        content = alice.get_server_page(f"api/contents/{WORK_FILE}?content=1", course=COURSE)
        assert content.status_code == 200 and content.json()["content"] == WORK_TEXT
