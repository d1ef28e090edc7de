"""The rendered stack file and nginx config (issue 13), without Docker: what ``docker stack deploy`` and nginx read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spawner.deploy.site import site_from_data
from spawner.deploy.stack import (
    ALL_SECRETS,
    HUB_SECRETS,
    HUB_SWARM_SECRETS,
    PORTS,
    REGISTRY_STORAGE,
    SWARM_SECRETS,
    StackImages,
    content_name,
    hub_environment,
    render_nginx_config,
    render_stack,
    stack_secrets,
)
from spawner.hub.settings import HubSettings

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


# -- on a swarm (issue 14): the registry service and the hub's placement settings -----------------------------------
SWARM_IMAGES = StackImages(
    hub="ns/hub:1", proxy="ns/proxy:1", postgres="ns/postgres:1", nginx="ns/nginx:1", registry="ns/registry:1"
)


@pytest.fixture(scope="module")
def swarm_site(site):
    data = {
        "host": HOST,
        "tls": {"certificate": "/etc/teachlab/tls/lab.crt", "key": "/etc/teachlab/tls/lab.key"},
        "oidc": {"issuer": "https://login.example-uni.test/realms/u", "client_id": "teachlab", "client_secret_file": "/s/c"},
        "catalog": "/srv/teachlab/course_envs",
        "swarm": {"manager_address": "10.0.0.2", "course_data_node": "worker-1", "registry_port": 5443},
    }
    return site_from_data(data, Path("/etc/teachlab/site.yaml"))


@pytest.fixture(scope="module")
def swarm_secret_names(swarm_site):
    return {
        item.name: content_name("teachlab", item.name, f"value-of-{item.name}".encode()) for item in stack_secrets(swarm_site)
    }


@pytest.fixture(scope="module")
def swarm_stack(swarm_site, swarm_secret_names) -> dict:
    return yaml.safe_load(render_stack(swarm_site, SWARM_IMAGES, swarm_secret_names, "teachlab-nginx-abc"))


def test_the_registry_runs_only_in_a_swarms_stack(stack, swarm_stack):
    assert "registry" not in stack["services"] and "registry" not in stack["volumes"]
    assert set(swarm_stack["services"]) == {"postgres", "proxy", "hub", "nginx", "registry"}
    assert set(swarm_stack["volumes"]) == {"database", "registry"}
    assert {secret.name for secret in SWARM_SECRETS}.isdisjoint(stack["secrets"])


def test_the_registry_serves_tls_from_docker_secrets_on_its_port_and_keeps_images_in_a_volume(swarm_stack):
    registry = swarm_stack["services"]["registry"]
    assert registry["image"] == SWARM_IMAGES.registry and registry["networks"] == ["host"]
    assert registry["deploy"]["placement"]["constraints"] == ["node.role == manager"]
    assert registry["deploy"]["restart_policy"]["condition"] == "any"
    assert registry["healthcheck"]["test"][0] == "CMD" and "https://127.0.0.1:5443/v2/" in registry["healthcheck"]["test"][-1]
    environment = registry["environment"]
    assert environment["REGISTRY_HTTP_ADDR"] == ":5443"
    secrets = {item["source"]: item for item in registry["secrets"]}
    assert set(secrets) == {"registry_certificate", "registry_key"} and secrets["registry_key"]["mode"] == 0o400
    for variable, name in (("TEACHLAB_REGISTRY_CERTIFICATE", "registry_certificate"), ("TEACHLAB_REGISTRY_KEY", "registry_key")):
        assert environment[variable] == f"/run/secrets/{secrets[name]['target']}"
    assert registry["volumes"] == [f"registry:{REGISTRY_STORAGE}"]


def test_a_swarms_hub_places_servers_over_mutual_tls_and_publishing_pushes_to_the_registry(swarm_stack, swarm_secret_names):
    hub = swarm_stack["services"]["hub"]
    environment = hub["environment"]
    assert environment["TEACHLAB_SWARM_PLACEMENT"] == "true"
    assert environment["TEACHLAB_SWARM_HUB_ADDRESS"] == "10.0.0.2"
    assert environment["TEACHLAB_COURSE_DATA_NODE"] == "worker-1"
    assert environment["TEACHLAB_NODE_ENGINE_PORT"] == "2376"
    assert environment["TEACHLAB_REGISTRY"] == "10.0.0.2:5443"
    assert environment["TEACHLAB_REGISTRY_PUSH_ADDRESS"] == "127.0.0.1:5443"
    assert environment["TEACHLAB_NODE_AGENT_IMAGE"] == SWARM_IMAGES.hub
    targets = {item["source"]: item["target"] for item in hub["secrets"]}
    assert set(targets) == {secret.name for secret in (*HUB_SECRETS, *HUB_SWARM_SECRETS)}  # not the registry's key
    for variable, name in (
        ("TEACHLAB_NODE_ENGINE_CA_FILE", "engine_ca"),
        ("TEACHLAB_NODE_ENGINE_CERTIFICATE_FILE", "engine_client_certificate"),
        ("TEACHLAB_NODE_ENGINE_KEY_FILE", "engine_client_key"),
    ):
        assert environment[variable] == f"/run/secrets/{targets[name]}"
    assert {name: item["name"] for name, item in swarm_stack["secrets"].items()} == swarm_secret_names


def test_a_single_servers_hub_is_told_nothing_of_a_swarm(stack):
    environment = stack["services"]["hub"]["environment"]
    assert environment["TEACHLAB_SWARM_PLACEMENT"] == "false"
    assert not {"TEACHLAB_REGISTRY", "TEACHLAB_REGISTRY_PUSH_ADDRESS", "TEACHLAB_NODE_ENGINE_CA_FILE"} & set(environment)


def test_a_swarms_stack_without_its_certificates_or_the_registrys_image_renders_nothing(swarm_site, swarm_secret_names):
    partial = {name: value for name, value in swarm_secret_names.items() if name != "engine_client_key"}
    with pytest.raises(ValueError, match="engine_client_key"):
        render_stack(swarm_site, SWARM_IMAGES, partial, "n")
    with pytest.raises(ValueError, match="registry"):
        render_stack(swarm_site, IMAGES, swarm_secret_names, "n")


def test_the_hub_reads_back_the_stacks_swarm_settings(swarm_site):
    """The variables the stack gives the hub are read back by HubSettings as the spawner's settings."""
    settings = HubSettings.from_environment(hub_environment(swarm_site, SWARM_IMAGES))
    assert settings.swarm_placement is True and settings.swarm_hub_address == "10.0.0.2"
    assert settings.node_engine_tls == {
        "ca_cert": "/run/secrets/teachlab-engine-ca",
        "client_cert": ["/run/secrets/teachlab-engine-client-certificate", "/run/secrets/teachlab-engine-client-key"],
        "verify": True,
    }
    assert settings.node_engine_timeout_seconds == 10.0 and settings.course_data_node == "worker-1"


