"""``python -m spawner.deploy.health``: the hub service's health check (its container's HEALTHCHECK).

The hub listens on the students' network's gateway (TEACHLAB_STUDENT_SUBNET's first address), not on
loopback; this asks its ``/hub/health`` there. Exit status 0 when the hub answers 200.
"""

from __future__ import annotations

import ipaddress
import sys
import urllib.request

from ..hub.settings import HubSettings


def hub_health_url(settings: HubSettings) -> str:
    if not settings.student_subnet:
        raise SystemExit("TEACHLAB_STUDENT_SUBNET is not set: the hub's address is unknown")
    address = next(ipaddress.ip_network(settings.student_subnet).hosts())
    return f"http://{address}:{settings.hub_port}/hub/health"


def main() -> int:
    url = hub_health_url(HubSettings.from_environment())
    try:
        with urllib.request.urlopen(url, timeout=8) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
