"""What a confined course build may reach and use (spawner/images/confinement.py): the mirror allow-list, the
proxy's configuration and the build's arguments and limits. The proxy itself runs in
tests/docker/test_build_confinement.py."""

from __future__ import annotations

import re

import pytest

from spawner.core.problems import TeachlabError
from spawner.images.confinement import (
    PROXY_BUILD_ARGUMENTS,
    BuildConfinement,
    BuildLimits,
    mirror_hosts,
    proxy_config,
    proxy_filter,
)

DEFAULTS = ("index.example", "files.example")


def hosts(**changes):
    values = {
        "index_url": None,
        "extra_index_urls": (),
        "conda_channels": (),
        "conda_channel_alias": None,
        "extra_hosts": (),
        "default_index_hosts": DEFAULTS,
    }
    return mirror_hosts(**{**values, **changes})


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({}, DEFAULTS, id="pip-defaults-when-no-mirror-is-set"),
        pytest.param(
            {"index_url": "https://reader:s3cret@Mirror.Example.edu:8443/pypi/simple"},
            ("mirror.example.edu",),
            id="a-mirror-replaces-the-defaults-credentials-and-port-dropped",
        ),
        pytest.param(
            {
                "index_url": "https://mirror.example.edu/simple",
                "extra_index_urls": ("https://extra.example.edu/simple", "file:///opt/wheels"),
            },
            ("mirror.example.edu", "extra.example.edu"),
            id="extra-indexes-but-not-local-folders",
        ),
        pytest.param(
            {"index_url": "https://mirror.example.edu/simple", "extra_hosts": ("Files.Mirror.example.edu", "mirror.example.edu")},
            ("mirror.example.edu", "files.mirror.example.edu"),
            id="the-sites-extra-hosts-once-each",
        ),
        pytest.param(
            {
                "index_url": "https://mirror.example.edu/simple",
                "conda_channel_alias": "https://conda.example.edu",
                "conda_channels": ("conda-forge",),
            },
            ("mirror.example.edu", "conda.example.edu"),
            id="conda-mirror-host-channel-names-are-not-hosts",
        ),
    ],
)
def test_the_build_reaches_only_the_mirrors(changes, expected):
    assert hosts(**changes) == expected


@pytest.mark.parametrize("bad", ["*.example.edu", "example.edu/evil", "a b", "-x.example.edu", "x" * 64 + ".edu"])
def test_an_extra_host_that_is_not_a_host_name_is_refused_in_one_line(bad):
    with pytest.raises(TeachlabError, match=r"^TEACHLAB_BUILD_ALLOWED_HOSTS: .* is not a host name \(write names like"):
        hosts(extra_hosts=(bad,))


def test_no_mirror_at_all_is_refused():
    with pytest.raises(TeachlabError, match="no mirror to reach"):
        hosts(default_index_hosts=())


def test_the_filter_matches_exact_host_names_only():
    lines = proxy_filter(("pypi.example.org", "files.example.org")).splitlines()
    assert lines == [r"^pypi\.example\.org$", r"^files\.example\.org$"]
    pattern = re.compile(lines[0])
    assert pattern.search("pypi.example.org")
    for other in ("pypiXexample.org", "evil-pypi.example.org", "pypi.example.org.evil.net"):
        assert not pattern.search(other)


def test_the_proxy_serves_only_the_builds_subnet_denies_by_default_and_tunnels_only_to_443():
    config = proxy_config("192.168.16.0/20").splitlines()
    assert "Allow 192.168.16.0/20" in config and sum(line.startswith("Allow ") for line in config) == 1
    assert "FilterDefaultDeny Yes" in config and "FilterURLs Off" in config and "FilterType ere" in config
    assert [line for line in config if line.startswith("ConnectPort")] == ["ConnectPort 443"]


def test_a_confined_build_gets_the_proxy_and_the_limits_and_nothing_else():
    confinement = BuildConfinement("lab-builds", "http://192.168.16.2:8888", BuildLimits(2 * 2**30, 512, 900))
    assert confinement.build_arguments() == dict.fromkeys(PROXY_BUILD_ARGUMENTS, "http://192.168.16.2:8888")
    assert confinement.limits.container_limits() == {"memory": 2 * 2**30, "memswap": 2 * 2**30, "cpushares": 512}
