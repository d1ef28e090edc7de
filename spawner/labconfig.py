"""Deployment settings of one lab, read from ``TEACHLAB_*`` variables when the hub loads its config.

``teachlab lab up`` (and the test harness) set these variables when they start the hub; a site
that runs the hub its own way sets them in its service definition. Read only when
``LabConfig.from_environment()`` is called, never at import.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from .settings import REPO_ROOT, default_state_dir


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class LabConfig:
    state_dir: Path
    catalog_path: Path
    public_url: str = "http://127.0.0.1:8000"
    hub_port: int = 8081
    proxy_api_url: str = "http://127.0.0.1:8001"
    network: str = "teachlab-students"
    oidc_issuer: Optional[str] = None
    oidc_client_id: str = "teachlab-hub"
    oidc_client_secret: str = ""
    admin_groups: tuple[str, ...] = ("lab-admins",)
    cli_token: Optional[str] = None
    cull_every_seconds: int = 60
    poll_interval_seconds: int = 30
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    today: Optional[str] = None  # ISO date; fixes "today" for course terms (tests, demos)
    gpu_inventory: str = ""  # "nvml", a JSON list of declared devices, or "" for none
    gpu_ledger_url: Optional[str] = None
    gpu_service_port: int = 8083

    @property
    def lab_id(self) -> str:
        """Labels this lab's containers, so two labs on one engine never count each other's GPUs."""
        return hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]

    @property
    def lab_dir(self) -> Path:
        return self.state_dir / "lab"

    @property
    def registry_dir(self) -> Path:
        return self.state_dir / "courses"

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "LabConfig":
        env = os.environ if environ is None else environ
        get = env.get
        return cls(
            state_dir=default_state_dir(env).resolve(),
            catalog_path=Path(get("TEACHLAB_CATALOG") or REPO_ROOT / "course_envs").resolve(),
            public_url=get("TEACHLAB_PUBLIC_URL", cls.public_url),
            hub_port=int(get("TEACHLAB_HUB_PORT", cls.hub_port)),
            proxy_api_url=get("TEACHLAB_PROXY_API_URL", cls.proxy_api_url),
            network=get("TEACHLAB_NETWORK", cls.network),
            oidc_issuer=get("TEACHLAB_OIDC_ISSUER") or None,
            oidc_client_id=get("TEACHLAB_OIDC_CLIENT_ID", cls.oidc_client_id),
            oidc_client_secret=get("TEACHLAB_OIDC_CLIENT_SECRET", ""),
            admin_groups=_list(get("TEACHLAB_ADMIN_GROUPS", ",".join(cls.admin_groups))),
            cli_token=get("TEACHLAB_CLI_TOKEN") or None,
            cull_every_seconds=int(get("TEACHLAB_CULL_EVERY", cls.cull_every_seconds)),
            poll_interval_seconds=int(get("TEACHLAB_POLL_INTERVAL", cls.poll_interval_seconds)),
            extra_labels=json.loads(get("TEACHLAB_EXTRA_LABELS", "{}")),
            today=get("TEACHLAB_TODAY") or None,
            gpu_inventory=get("TEACHLAB_GPU_INVENTORY", ""),
            gpu_ledger_url=get("TEACHLAB_GPU_LEDGER_URL") or None,
            gpu_service_port=int(get("TEACHLAB_GPU_SERVICE_PORT", cls.gpu_service_port)),
        )
