"""apply(settings, c) against a traitlets Config, with a stand-in for the machine (TLJH's apply_mock_config pattern).

The stand-in host answers what Docker, the provider and the databases would; the real ones are exercised by
tests/hub. Every key apply() sets must be a configurable trait of its class, so a misspelled trait fails here.
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from traitlets.config import Config

from spawner.core.contract import Scopes
from spawner.gpu.ledger import ReconcileReport
from spawner.hub.config import apply
from spawner.hub.settings import HubSettings
from spawner.node.firewall import StudentNetwork

REPO = Path(__file__).resolve().parents[2]


class StandInHost:
    """Records what apply() asked of the machine and answers as a healthy one would."""

    def __init__(self, members=None):
        self.calls: list[tuple] = []
        self.members = members or {}

    def student_network(self, name, labels, hub_port):
        self.calls.append(("network", name, dict(labels)))
        return StudentNetwork(
            network_id="n1",
            bridge="br-n1",
            subnet="172.30.0.0/20",
            gateway="172.30.0.1",
            offline_range="172.30.8.0/21",
            hub_port=hub_port,
        )

    def install_firewall(self, net):
        self.calls.append(("firewall", net.bridge, net.hub_port))

    def oidc_endpoints(self, issuer):
        self.calls.append(("oidc", issuer))
        return {
            "authorization_endpoint": f"{issuer}/auth",
            "token_endpoint": f"{issuer}/token",
            "userinfo_endpoint": f"{issuer}/me",
        }

    def group_members(self, db_url):
        self.calls.append(("members", db_url))
        return self.members

    def gpu_inventory(self, text):
        self.calls.append(("inventory", text))
        return text

    def reconcile_gpus(self, ledger_url, lab_id):
        self.calls.append(("reconcile", ledger_url, lab_id))
        return ReconcileReport((), (), (), ())

    def build_environment(self):
        return {"TEACHLAB_IMAGE_NAMESPACE": "site-images", "TEACHLAB_PIP_INDEX_URL": "https://mirror.example.edu/simple"}


def settings(tmp_path, **changes) -> HubSettings:
    values = dict(
        state_dir=tmp_path / "state",
        catalog_path=REPO / "course_envs",
        oidc_issuer="https://login.example.edu",
        oidc_client_secret="s3cret",
        extra_labels={"org.example.lab": "cs"},
    )
    values.update(changes)
    return HubSettings(**values)


def configured(tmp_path, host=None, **changes) -> tuple[Config, HubSettings, StandInHost]:
    host = host or StandInHost()
    lab = settings(tmp_path, **changes)
    c = Config()
    apply(lab, c, host)
    return c, lab, host


def test_the_spawner_is_teachlabs_and_knows_its_lab(tmp_path):
    c, lab, _ = configured(tmp_path)
    assert c.JupyterHub.spawner_class == "teachlab"
    (spawner_entry,) = [e for e in entry_points(group="jupyterhub.spawners") if e.name == "teachlab"]
    assert spawner_entry.load().__name__ == "CourseSpawner"
    assert c.CourseSpawner.lab_id == lab.lab_id and len(lab.lab_id) == 12
    assert c.CourseSpawner.extra_labels == {"org.example.lab": "cs"}
    assert c.CourseSpawner.catalog_path == str(REPO / "course_envs")
    assert c.CourseSpawner.network_name == "teachlab-students" and c.CourseSpawner.use_internal_ip is True


def test_the_hub_listens_on_the_students_gateway_and_keeps_servers_across_restarts(tmp_path):
    c, lab, host = configured(tmp_path)
    assert ("network", "teachlab-students", {"org.example.lab": "cs"}) in host.calls
    assert ("firewall", "br-n1", 8081) in host.calls  # the egress policy is installed before the hub listens
    assert c.CourseSpawner.offline_address_range == "172.30.8.0/21"
    assert c.JupyterHub.hub_bind_url == "http://172.30.0.1:8081"
    assert c.JupyterHub.cleanup_servers is False and c.JupyterHub.cleanup_proxy is False
    assert c.ConfigurableHTTPProxy.should_start is False
    assert c.JupyterHub.db_url == f"sqlite:///{lab.state_dir / 'lab' / 'jupyterhub.sqlite'}"


def test_login_uses_the_providers_discovered_endpoints(tmp_path):
    c, _, host = configured(tmp_path)
    assert ("oidc", "https://login.example.edu") in host.calls
    oauth = c.GenericOAuthenticator
    assert (oauth.authorize_url, oauth.token_url, oauth.userdata_url) == (
        "https://login.example.edu/auth",
        "https://login.example.edu/token",
        "https://login.example.edu/me",
    )
    assert oauth.client_secret == "s3cret" and oauth.enable_pkce is True and oauth.manage_groups is True
    assert oauth.admin_groups == {"lab-admins"}
    assert oauth.oauth_callback_url == "http://127.0.0.1:8000/hub/oauth_callback"


def test_gpus_are_reconciled_for_this_lab_before_requests(tmp_path):
    c, lab, host = configured(tmp_path, gpu_inventory="nvml")
    assert ("reconcile", lab.ledger_url, lab.lab_id) in host.calls
    assert c.CourseSpawner.gpu_inventory == "nvml"
    assert c.CourseSpawner.gpu_ledger_url == f"sqlite:///{lab.state_dir / 'lab' / 'gpu-ledger.sqlite'}"


def test_roles_scopes_and_services(tmp_path):
    members = {"cs101-students": {"bob"}}
    c, _, _ = configured(tmp_path, host=StandInHost(members))
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert "servers!server=bob/intro-python" in roles["instructor-intro-python"]["scopes"]
    assert roles["idle-culler"]["scopes"] == ["list:users", "read:users:activity", "read:servers", "delete:servers"]
    assert roles["gpu-admins"]["groups"] == ["lab-admins"]
    assert "teachlab-cli" not in roles
    assert Scopes.GPU_ADMIN in c.JupyterHub.custom_scopes
    services = {service["name"]: service for service in c.JupyterHub.services}
    assert set(services) == {
        "idle-culler",
        Scopes.GPU_SERVICE,
        Scopes.SSH_SERVICE,
        Scopes.WARMER_SERVICE,
        Scopes.COURSES_SERVICE,
        Scopes.WORK_SERVICE,
    }
    gpu_scopes = sorted(scope for scope in c.JupyterHub.custom_scopes if scope.startswith("custom:teachlab-gpu:"))
    assert services[Scopes.GPU_SERVICE]["oauth_client_allowed_scopes"] == gpu_scopes


def test_the_ssh_gateway_gets_only_the_scopes_it_uses_and_every_user_reaches_its_page(tmp_path):
    c, lab, _ = configured(tmp_path, today="2026-11-15", ssh_port=2022)
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert roles[Scopes.SSH_SERVICE]["services"] == [Scopes.SSH_SERVICE]
    assert sorted(roles[Scopes.SSH_SERVICE]["scopes"]) == [
        "read:servers",
        "read:users:groups",
        "read:users:name",
        "servers",
        "users:activity",
    ]
    assert f"access:services!service={Scopes.SSH_SERVICE}" in roles["user"]["scopes"]
    (ssh,) = [s for s in c.JupyterHub.services if s["name"] == Scopes.SSH_SERVICE]
    assert ssh["command"][1:] == ["-m", "spawner.ssh"]
    assert ssh["environment"]["TEACHLAB_SSH_PORT"] == "2022"
    assert ssh["environment"]["TEACHLAB_RECORDS_URL"] == lab.ledger_url  # keys live with the lab's other records
    assert ssh["environment"]["TEACHLAB_LAB_ID"] == lab.lab_id
    assert ssh["environment"]["TEACHLAB_TODAY"] == "2026-11-15"


def test_the_cli_service_exists_only_with_a_token(tmp_path):
    c, _, _ = configured(tmp_path, cli_token="t0ken")
    assert {"name": "teachlab-cli", "api_token": "t0ken"} in c.JupyterHub.services
    assert "teachlab-cli" in {role["name"] for role in c.JupyterHub.load_roles}


def test_a_fixed_today_reaches_the_spawner_and_the_gpu_service(tmp_path):
    c, _, _ = configured(tmp_path, today="2026-11-15")
    assert c.CourseSpawner.today().isoformat() == "2026-11-15"
    (gpu,) = [s for s in c.JupyterHub.services if s["name"] == Scopes.GPU_SERVICE]
    assert gpu["environment"]["TEACHLAB_TODAY"] == "2026-11-15"


def test_a_broken_catalog_stops_before_anything_is_asked_of_the_machine(tmp_path, capsys):
    host = StandInHost()
    broken = REPO / "tests" / "broken_catalogs" / "unknown-root-key"
    with pytest.raises(SystemExit) as stopped:
        apply(settings(tmp_path, catalog_path=broken), Config(), host)
    assert stopped.value.code == 1
    assert host.calls == []
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == "teachlab: the hub did not start; fix the lines above and start it again"
    assert "unknown key" in lines[0] and "Traceback" not in "\n".join(lines)


def test_every_key_apply_sets_is_a_configurable_trait(tmp_path):
    from jupyterhub.app import JupyterHub
    from jupyterhub.crypto import CryptKeeper
    from jupyterhub.proxy import ConfigurableHTTPProxy
    from oauthenticator.generic import GenericOAuthenticator

    from spawner.hub.spawner import CourseSpawner

    c, _, _ = configured(tmp_path, cli_token="t")
    classes = {
        "JupyterHub": JupyterHub,
        "CourseSpawner": CourseSpawner,
        "GenericOAuthenticator": GenericOAuthenticator,
        "ConfigurableHTTPProxy": ConfigurableHTTPProxy,
        "CryptKeeper": CryptKeeper,
    }
    assert set(c) == set(classes)
    for section, cls in classes.items():
        for key in c[section]:
            assert cls.class_traits(config=True).get(key) is not None, f"c.{section}.{key} is not a configurable trait"


def test_the_config_file_is_a_few_lines(repo_root=REPO):
    lines = (repo_root / "jupyterhub_config.py").read_text().splitlines()
    code = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 25, code
    assert not any(re.search(r"sys\.path|exec\(", line) for line in code)


def test_each_users_servers_get_an_origin_of_their_own_with_host_only_cookies(tmp_path):
    c, _, _ = configured(tmp_path, public_url="https://lab.example-lab.org")
    assert c.JupyterHub.subdomain_host == "https://lab.example-lab.org"
    assert c.JupyterHub.cookie_host_prefix_enabled is True
    plain, _, _ = configured(tmp_path, public_url="https://lab.example-lab.org", per_server_origins=False)
    assert "subdomain_host" not in plain.JupyterHub


def test_sign_ins_are_refreshed_and_expire(tmp_path):
    c, lab, _ = configured(tmp_path, auth_refresh_seconds=120, token_max_days=7)
    oauth = c.GenericOAuthenticator
    assert oauth.enable_auth_state is True and oauth.refresh_pre_spawn is True and oauth.auth_refresh_age == 120
    assert c.JupyterHub.token_expires_in_max_seconds == 7 * 24 * 3600
    assert c.JupyterHub.cookie_max_age_days == 1.0
    key = lab.layout.auth_state_key
    assert c.CryptKeeper["keys"] == [key.read_text().strip().encode()] and len(key.read_text().strip()) == 64
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    again, _, _ = configured(tmp_path, auth_refresh_seconds=120)
    assert again.CryptKeeper["keys"] == c.CryptKeeper["keys"]  # made once, read back at every start


def test_the_state_folder_and_its_secrets_are_private_even_when_they_already_exist(tmp_path):
    lab = settings(tmp_path)
    lab.layout.lab.mkdir(parents=True)
    for folder in (lab.state_dir, lab.layout.lab):
        folder.chmod(0o755)
    lab.layout.cookie_secret.write_text("0" * 64)
    lab.layout.cookie_secret.chmod(0o644)
    lab.layout.auth_state_key.write_text("1" * 64)
    lab.layout.auth_state_key.chmod(0o644)
    apply(lab, Config(), StandInHost())
    assert oct(lab.state_dir.stat().st_mode & 0o777) == oct(lab.layout.lab.stat().st_mode & 0o777) == "0o700"
    assert oct(lab.layout.cookie_secret.stat().st_mode & 0o777) == "0o600"
    assert oct(lab.layout.auth_state_key.stat().st_mode & 0o777) == "0o600"


def test_the_username_claim_and_the_allowed_groups_are_settings(tmp_path):
    c, _, _ = configured(tmp_path, username_claim="sub", allowed_groups=("cs101-students", "cs101-staff"))
    assert c.GenericOAuthenticator.username_claim == "sub"
    assert c.GenericOAuthenticator.allowed_groups == {"cs101-students", "cs101-staff"}
    assert c.GenericOAuthenticator.allow_all is False
    default, _, _ = configured(tmp_path)
    assert default.GenericOAuthenticator.allow_all is True and "allowed_groups" not in default.GenericOAuthenticator


def test_every_service_that_opens_the_labs_database_can_sign_in_to_postgresql(tmp_path, monkeypatch):
    """In the production stack the database password is a Docker secret: the hub writes libpq's password file,
    and each service process that opens a PostgreSQL URL gets PGPASSFILE (a service without it cannot start)."""
    monkeypatch.delenv("PGPASSFILE", raising=False)
    password_file = tmp_path / "db-password"
    password_file.write_text("pa:ss\n")
    c, lab, _ = configured(
        tmp_path, gpu_ledger_url="postgresql+psycopg://teachlab@db/teachlab", database_password_file=password_file
    )
    assert lab.pgpass_path.read_text() == "*:*:*:*:pa\\:ss\n"
    opening = [
        service["name"]
        for service in c.JupyterHub.services
        if any(str(value).startswith("postgresql") for value in service.get("environment", {}).values())
    ]
    assert {Scopes.GPU_SERVICE, Scopes.WARMER_SERVICE, Scopes.COURSES_SERVICE} <= set(opening)
    for service in c.JupyterHub.services:
        if service["name"] in opening:
            assert service["environment"].get("PGPASSFILE") == str(lab.pgpass_path), service["name"]


SWARM_SETTINGS = dict(
    swarm_placement=True,
    swarm_hub_address="10.0.0.2",
    node_engine_port=2399,
    node_engine_timeout_seconds=4.0,
    node_engine_ca_file=Path("/run/secrets/teachlab-engine-ca"),
    node_engine_certificate_file=Path("/run/secrets/teachlab-engine-client-certificate"),
    node_engine_key_file=Path("/run/secrets/teachlab-engine-client-key"),
    node_agent_image="ns/hub:1",
    course_data_node="worker-1",
)


def test_a_swarms_settings_become_the_spawners_placement_traits(tmp_path):
    c, _, _ = configured(tmp_path, **SWARM_SETTINGS)
    spawner = c.CourseSpawner
    assert spawner.swarm_placement is True and spawner.hub_address == "10.0.0.2"
    assert spawner.node_engine_url_template == "tcp://{address}:2399"
    assert spawner.node_engine_tls == {
        "ca_cert": "/run/secrets/teachlab-engine-ca",
        "client_cert": ["/run/secrets/teachlab-engine-client-certificate", "/run/secrets/teachlab-engine-client-key"],
        "verify": True,
    }
    assert spawner.node_engine_timeout == 4.0 and spawner.course_data_node == "worker-1"
    assert spawner.node_agent_image == "ns/hub:1"
    # Servers on other nodes reach the hub through their node's forward to the manager: it listens on every address
    # of its node, and every server is told the students' gateway, the same on every node.
    assert c.JupyterHub.hub_bind_url == "http://0.0.0.0:8081"
    assert c.JupyterHub.hub_connect_url == "http://172.30.0.1:8081"


def test_a_single_server_keeps_its_hub_on_the_students_gateway_and_places_nothing(tmp_path):
    c, _, _ = configured(tmp_path)
    assert "swarm_placement" not in c.CourseSpawner and "hub_connect_url" not in c.JupyterHub
    assert c.JupyterHub.hub_bind_url == "http://172.30.0.1:8081"


def test_a_swarm_without_its_certificates_stops_the_hub_before_the_machine_is_asked(tmp_path, capsys):
    incomplete = {**SWARM_SETTINGS, "node_engine_key_file": None, "swarm_hub_address": ""}
    host = StandInHost()
    with pytest.raises(SystemExit):
        configured(tmp_path, host=host, **incomplete)
    lines = capsys.readouterr().err.splitlines()
    assert lines[:-1] == [
        "teachlab: TEACHLAB_SWARM_HUB_ADDRESS is not set: TEACHLAB_SWARM_PLACEMENT needs it (docs/admins.md, Adding machines)",
        "teachlab: TEACHLAB_NODE_ENGINE_KEY_FILE is not set: TEACHLAB_SWARM_PLACEMENT needs it (docs/admins.md, Adding machines)",
    ]
    assert host.calls == []
