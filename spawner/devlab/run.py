"""``make up`` / ``make down``: the lab on one machine, for a newcomer's first look and for demos."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

from ..catalog import load_catalog
from ..core.progress import Progress
from ..core.secrets import write_private
from ..images.build import ImageBuilder
from ..images.publish import publish_course
from ..images.settings import BuildSettings
from .lab import Lab

OFFLINE_FLAVORS = ("debian-py39",)
DEMO_STUDENT, DEMO_COURSE = "student-alice", "intro-python"  # the ssh command `make up` prints


def publish_examples(catalog_path: Path, settings: BuildSettings, progress: Progress, console: Console) -> None:
    """Publish every course whose flavor this machine can build; say which ones it cannot."""
    catalog = load_catalog(catalog_path)
    builder = ImageBuilder(settings, progress)
    for flavor in sorted({course.image_flavor for course in catalog.courses.values()} & set(OFFLINE_FLAVORS)):
        builder.build_base(flavor)
    for course in sorted(catalog.courses.values(), key=lambda c: c.slug):
        if course.image_flavor not in OFFLINE_FLAVORS:
            console.print(
                f"skipping {course.slug}: its {course.image_flavor} image needs conda channels; publish it on a "
                "connected machine (docs/images.md)",
                markup=False,
            )
            continue
        result = publish_course(course, settings=settings, progress=progress, client=builder.client)
        console.print(f"{course.slug}: {result.version} is current ({result.outcome})", markup=False)


def lab_up(*, state_dir: Path, catalog_path: Path, console: Console, progress: Progress) -> Lab:
    settings = BuildSettings.from_environment(state_dir=state_dir.resolve())
    publish_examples(catalog_path, settings, progress, console)
    lab = Lab(state_dir=state_dir, catalog_path=catalog_path)
    with progress.step("start the login provider, the proxy and the hub"):
        lab.up()
    token_path = lab.layout.admin_token
    write_private(token_path, lab.secrets()["cli_token"].encode() + b"\n")
    console.print(f"\nTeachlab is up: {lab.public_url}\n", markup=False)
    console.print(
        f"It speaks HTTPS with a certificate of its own authority: import {lab.certificates.ca_certificate} "
        "into your browser as a trusted authority (or accept the warning once per host).",
        markup=False,
    )
    console.print("Open it, click 'Sign in with University login' and use one of these demo accounts:", markup=False)
    table = Table("username", "password", "groups", box=None, header_style="bold")
    for account in lab.accounts:
        table.add_row(str(account["username"]), lab.password(str(account["username"])), ", ".join(account["groups"]))
    console.print(table)
    console.print(
        f"\nSSH and VS Code: add your public key at {lab.public_url}/services/teachlab-ssh/ (signed in as {DEMO_STUDENT}), then\n"
        f"  {lab.ssh_command(DEMO_STUDENT, DEMO_COURSE)}",
        markup=False,
    )
    console.print(
        f"\nInstructors (prof-lee) publish course environments and follow their class at {lab.service_url('teachlab-courses')}; "
        f"admins (admin-ada) set GPU quotas at {lab.service_url('teachlab-gpu')}",
        markup=False,
    )
    console.print(
        f"\nAdmin API token for the CLI: {token_path}\nLogs: {lab.folder}/*.log\nStop with: make down (keeps all data)",
        markup=False,
    )
    return lab


def _active_users(lab: Lab) -> list[dict]:
    request = urllib.request.Request(
        f"{lab.hub_api_url()}/users?state=active", headers={"Authorization": f"token {lab.secrets()['cli_token']}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _stop_all_servers(lab: Lab, timeout: float = 120) -> int:
    """Ask the hub to stop every running server and wait until none is left; returns how many."""
    headers = {"Authorization": f"token {lab.secrets()['cli_token']}"}
    stopped = 0
    for user in _active_users(lab):
        for name in user.get("servers", {}):
            url = f"{lab.hub_api_url()}/users/{quote(user['name'], safe='')}/servers/{quote(name, safe='')}"
            urllib.request.urlopen(urllib.request.Request(url, method="DELETE", headers=headers), timeout=60)
            stopped += 1
    deadline = time.monotonic() + timeout
    while _active_users(lab) and time.monotonic() < deadline:
        time.sleep(1)
    return stopped


def lab_down(*, state_dir: Path, catalog_path: Path, console: Console) -> None:
    lab = Lab.load(state_dir, catalog_path=catalog_path)
    if lab.hub.pid():
        try:
            console.print(f"asked the hub to stop {_stop_all_servers(lab)} server(s)", markup=False)
        except (OSError, urllib.error.URLError) as exc:
            console.print(f"could not stop the servers through the hub ({exc}); stopping the lab anyway", markup=False)
    lab.down()
    console.print("Teachlab is down; volumes, published courses and the hub database are kept.", markup=False)
