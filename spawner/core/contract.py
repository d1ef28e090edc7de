"""Facts that several parts of Teachlab must agree on, each defined once.

* Label keys on containers, volumes, networks and images (``Labels``).
* The layout of the state folder the CLI, the hub and its services share (``StateLayout``).
* The image contract every course image keeps (``ImageContract``): the student's uid, where the Jupyter
  server and the course environment live, where work and course data are mounted, the kernel name.
* Custom scopes the hub grants and its services check.

A test greps the package for these literals outside this module: a fact spelled twice drifts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LABEL_PREFIX: Final = "org.teachlab."


class Labels:
    """Docker label keys. Values are plain text; keys never change between releases (reconciliation
    and cleanup find old containers by them)."""

    USER: Final = LABEL_PREFIX + "user"
    SERVER: Final = LABEL_PREFIX + "server"
    COURSE: Final = LABEL_PREFIX + "course"
    LAB: Final = LABEL_PREFIX + "lab"  # which lab (state folder) started a container: GPU reconciliation keys on it
    GPUS: Final = LABEL_PREFIX + "gpus"  # comma-separated device UUIDs a container holds
    NETWORK: Final = LABEL_PREFIX + "network"
    HELPER: Final = LABEL_PREFIX + "helper"  # short-lived containers the platform runs (never a student's)
    SMOKE_TEST: Final = LABEL_PREFIX + "smoke-test"
    LOCK_READER: Final = LABEL_PREFIX + "lock-reader"
    TEST_CACHE: Final = LABEL_PREFIX + "test-cache"  # images tests keep between sessions
    TEST_SESSION: Final = LABEL_PREFIX + "test-session"  # objects one test session made, removed at its end
    BUILD_PROXY: Final = LABEL_PREFIX + "build-proxy"  # the mirror proxy and networks of confined builds (value: the lab)
    STACK: Final = LABEL_PREFIX + "stack"  # the production stack's own objects (its database volume)
    # Swarm node labels an admin sets (docker node update --label-add): a node's role (cpu or gpu) and its GPUs,
    # comma-separated device ids as the node's runtime names them (docs/scale-out.md).
    NODE_ROLE: Final = LABEL_PREFIX + "node-role"
    NODE_GPUS: Final = LABEL_PREFIX + "node-gpus"

    @staticmethod
    def image(name: str) -> str:
        """An image label key, e.g. ``image("env-hash")`` -> ``org.teachlab.env-hash``."""
        return LABEL_PREFIX + name


@dataclass(frozen=True)
class StateLayout:
    """Where things live under a lab's state folder (``$TEACHLAB_STATE_DIR``, ``.teachlab`` by default)."""

    root: Path

    @property
    def courses(self) -> Path:
        """Version registry: ``<slug>.json`` and, per version, its locks, contents and SBOM under ``<slug>/``."""
        return self.root / "courses"

    @property
    def acceptances(self) -> Path:
        """Advisories an admin accepted in the Jupyter server environment (id, reason, expiry)."""
        return self.root / "advisories" / "accepted.json"

    @property
    def logs(self) -> Path:
        """Image build logs."""
        return self.root / "logs"

    @property
    def lab(self) -> Path:
        """The running lab's own files: databases, secrets, process logs and pids."""
        return self.root / "lab"

    @property
    def hub_database(self) -> Path:
        return self.lab / "jupyterhub.sqlite"

    @property
    def cookie_secret(self) -> Path:
        return self.lab / "jupyterhub_cookie_secret"

    @property
    def gpu_ledger(self) -> Path:
        return self.lab / "gpu-ledger.sqlite"

    @property
    def gpu_ledger_url(self) -> str:
        return f"sqlite:///{self.gpu_ledger}"

    @property
    def lab_secrets(self) -> Path:
        """Proxy token, OIDC client secret, CLI and monitoring tokens and demo passwords of ``teachlab lab up`` (0600)."""
        return self.lab / "secrets.json"

    @property
    def lab_description(self) -> Path:
        """Ports, network and catalog of the lab last started here, so ``lab down`` finds it."""
        return self.lab / "lab.json"

    @property
    def admin_token(self) -> Path:
        return self.lab / "admin-token"

    @property
    def auth_state_key(self) -> Path:
        """The key that encrypts auth state (the provider's tokens) in the hub database (0600)."""
        return self.lab / "auth-state.key"

    @property
    def volumes(self) -> Path:
        """Size-limited work volumes of this node: ``images/<name>.ext4`` mounted at ``mounts/<name>``."""
        return self.root / "volumes"

    @property
    def ssh_host_key(self) -> Path:
        """The SSH gateway's host key: generated once, kept (0600), so clients' known_hosts stay valid."""
        return self.lab / "ssh_host_ed25519_key"


