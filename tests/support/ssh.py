"""Debian's OpenSSH client against the lab's teachlab-ssh gateway, and the keys page as a student uses it.

Every command runs the real ``ssh``, ``scp`` or ``sftp`` with no user or system config (``-F /dev/null``),
a throw-away known_hosts file, and exactly the identity the test names (``IdentitiesOnly``), so nothing
from the machine's own ~/.ssh changes what a test sees.
"""

from __future__ import annotations

import os
import re
import subprocess
from html import unescape
from pathlib import Path

from spawner.devlab.lab import Lab
from support.hub import HubUser

GATEWAY_PREFIX = "teachlab-ssh: "
XSRF_FIELD = re.compile(r'name="_xsrf" value="([^"]+)"')


def make_key(folder: Path, name: str) -> Path:
    """An ed25519 key pair made by ssh-keygen; returns the private key's path (``.pub`` beside it)."""
    path = folder / name
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@tests", "-f", str(path)], check=True)
    return path


def refusal_lines(stderr: str) -> list[str]:
    """The gateway's own lines in what the client printed."""
    return [line.strip() for line in stderr.splitlines() if GATEWAY_PREFIX in line]


class OpenSsh:
    def __init__(self, lab: Lab, folder: Path):
        self.lab = lab
        self.folder = folder
        self.known_hosts = folder / "known_hosts"

    def options(self, key: Path | None = None, *, password: bool = False) -> list[str]:
        options = [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "ServerAliveInterval=10",
        ]
        if password:
            options += [
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "NumberOfPasswordPrompts=1",
            ]
        else:
            options += ["-o", "BatchMode=yes", "-o", "PasswordAuthentication=no", "-o", "IdentitiesOnly=yes"]
            options += ["-o", "IdentityAgent=none"] if key is not None else []
            options += ["-i", str(key)] if key is not None else []
        return options

    def environment(self, password: str | None = None) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "SSH_AUTH_SOCK"}
        if password is not None:
            askpass = self.folder / "askpass.sh"
            askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$TEACHLAB_TEST_PASSWORD"\n')
            askpass.chmod(0o700)
            env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", TEACHLAB_TEST_PASSWORD=password, DISPLAY=":0")
        return env

    def ssh_command(self, login: str, *arguments: str, key: Path | None = None, password: bool = False) -> list[str]:
        return ["ssh", "-p", str(self.lab.ports.ssh), *self.options(key, password=password), f"{login}@127.0.0.1", *arguments]

    def ssh(
        self,
        login: str,
        *arguments: str,
        key: Path | None = None,
        password: str | None = None,
        input: str | None = None,
        timeout: float = 180,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.ssh_command(login, *arguments, key=key, password=password is not None),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environment(password),
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def scp(self, *arguments: str, key: Path, timeout: float = 120) -> subprocess.CompletedProcess:
        command = ["scp", "-P", str(self.lab.ports.ssh), *self.options(key), *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.environment())

    def sftp(self, login: str, batch: str, *, key: Path, timeout: float = 120) -> subprocess.CompletedProcess:
        command = ["sftp", "-P", str(self.lab.ports.ssh), *self.options(key), "-b", "-", f"{login}@127.0.0.1"]
        return subprocess.run(command, input=batch, capture_output=True, text=True, timeout=timeout, env=self.environment())


class KeysPage:
    """The teachlab-ssh page in a signed-in student's browser session (the hub's OAuth, then its forms)."""

    def __init__(self, user: HubUser):
        self.user = user
        self.url = user.lab.service_url("teachlab-ssh")

    def open(self):
        page = self.user.session.get(self.url)
        assert page.status_code == 200 and "teachlab-ssh-keys" in page.text, (page.status_code, page.url, page.text[:300])
        return page

    def xsrf(self) -> str:
        match = XSRF_FIELD.search(self.open().text)
        assert match, "the keys page has no _xsrf field"
        return unescape(match.group(1))

    def add(self, public_key: str, *, with_xsrf: bool = True):
        data = {"public_key": public_key}
        if with_xsrf:
            data["_xsrf"] = self.xsrf()
        return self.user.session.post(self.url + "keys", data=data, allow_redirects=False)

    def delete(self, key_id: int):
        return self.user.session.post(f"{self.url}keys/{key_id}/delete", data={"_xsrf": self.xsrf()}, allow_redirects=False)

    def register(self, key: Path) -> None:
        response = self.add(key.with_suffix(".pub").read_text())
        assert response.status_code == 200 and "Added ssh-ed25519 key" in response.text, response.text[-500:]
