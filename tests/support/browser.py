"""A real Chromium for browser tests: its arguments, and a HOME whose NSS database trusts a lab's CA."""

from __future__ import annotations

import subprocess
from pathlib import Path

CHROMIUM_ARGS = (
    "--no-sandbox",  # tests often run as root in a container, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1400, "height": 900}


def trusting_home(folder: Path, ca_certificate: Path) -> Path:
    """A HOME whose NSS database trusts the lab's CA, as a university's managed desktops trust theirs."""
    nssdb = folder / ".pki" / "nssdb"
    if not (nssdb / "cert9.db").exists():
        nssdb.mkdir(parents=True, exist_ok=True)
        subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True)
    nickname = f"teachlab-test-ca-{abs(hash(str(ca_certificate)))}"
    subprocess.run(
        ["certutil", "-A", "-d", f"sql:{nssdb}", "-n", nickname, "-t", "C,,", "-i", str(ca_certificate)],
        check=True,
        capture_output=True,
    )
    return folder


def sign_in_at_the_provider(page, lab, username: str) -> None:
    """From the hub's login page, through the university's login form, back to the hub home page."""
    page.get_by_role("button", name="Sign in with University login").click()
    page.wait_for_url(f"{lab.issuer}/**")
    page.locator("#username").fill(username)
    page.locator("#password").fill(lab.password(username))
    page.locator("button#login").click()
    page.wait_for_url(f"{lab.public_url}/hub/home")
