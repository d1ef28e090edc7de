"""Locks of the three layers: only pinned lines get through, and the server lock carries every hash."""

from __future__ import annotations

import pytest

from spawner.core.problems import ProblemsError, TeachlabError
from spawner.images.locks import (
    check_conda_lock,
    check_debian_lock,
    check_pip_lock,
    debian_lock_versions,
    pip_lock_versions,
    server_lock_from_report,
)

HASH = "a" * 64


def test_pip_lock_lines_are_kept_and_comments_dropped():
    text = f"# made by pip freeze\nnumpy==1.26.4\n\ntorch==2.3.0+cu121 --hash=sha256:{HASH}\n"
    assert check_pip_lock(text, "lock", hashes_required=False) == f"numpy==1.26.4\ntorch==2.3.0+cu121 --hash=sha256:{HASH}\n"
    assert pip_lock_versions(text) == {"numpy": "1.26.4", "torch": "2.3.0+cu121"}


def test_every_bad_line_is_named():
    with pytest.raises(ProblemsError) as refused:
        check_pip_lock("--extra-index-url https://x.example.org\nok==1\n--trusted-host x\n", "v1 lock", hashes_required=False)
    assert [(p.file, p.path) for p in refused.value.problems] == [("v1 lock", "line 1"), ("v1 lock", "line 3")]


def test_hashes_required_means_on_every_line():
    with pytest.raises(ProblemsError, match=r"'six==1\.17\.0' is not a lock line"):
        check_pip_lock(f"a==1 --hash=sha256:{HASH}\nsix==1.17.0\n", "server lock", hashes_required=True)


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("bash=5.2 ; rm -rf /", id="shell"),
        pytest.param("$(curl x)", id="substitution"),
        pytest.param("bash", id="no-version"),
        pytest.param("-o APT::Get::AllowUnauthenticated=1", id="apt-option"),
    ],
)
def test_a_debian_lock_takes_only_package_equals_version(line):
    with pytest.raises(ProblemsError):
        check_debian_lock(f"tini=0.19.0-1\n{line}\n", "debian lock")


def test_a_debian_lock_is_sorted_and_read_back():
    text = check_debian_lock("tini=0.19.0-1\nlibc6=2.36-9+deb12u9\npython3.9=3.9.2-1+deb11u7\n", "debian lock")
    assert text.splitlines() == ["libc6=2.36-9+deb12u9", "python3.9=3.9.2-1+deb11u7", "tini=0.19.0-1"]
    assert debian_lock_versions(text)["libc6"] == "2.36-9+deb12u9"


def test_a_conda_lock_needs_urls_with_their_md5():
    good = (
        "@EXPLICIT\nhttps://conda.example.edu/pkgs/main/linux-64/numpy-1.26.4-py39h0_0.conda#0123456789abcdef0123456789abcdef\n"
    )
    assert check_conda_lock(good, "conda lock") == good
    with pytest.raises(ProblemsError):
        check_conda_lock("@EXPLICIT\nhttps://conda.example.edu/numpy-1.26.4-py39h0_0.conda\n", "conda lock")
    with pytest.raises(ProblemsError):
        check_conda_lock("@EXPLICIT\n--override-channels\n", "conda lock")


def test_server_lock_from_pips_report():
    report = {
        "install": [
            {
                "metadata": {"name": "Jupyter_Server", "version": "2.21.1"},
                "download_info": {"url": "https://files.example.org/j.whl", "archive_info": {"hashes": {"sha256": HASH}}},
            },
            {
                "metadata": {"name": "anyio", "version": "4.16.0"},
                "download_info": {"url": "https://files.example.org/a.whl", "archive_info": {"hash": "sha256=" + "b" * 64}},
            },
        ]
    }
    assert (
        server_lock_from_report(report)
        == f"anyio==4.16.0 --hash=sha256:{'b' * 64}\njupyter-server==2.21.1 --hash=sha256:{HASH}\n"
    )
    # The IRI grammar jsonschema's format extra pulls in costs more boot CPU than the rest of the server: left out.
    archive = {"archive_info": {"hash": "sha256=" + "c" * 64}}
    for name in ("rfc3987_syntax", "lark"):
        report["install"].append({"metadata": {"name": name, "version": "1.0"}, "download_info": archive})
    assert "rfc3987" not in server_lock_from_report(report) and "lark" not in server_lock_from_report(report)
    report["install"].append(
        {"metadata": {"name": "local", "version": "1"}, "download_info": {"url": "file:///x", "dir_info": {}}}
    )
    with pytest.raises(TeachlabError, match="no sha256 for local"):
        server_lock_from_report(report)