class StandInEngine:
    """Answers ``info()`` as a swarm manager advertising ``address`` would."""

    def __init__(self, address: str):
        self.address = address

    def info(self) -> dict:
        return {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "NodeAddr": self.address}}


def test_a_swarms_stack_builds_the_registry_and_deploys_only_on_the_manager_it_names(site, swarm_site):
    from spawner.core.problems import TeachlabError
    from spawner.deploy.certificates import NodeCertificates
    from spawner.deploy.images import REGISTRY
    from spawner.deploy.lab import ProductionLab

    lab = ProductionLab(swarm_site, client=StandInEngine("10.0.0.2"))
    assert REGISTRY in lab.image_builder().names
    made = NodeCertificates(swarm_site.node_certificates_dir)  # the files the swarm's Docker secrets are made from
    paths = (made.ca_path, made.hub_certificate_path, made.hub_key_path, made.registry_certificate_path, made.registry_key_path)
    assert tuple(lab.secret_path(secret) for secret in SWARM_SECRETS) == paths
    assert REGISTRY not in ProductionLab(site, client=StandInEngine("10.0.0.2")).image_builder().names
    with pytest.raises(TeachlabError, match=r"swarm.manager_address: 10.0.0.2 is not the address .* \(10.0.0.7\)"):
        ProductionLab(swarm_site, client=StandInEngine("10.0.0.7")).render(SWARM_IMAGES)
