"""The site file (issue 13): its schema, the checks only the server can make, and the CLI's answers.

A site file with a mistake gets one line per problem (``FILE:KEY: what is wrong (how to fix)``) and nothing is
deployed: ``teachlab deploy up`` stops before it talks to Docker.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spawner.core.problems import ProblemsError
from spawner.deploy.site import load_site
from spawner.devlab.tls import LabCertificates

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "lab.example-uni.test"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> LabCertificates:
    return LabCertificates(tmp_path_factory.mktemp("tls")).ensure(HOST)


@pytest.fixture
def site_file(tmp_path, certificates):
    """Write a site file from ``data`` (a valid one merged with ``changes``); returns its path."""
    secret = tmp_path / "oidc-client-secret"
    secret.write_text("s3cret\n")

    def write(changes: dict | None = None, *, text: str | None = None) -> Path:
        data = {
            "host": HOST,
            "tls": {"certificate": str(certificates.certificate), "key": str(certificates.key)},
            "oidc": {
                "issuer": "https://login.example-uni.test/realms/u/",
                "client_id": "teachlab",
                "client_secret_file": str(secret),
            },
            "catalog": str(REPO_ROOT / "course_envs"),
        }
        for key, value in (changes or {}).items():
            if value is None:
                data.pop(key, None)
            elif isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        path = tmp_path / "site.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def problem_lines(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ProblemsError) as caught:
        load_site(path, **kwargs)
    return str(caught.value).splitlines()


def test_a_valid_site_file_gets_the_schemas_defaults(site_file):
    site = load_site(site_file())
    assert site.public_url == f"https://{HOST}"
    assert site.issuer == "https://login.example-uni.test/realms/u"  # trailing slash dropped
    assert site.username_claim == "preferred_username" and site.groups_claim == "groups"
    assert site.admin_groups == ("lab-admins",) and site.gpus == ()
    assert site.state_dir == Path("/srv/teachlab/state")
    assert site.hub_address == str(next(__import__("ipaddress").ip_network(site.students_subnet).hosts()))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({"hots": "x"}, ["site.yaml:hots: unknown key (did you mean 'host'?"], id="unknown-key-at-root"),
        pytest.param(
            {"oidc": {"clientid": "x"}}, ["site.yaml:oidc.clientid: unknown key (did you mean 'client_id'?"], id="nested-key"
        ),
        pytest.param({"host": None}, ["site.yaml:host: missing key (write e.g. host: "], id="missing-host"),
        pytest.param(
            {"network": {"ssh_port": "22"}}, ['site.yaml:network.ssh_port: must be a whole number, not text "22"'], id="type"
        ),
        pytest.param(
            {"hots": "x", "tls": None, "gpus": [{"uuid": "GPU-1", "index": 0, "model": "m"}]},
            ["site.yaml:hots: unknown key", "site.yaml:tls: missing key", "site.yaml:gpus[0].memory: missing key"],
            id="three-problems-three-lines",
        ),
    ],
)
def test_schema_problems_are_one_line_each(site_file, changes, expected):
    lines = problem_lines(site_file(changes))
    assert len(lines) == len(expected), lines
    for fragment, line in zip(expected, lines, strict=True):
        assert fragment in line, (fragment, lines)
    for line in lines:
        assert "site.yaml:" in line and line.endswith(")"), line  # FILE:KEY: what (fix)
    assert len(lines) == len(set(lines))


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        pytest.param(
            {"host": "other.example-uni.test"}, "tls.certificate: the certificate does not name other.", id="wrong-host"
        ),
        pytest.param({"tls": {"key": "/nonexistent/lab.key"}}, "tls.key: /nonexistent/lab.key does not exist", id="no-key"),
        pytest.param(
            {"oidc": {"client_secret_file": "/nonexistent/s"}}, "oidc.client_secret_file: /nonexistent/s", id="no-secret"
        ),
        pytest.param(
            {"network": {"students_subnet": "172.30.0.0/28"}}, "network.students_subnet: 172.30.0.0/28 is too small", id="small"
        ),
        pytest.param({"network": {"students_subnet": "8.8.0.0/16"}}, "is not a private range", id="public-subnet"),
        pytest.param({"catalog": "/nonexistent/catalog"}, "catalog: /nonexistent/catalog is not a folder", id="no-catalog"),
        pytest.param(
            {
                "gpus": [
                    {"uuid": "GPU-a", "index": 0, "model": "m", "memory": "1G"},
                    {"uuid": "GPU-a", "index": 1, "model": "m", "memory": "1G"},
                ]
            },
            "gpus[1].uuid: 'GPU-a' is listed twice",
            id="gpu-twice",
        ),
    ],
)
def test_what_only_the_server_can_check(site_file, changes, fragment):
    lines = problem_lines(site_file(changes))
    assert any(fragment in line for line in lines), lines


def test_a_key_of_another_certificate_and_an_expired_certificate(site_file, tmp_path_factory, certificates):
    other = LabCertificates(tmp_path_factory.mktemp("other-tls")).ensure(HOST)
    lines = problem_lines(site_file({"tls": {"key": str(other.key)}}))
    assert len(lines) == 1 and "tls.key: the key does not belong to the certificate" in lines[0], lines
    later = datetime.date.today() + datetime.timedelta(days=3000)
    assert any("expired on" in line for line in problem_lines(site_file(), today=later))


def test_a_yaml_syntax_error_is_one_line(site_file):
    lines = problem_lines(site_file(text="host: [unclosed\n"))
    assert len(lines) == 1 and "site.yaml" in lines[0]


def teachlab(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spawner.cli", *arguments], capture_output=True, text=True, env=env, timeout=120, cwd=REPO_ROOT
    )


def test_a_site_file_with_mistakes_deploys_nothing(site_file, tmp_path):
    """`teachlab deploy up` prints one line per problem and exits before it talks to Docker: its engine
    address here is a socket that does not exist, so any attempt would show up as a different error."""
    path = site_file({"hots": "x", "oidc": {"clientid": "x"}, "network": {"ssh_port": "22"}})
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    for action in ("validate", "up", "backup", "upgrade"):
        result = teachlab("deploy", action, "--site", str(path), env=env)
        assert result.returncode != 0, action
        lines = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if line.strip()]
        assert len(lines) == 3, (action, lines)
        assert all(line.startswith(f"{path}:") for line in lines), lines
        assert "Traceback" not in result.stderr and "no-engine.sock" not in result.stderr + result.stdout


def test_validate_says_ok_for_a_good_file(site_file):
    result = teachlab("deploy", "validate", "--site", str(site_file()), env=dict(os.environ))
    assert result.returncode == 0 and f"https://{HOST}" in result.stdout, result.stderr


SWARM = {"manager_address": "10.0.0.2", "course_data_node": "worker-1"}


def test_a_single_server_site_has_no_swarm_and_a_swarm_section_gets_its_defaults(site_file):
    assert load_site(site_file()).swarm is None
    site = load_site(site_file({"swarm": SWARM}))
    swarm = site.swarm
    assert (swarm.manager_address, swarm.course_data_node) == ("10.0.0.2", "worker-1")
    assert (swarm.engine_port, swarm.registry_port, swarm.engine_timeout_seconds) == (2376, 5000, 10.0)
    assert swarm.registry_address == "10.0.0.2:5000"
    assert site.node_certificates_dir == site.secrets_dir / "nodes"


@pytest.mark.parametrize(
    ("swarm", "expected"),
    [
        pytest.param({**SWARM, "registry": 5000}, ["site.yaml:swarm.registry: unknown key (did you mean"], id="unknown-key"),
        pytest.param({"manager_address": "10.0.0.2"}, ["site.yaml:swarm.course_data_node: missing key"], id="no-data-node"),
        pytest.param(
            {**SWARM, "manager_address": "manager.example-uni.test"}, ["site.yaml:swarm.manager_address:"], id="not-an-address"
        ),
        pytest.param({**SWARM, "engine_port": 70000}, ["site.yaml:swarm.engine_port:"], id="port-too-large"),
        pytest.param(
            {**SWARM, "registry_port": "5000", "engine_timeout_seconds": 0},
            ["site.yaml:swarm.engine_timeout_seconds:", "site.yaml:swarm.registry_port:"],
            id="two-problems-two-lines",
        ),
    ],
)
def test_swarm_section_mistakes_are_one_line_each(site_file, swarm, expected):
    lines = sorted(problem_lines(site_file({"swarm": swarm})))
    assert len(lines) == len(expected), lines
    for fragment, line in zip(expected, lines, strict=True):
        assert fragment in line and line.endswith(")"), (fragment, lines)


@pytest.mark.parametrize(
    ("swarm", "fragment"),
    [
        pytest.param({**SWARM, "manager_address": "127.0.0.1"}, "cannot be reached from other machines", id="loopback"),
        pytest.param({**SWARM, "manager_address": "172.30.0.9"}, "is inside the students' subnet", id="in-students-subnet"),
        pytest.param({**SWARM, "manager_address": "10.0.0.999"}, "swarm.manager_address: 10.0.0.999 is not an address", id="bad"),
        pytest.param({**SWARM, "registry_port": 2376}, "swarm.registry_port: 2376 is taken", id="port-of-the-engines"),
        pytest.param(
            {**SWARM, "gpus": [{"uuid": "GPU-a", "index": 0, "model": "m", "memory": "1G"}]},
            "gpus: on a swarm, GPUs are declared per node",
            id="gpus-in-the-site-file",
        ),
    ],
)
def test_what_only_the_server_can_check_of_a_swarm(site_file, swarm, fragment):
    changes = {"swarm": {key: value for key, value in swarm.items() if key != "gpus"}}
    if "gpus" in swarm:
        changes["gpus"] = swarm["gpus"]
    lines = problem_lines(site_file(changes))
    assert len(lines) == 1 and fragment in lines[0], lines


def test_node_certificates_for_each_address_and_one_line_when_there_is_no_swarm(site_file, tmp_path):
    secrets = tmp_path / "secrets"
    path = site_file({"swarm": SWARM, "paths": {"secrets": str(secrets)}})
    result = teachlab("deploy", "node-certificates", "10.0.0.5", "10.0.0.6", "--site", str(path), env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    for address in ("10.0.0.5", "10.0.0.6"):
        assert (secrets / "nodes" / "node" / address / "root" / "etc" / "docker" / "tls" / "server.key").is_file()
        assert f"{address}: copy " in result.stdout
    assert (secrets / "nodes" / "registry.crt").is_file() and "DOCKER_CERT_PATH=" in result.stdout
    wrong = teachlab("deploy", "node-certificates", "worker-1", "--site", str(path), env=dict(os.environ))
    assert wrong.returncode != 0 and "worker-1 is not an address" in wrong.stderr and "Traceback" not in wrong.stderr
    single = teachlab("deploy", "node-certificates", "10.0.0.5", "--site", str(site_file()), env=dict(os.environ))
    assert single.returncode != 0 and "has no swarm section" in single.stderr and "Traceback" not in single.stderr