@dataclass(frozen=True)
class ImageContract:
    """What every course image provides and every student container relies on."""

    uid: int = 1000
    gid: int = 1000
    username: str = "jovyan"
    home: str = "/home/jovyan"
    jupyter_env: str = "/opt/jupyter"
    course_env: str = "/opt/course-env"
    kernel_name: str = "course"
    login_shell: str = "/bin/bash"  # SSH clients expect a real login shell, and tar and sftp-server beside it
    sftp_server: str = "/usr/lib/openssh/sftp-server"  # Debian's openssh-sftp-server, in every flavor's rootfs

    @property
    def user(self) -> str:
        """``uid:gid`` as Docker's ``user`` option takes it."""
        return f"{self.uid}:{self.gid}"

    @property
    def work_mount(self) -> str:
        return f"{self.home}/work"

    @property
    def data_mount(self) -> str:
        return f"{self.home}/data"

    @property
    def persistent_settings(self) -> dict[str, str]:
        """Environment that keeps JupyterLab's and IPython's own files on the work volume: the home folder is
        scratch space (tmpfs) that a restart empties."""
        return {
            "JUPYTERLAB_SETTINGS_DIR": f"{self.work_mount}/.jupyter/lab/user-settings",
            "JUPYTERLAB_WORKSPACES_DIR": f"{self.work_mount}/.jupyter/lab/workspaces",
            "IPYTHONDIR": f"{self.work_mount}/.ipython",
        }

    @property
    def singleuser_command(self) -> list[str]:
        return [f"{self.jupyter_env}/bin/jupyterhub-singleuser"]

    @property
    def jupyter_python(self) -> str:
        return f"{self.jupyter_env}/bin/python"

    @property
    def init(self) -> list[str]:
        """PID 1 of every container: tini reaps zombies and forwards signals to the whole group."""
        return ["/usr/bin/tini", "-g", "--"]

    @property
    def pip_lock(self) -> str:
        """``pip freeze`` of the course environment, written at build time."""
        return f"{self.course_env}/teachlab-lock.txt"

    @property
    def conda_lock(self) -> str:
        return f"{self.course_env}/teachlab-conda-lock.txt"

    @property
    def server_lock(self) -> str:
        """The hashed lock the Jupyter server environment was installed from, kept in the image."""
        return f"{self.jupyter_env}/teachlab-server-lock.txt"

    def template_values(self) -> Mapping[str, object]:
        """What Dockerfile and kernel templates see as ``contract``."""
        return {
            "uid": self.uid,
            "gid": self.gid,
            "username": self.username,
            "home": self.home,
            "jupyter_env": self.jupyter_env,
            "course_env": self.course_env,
            "kernel_name": self.kernel_name,
            "login_shell": self.login_shell,
            "sftp_server": self.sftp_server,
            "work_mount": self.work_mount,
            "data_mount": self.data_mount,
            "pip_lock": self.pip_lock,
            "conda_lock": self.conda_lock,
            "server_lock": self.server_lock,
            "init": self.init,
            "singleuser_command": self.singleuser_command,
        }


IMAGE: Final = ImageContract()


class Scopes:
    """Custom scopes (``c.JupyterHub.custom_scopes``) that the hub grants and its services check."""

    GPU_SERVICE: Final = "teachlab-gpu"
    GPU_ADMIN: Final = "custom:teachlab-gpu:admin"
    WARMER_SERVICE: Final = "teachlab-warmer"
    WARM: Final = "custom:teachlab-warmer:warm"  # start a course's servers ahead of a session

    @staticmethod
    def gpu_usage(course: str) -> str:
        return f"custom:teachlab-gpu:usage:{course}"

    SSH_SERVICE: Final = "teachlab-ssh"
    WORK_SERVICE: Final = "teachlab-work"  # students download their work in a course as one zip

    COURSES_SERVICE: Final = "teachlab-courses"
    COURSES_ADMIN: Final = "custom:teachlab-courses:admin"

    @staticmethod
    def course_publish(course: str) -> str:
        """Edit, publish and roll back one course's environment."""
        return f"custom:teachlab-courses:publish:{course}"

    @staticmethod
    def course_class(course: str) -> str:
        """Follow one course's class: its students and their servers."""
        return f"custom:teachlab-courses:class:{course}"


REPO_ROOT: Final = Path(__file__).resolve().parents[2]
STATE_DIR_VARIABLE: Final = "TEACHLAB_STATE_DIR"
# The lab's pages a service shows in the hub's navigation bar: a JSON list of {"name", "href"} the hub sets.
PAGE_LINKS_VARIABLE: Final = "TEACHLAB_PAGE_LINKS"


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """``$TEACHLAB_STATE_DIR``, else ``.teachlab`` at the repository root (git ignores it)."""
    return Path(environ.get(STATE_DIR_VARIABLE) or REPO_ROOT / ".teachlab")
