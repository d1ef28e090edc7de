"""Locks of the three layers of an image: the Debian package set, the Jupyter server environment (with
hashes) and the course environment.

Pure (no Docker). A lock is read back to rebuild an image (``course build --from-lock``), so it is
checked line by line before it reaches a build: only ``name==version`` lines (plus ``--hash`` options
where a layer has them), ``name=version`` Debian lines, and a conda explicit list of package URLs with
their md5. Nothing else gets through: no pip options (``--extra-index-url``, ``-e``, ``-r``), no direct
URLs, no markers, so a lock cannot smuggle another package index into a build.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from packaging.utils import canonicalize_name

from ..core.problems import Problem, ProblemsError, TeachlabError

CONDA_PIP_SEPARATOR = "\n# pip\n"

_PIP_LINE = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*)"
    r"(?P<hashes>(?: --hash=sha256:[0-9a-f]{64})*)$"
)
_DEBIAN_LINE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9+.-]+)=(?P<version>[A-Za-z0-9.+~:-]+)$")
_CONDA_LINE = re.compile(r"^https?://[^\s#]+\.(?:conda|tar\.bz2)#[0-9a-f]{32}$")


def _content_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines that are neither blank nor comments."""
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]


def _refuse(where: str, bad: list[tuple[int, str]], expected: str) -> None:
    if bad:
        raise ProblemsError(
            [
                Problem(where, f"line {number}", f"'{line[:120]}' is not a lock line", f"a lock holds only {expected}")
                for number, line in bad
            ]
        )


def check_pip_lock(text: str, where: str, *, hashes_required: bool) -> str:
    """``text`` as a checked pip lock (comments dropped); ProblemsError names every line that is not
    ``name==version`` (with ``--hash=sha256:...`` options when ``hashes_required``)."""
    lines = _content_lines(text)
    bad = []
    for number, line in lines:
        match = _PIP_LINE.match(line)
        if match is None or (hashes_required and not match["hashes"]):
            bad.append((number, line))
    expected = "'name==version --hash=sha256:<64 hex>' lines" if hashes_required else "'name==version' lines"
    _refuse(where, bad, expected)
    return "".join(line + "\n" for _, line in lines)


def check_debian_lock(text: str, where: str) -> str:
    """``text`` as a checked, sorted Debian lock of ``name=version`` lines."""
    lines = _content_lines(text)
    _refuse(where, [(n, line) for n, line in lines if not _DEBIAN_LINE.match(line)], "'package=version' lines")
    return "".join(line + "\n" for line in sorted({line for _, line in lines}))


def check_conda_lock(text: str, where: str) -> str:
    """``text`` as a checked conda explicit list: ``@EXPLICIT`` and package URLs ending in ``#<md5>``."""
    lines = _content_lines(text)
    bad = [(n, line) for n, line in lines if line != "@EXPLICIT" and not _CONDA_LINE.match(line)]
    _refuse(where, bad, "'@EXPLICIT' and 'https://.../name-version-build.conda#<md5>' lines")
    return "".join(line + "\n" for _, line in lines)


def pip_lock_versions(text: str) -> dict[str, str]:
    """{canonical name: version} of a checked pip lock (or ``pip freeze`` output)."""
    versions = {}
    for _, line in _content_lines(text):
        match = _PIP_LINE.match(line)
        if match:
            versions[canonicalize_name(match["name"])] = match["version"]
    return versions


def debian_lock_versions(text: str) -> dict[str, str]:
    return {match["name"]: match["version"] for _, line in _content_lines(text) if (match := _DEBIAN_LINE.match(line))}


# Packages pip resolves for the server that it does not need, left out of the lock (installed --no-deps).
# jsonschema's "format-nongpl" extra (asked for by jupyter-events) pulls in an IRI grammar whose parser is
# built at import: 0.6 of the 1.1 CPU seconds a server took to boot; without it jsonschema skips that one
# format check ("iri"), which no Jupyter event schema uses.
SERVER_LEAVES_OUT = frozenset({"rfc3987-syntax", "lark"})


def server_lock_from_report(report: Mapping) -> str:
    """The hashed server lock from pip's installation report (``pip install --dry-run --report``), without
    ``SERVER_LEAVES_OUT``."""
    lines = []
    missing = []
    for item in report.get("install", []):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if canonicalize_name(name) in SERVER_LEAVES_OUT:
            continue
        archive = item.get("download_info", {}).get("archive_info", {})
        digest = archive.get("hashes", {}).get("sha256")
        if digest is None and str(archive.get("hash", "")).startswith("sha256="):
            digest = archive["hash"].split("=", 1)[1]
        if digest is None:
            missing.append(name)
            continue
        lines.append((canonicalize_name(name), f"{canonicalize_name(name)}=={version} --hash=sha256:{digest}"))
    if missing:
        raise TeachlabError(f"pip reported no sha256 for {', '.join(sorted(missing))}; the lock needs a hash for every package")
    return "".join(line + "\n" for _, line in sorted(lines))
