"""Confined course builds on the real engine: the mirror proxy (tinyproxy from Debian's packages, on the offline
root filesystem) is the build's only way out, and only to the allow-listed mirror; memory and time are limited.

Every address these tests reach is a container they start themselves: two listeners on the proxy's egress
network, one named as the "mirror" (allow-listed), one as some other host. Nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from spawner.core.contract import Labels
from spawner.engine.build import BuildFailed, build_image, tar_context
from spawner.images.build import ImageBuilder
from spawner.images.mirror_proxy import MirrorProxy

pytestmark = [pytest.mark.docker, pytest.mark.images]

MIRROR, OTHER = "mirror.confinement.test", "other-host.confinement.test"
PROBE_TIME_LIMIT_SECONDS = 60  # the probe's direct fetch waits out its 5 s timeout; a busy engine adds seconds
SHORT_TIME_LIMIT_SECONDS = 8
LISTENER = "import http.server as h; h.HTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"
PROBE = r"""
import os, urllib.request, urllib.error
def fetch(url, proxy):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({'http': os.environ['HTTP_PROXY']} if proxy else {}))
    try:
        return 'answer %s' % opener.open(url, timeout=5).status
    except urllib.error.HTTPError as error:
        return 'refused %s' % error.code
    except OSError as error:
        return 'unreachable (%s)' % type(error).__name__
print('MIRROR', fetch('http://%s:8080/' % 'MIRROR_HOST', True))
print('OTHER', fetch('http://%s:8080/' % 'OTHER_HOST', True))
print('DIRECT', fetch('http://%s:8080/' % 'OTHER_ADDRESS', False))
"""


@pytest.fixture(scope="module")
def confined(docker_client, build_settings, base_image, session_labels, session_id):
    """A mirror proxy of a lab of its own whose only mirror is a listener container; another listener beside it."""
    settings = dataclasses.replace(
        build_settings,
        pip_index_url=f"http://{MIRROR}:8080/simple",
        build_memory_bytes=256 * 2**20,
        build_time_limit_seconds=PROBE_TIME_LIMIT_SECONDS,
    )
    builder = ImageBuilder(settings, client=docker_client)
    proxy = MirrorProxy(builder, lab=f"confinement-{session_id}", name_prefix=f"cf{session_id}", labels=session_labels)
    confinement = proxy.ensure()
    rootfs = builder.ensure_rootfs(builder.flavor("debian-py39"))
    listeners = {}
    for alias in (MIRROR, OTHER):
        container = docker_client.containers.create(
            rootfs,
            ["python3", "-c", LISTENER],
            labels=session_labels,
            working_dir="/tmp",
            network=proxy.egress_network,
            networking_config={proxy.egress_network: docker_client.api.create_endpoint_config(aliases=[alias])},
        )
        container.start()
        container.reload()
        listeners[alias] = container
    time.sleep(1)  # the listeners bind
    yield builder, proxy, confinement, listeners, rootfs
    for container in listeners.values():
        container.remove(force=True)
    proxy.remove()


def confined_build(builder, confinement, rootfs, run: str, log_path, files: dict[str, str] | None = None) -> list[str]:
    """Build ``FROM <rootfs>`` + ``RUN <run>`` the way teachlab-courses builds course environments (``files`` are
    copied to /tmp/probe/ first); returns the build's log lines."""
    lines: list[str] = []
    builder.confinement = confinement
    copy = "COPY probe/ /tmp/probe/\n" if files else ""
    build_image(
        builder.client,
        context=tar_context(
            {"Dockerfile": f"FROM {rootfs}\n{copy}RUN {run}\n", **{f"probe/{k}": v for k, v in (files or {}).items()}}
        ),
        tag=f"{builder.settings.image_namespace}/confinement-probe:latest",
        labels=dict(builder.settings.labels),
        log_path=log_path,
        on_line=lines.append,
        no_cache=True,
        **builder.course_build_options(),
    )
    return lines


def test_the_build_reaches_the_mirror_through_the_proxy_and_nothing_else(confined, tmp_path):
    builder, proxy, confinement, listeners, rootfs = confined
    other_address = listeners[OTHER].attrs["NetworkSettings"]["Networks"][proxy.egress_network]["IPAddress"]
    probe = PROBE.replace("MIRROR_HOST", MIRROR).replace("OTHER_HOST", OTHER).replace("OTHER_ADDRESS", other_address)
    lines = confined_build(
        builder, confinement, rootfs, "python3 /tmp/probe/probe.py", tmp_path / "build.log", {"probe.py": probe}
    )
    results = {
        line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines if line.startswith(("MIRROR ", "OTHER ", "DIRECT "))
    }
    assert results["MIRROR"] == "answer 200"
    assert results["OTHER"] == "refused 403"  # the proxy's allow-list
    assert results["DIRECT"].startswith("unreachable")  # the internal network has no route but the proxy
    assert "GET /" in listeners[MIRROR].logs().decode()
    assert listeners[OTHER].logs().decode().strip() == ""  # the proxy never connected to it
    assert any("refused" in line.lower() or "filtered" in line.lower() for line in proxy.log_tail(50))


def test_the_proxy_is_confined_itself(confined, docker_client):
    _, proxy, _, _, _ = confined
    attrs = docker_client.containers.get(proxy.container_name).attrs
    assert attrs["HostConfig"]["ReadonlyRootfs"] is True and attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in attrs["HostConfig"]["SecurityOpt"] and attrs["Config"]["User"] == "tinyproxy"
    networks = attrs["NetworkSettings"]["Networks"]
    assert set(networks) == {proxy.internal_network, proxy.egress_network}
    assert docker_client.networks.get(proxy.internal_network).attrs["Internal"] is True
    assert attrs["Config"]["Labels"][Labels.BUILD_PROXY] == proxy.lab


def test_a_build_past_its_memory_limit_fails(confined, tmp_path):
    builder, _, confinement, _, rootfs = confined
    with pytest.raises(BuildFailed, match="non-zero code: 137"):
        confined_build(builder, confinement, rootfs, "python3 -c 'bytearray(600 * 2**20)'", tmp_path / "memory.log")


def test_a_build_past_its_time_limit_is_stopped_and_leaves_no_container(confined, docker_client, tmp_path):
    builder, _, confinement, _, rootfs = confined
    short = dataclasses.replace(confinement, limits=dataclasses.replace(confinement.limits, seconds=SHORT_TIME_LIMIT_SECONDS))
    started = time.monotonic()
    with pytest.raises(BuildFailed, match=f"longer than its limit of {SHORT_TIME_LIMIT_SECONDS} s"):
        confined_build(builder, short, rootfs, "sleep 120", tmp_path / "time.log")
    assert time.monotonic() - started < 30
    time.sleep(2)
    assert not [c for c in docker_client.containers.list() if "sleep 120" in " ".join(c.attrs["Config"]["Cmd"] or [])]
