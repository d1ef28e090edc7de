"""Hub-side helpers without a hub: instructor roles, per-course idle limits, host settings."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from spawner.catalog import load_catalog
from spawner.hub.idle import course_idle_arbiter
from spawner.hub.roles import IDLE_CULLER_SCOPES, instructor_roles, instructor_scopes, sync_instructor_scopes
from spawner.images.settings import BuildSettings

REPO = Path(__file__).resolve().parents[2]


def test_instructor_roles_cover_only_this_course_server_of_each_student():
    members = {"cs101-students": {"bob", "both"}, "ds201-students": {"both", "dana"}}
    roles = {role["name"]: role for role in instructor_roles(load_catalog(REPO / "course_envs"), members)}
    intro = roles["instructor-intro-python"]
    assert intro["users"] == ["prof-lee"] and intro["groups"] == ["cs101-staff"]
    assert (
        "servers!server=both/intro-python" in intro["scopes"]
        and "access:servers!server=student-alice/intro-python" in intro["scopes"]
    )
    assert not any("data-analysis" in scope or "dana" in scope for scope in intro["scopes"])
    assert all(scope.endswith("/intro-python") for scope in intro["scopes"] if "servers" in scope)
    assert all("!user=" in scope or "!server=" in scope for scope in intro["scopes"])  # never unfiltered, never a group
    assert not any(scope.startswith(("admin", "users", "tokens", "delete:users")) for scope in intro["scopes"])


def test_idle_culler_asks_for_the_least_scopes():
    assert sorted(IDLE_CULLER_SCOPES) == ["delete:servers", "list:users", "read:servers", "read:users:activity"]


@pytest.mark.parametrize(
    "server, idle_minutes, culled",
    [
        pytest.param("intro-python", 59, False, id="intro-under-60"),
        pytest.param("intro-python", 60, True, id="intro-at-60"),
        pytest.param("data-analysis", 80, False, id="data-under-90"),
        pytest.param("deep-learning", 31, True, id="gpu-course-uses-gpu-limit-30"),
        pytest.param("deep-learning", 29, False, id="gpu-course-under-30"),
        pytest.param("not-a-course", 119, False, id="unknown-uses-global-120"),
        pytest.param("not-a-course", 121, True, id="unknown-over-global"),
    ],
)
def test_course_idle_arbiter(server, idle_minutes, culled):
    arbiter = course_idle_arbiter(REPO / "course_envs")
    verdict = asyncio.run(arbiter(inactive=timedelta(minutes=idle_minutes), inactive_limit=120 * 60, server={"name": server}))
    assert verdict is culled


def test_build_settings_read_the_hosts_pip_settings_without_file_indexes(tmp_path):
    conf = tmp_path / "pip.conf"
    bundle = tmp_path / "ca.pem"
    bundle.write_text("ca")
    conf.write_text(
        f"[global]\nindex-url = https://mirror.example.edu/simple\nextra-index-url = file:///opt/local https://extra.example.edu/simple\ncert = {bundle}\n"
    )
    settings = BuildSettings.from_environment({"PIP_CONFIG_FILE": str(conf), "HOME": str(tmp_path)})
    assert settings.pip_index_url == "https://mirror.example.edu/simple"
    assert settings.pip_extra_index_urls == ("https://extra.example.edu/simple",)
    assert settings.ca_bundle == bundle
    overridden = BuildSettings.from_environment(
        {"PIP_CONFIG_FILE": str(conf), "TEACHLAB_PIP_INDEX_URL": "https://other.example.edu/simple"}
    )
    assert overridden.pip_index_url == "https://other.example.edu/simple"


@pytest.fixture
def hub_db():
    """A real JupyterHub database (SQLite in memory) with the instructor role of intro-python."""
    from jupyterhub import orm

    db = orm.new_session_factory("sqlite://")()
    db.add(orm.Role(name="instructor-intro-python", scopes=instructor_scopes("intro-python", ["bob"])))
    db.commit()
    yield db
    db.close()


def _role_scopes(db) -> set[str]:
    from jupyterhub import orm

    return set(orm.Role.find(db, "instructor-intro-python").scopes)


def test_a_login_adds_the_students_server_to_the_instructor_role(hub_db):
    sync_instructor_scopes(hub_db, load_catalog(REPO / "course_envs"), "carol", ["cs101-students"])
    assert set(instructor_scopes("intro-python", ["carol"])) <= _role_scopes(hub_db)


def test_a_login_without_the_course_group_removes_the_students_server(hub_db):
    """bob left cs101 at the provider: at his next login the instructors lose his server."""
    sync_instructor_scopes(hub_db, load_catalog(REPO / "course_envs"), "bob", ["some-other-group"])
    assert not {scope for scope in _role_scopes(hub_db) if "bob" in scope}
    hub_db.expire_all()
    assert not {scope for scope in _role_scopes(hub_db) if "bob" in scope}  # committed, not only in the session
