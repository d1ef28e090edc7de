"""The rendered stack file and nginx config (issue 13), without Docker: what ``docker stack deploy`` and nginx read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spawner.deploy.site import site_from_data
from spawner.deploy.stack import (
    ALL_SECRETS,
    HUB_SECRETS,
    PORTS,
    StackImages,
    content_name,
    hub_environment,
    render_nginx_config,
    render_stack,
)

HOST = "lab.example-uni.test"
IMAGES = StackImages(hub="ns/hub:1", proxy="ns/proxy:1", postgres="ns/postgres:1", nginx="ns/nginx:1")
SECRET_VALUES = {secret.name: f"value-of-{secret.name}-0123456789" for secret in ALL_SECRETS}


@pytest.fixture(scope="module")
def site():
    data = {
        "host": HOST,
        "tls": {"certificate": "/etc/teachlab/tls/lab.crt", "key": "/etc/teachlab/tls/lab.key"},
        "oidc": {"issuer": "https://login.example-uni.test/realms/u", "client_id": "teachlab", "client_secret_file": "/s/c"},
        "catalog": "/srv/teachlab/course_envs",
        "gpus": [{"uuid": "GPU-0", "index": 0, "model": "Fake", "memory": "16G"}],
    }
    return site_from_data(data, Path("/etc/teachlab/site.yaml"))


@pytest.fixture(scope="module")
def secret_names():
    return {name: content_name("teachlab", name, value.encode()) for name, value in SECRET_VALUES.items()}


@pytest.fixture(scope="module")
def stack(site, secret_names) -> dict:
    return yaml.safe_load(render_stack(site, IMAGES, secret_names, "teachlab-nginx-abc"))


def test_every_service_has_a_health_check_a_restart_policy_and_its_image(stack):
    services = stack["services"]
    assert set(services) == {"postgres", "proxy", "hub", "nginx"}
    for name, service in services.items():
        assert service["image"] == getattr(IMAGES, name)
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert service["deploy"]["restart_policy"]["condition"] == "any", name
        assert service["deploy"]["placement"]["constraints"] == ["node.role == manager"], name


def test_secrets_are_docker_secrets_and_never_variables(stack, secret_names):
    text = yaml.safe_dump(stack)
    for value in SECRET_VALUES.values():
        assert value not in text
    assert {name: item["name"] for name, item in stack["secrets"].items()} == secret_names
    assert all(item["external"] is True for item in stack["secrets"].values())
    hub = stack["services"]["hub"]
    assert {item["source"] for item in hub["secrets"]} == {secret.name for secret in HUB_SECRETS}
    assert all(item["mode"] == 0o400 for item in hub["secrets"])
    for name, value in hub["environment"].items():
        if any(word in name for word in ("SECRET", "_TOKEN_FILE", "PASSWORD", "STATE_KEY")):
            assert name.endswith("_FILE") and value.startswith("/run/secrets/"), (name, value)
    secret_variables = {name for name, value in hub["environment"].items() if str(value).startswith("/run/secrets/")}
    assert len(secret_variables) == len(HUB_SECRETS), secret_variables


def test_the_hub_restarts_without_taking_students_servers_and_stops_first(stack, site):
    hub = stack["services"]["hub"]
    assert hub["deploy"]["replicas"] == 1 and hub["deploy"]["update_config"]["order"] == "stop-first"
    assert "/var/run/docker.sock:/var/run/docker.sock" in hub["volumes"]
    assert hub["environment"]["TEACHLAB_PUBLIC_URL"] == f"https://{HOST}"
    assert hub["environment"]["TEACHLAB_HUB_DB_URL"].startswith("postgresql+psycopg://teachlab@127.0.0.1:")


def test_only_nginx_listens_outside_the_node(stack, site):
    proxy = stack["services"]["proxy"]["command"]
    assert "--ip=127.0.0.1" in proxy and "--api-ip=127.0.0.1" in proxy
    assert f"--default-target=http://{site.hub_address}:{PORTS.hub}" in proxy
    assert stack["services"]["postgres"]["environment"]["TEACHLAB_DATABASE_PORT"] == str(PORTS.database)


def test_a_restore_first_deploys_everything_but_the_hub(site, secret_names):
    stack = yaml.safe_load(render_stack(site, IMAGES, secret_names, "n", hub_replicas=0))
    assert stack["services"]["hub"]["deploy"]["replicas"] == 0


def test_a_missing_secret_renders_nothing(site, secret_names):
    partial = {name: value for name, value in secret_names.items() if name != "auth_state_key"}
    with pytest.raises(ValueError, match="auth_state_key"):
        render_stack(site, IMAGES, partial, "n")


def test_a_secrets_name_changes_with_its_content():
    assert content_name("teachlab", "cookie_secret", b"a") != content_name("teachlab", "cookie_secret", b"b")
    assert content_name("teachlab", "cookie_secret", b"a").startswith("teachlab-cookie-secret-")


def test_the_environment_holds_no_client_secret(site):
    assert "TEACHLAB_OIDC_CLIENT_SECRET" not in hub_environment(site, IMAGES)


def test_nginx_terminates_tls_for_the_host_and_its_subdomains_and_redirects_http(site):
    config = render_nginx_config(site)
    assert f"server_name {HOST} *.{HOST};" in config
    assert "return 301 https://$host$request_uri;" in config
    assert 'add_header Strict-Transport-Security "max-age=63072000; includeSubDomains" always;' in config
    assert f"proxy_pass http://127.0.0.1:{PORTS.proxy};" in config
    assert "ssl_reject_handshake on;" in config
    assert "/run/secrets/teachlab-tls-key" in config
