"""Roles follow the catalog and group membership without a hub restart (spawner/hub/role_sync.py), on a real
JupyterHub database (SQLite in memory)."""

from __future__ import annotations

import pytest
import yaml

from spawner.catalog import load_catalog
from spawner.core.contract import Scopes
from spawner.hub.role_sync import sync_roles
from support.catalogs import copy_course


@pytest.fixture
def hub_db():
    from jupyterhub import orm, roles

    db = orm.new_session_factory("sqlite://")()
    for role in roles.get_default_roles():  # as the hub makes them at start
        roles.create_role(db, role)
    yield db
    db.close()


@pytest.fixture
def catalog_folder(tmp_path, repo_root):
    folder = tmp_path / "catalog"
    copy_course(repo_root, "intro-python", folder)
    return folder


def _role(db, name):
    from jupyterhub import orm

    return orm.Role.find(db, name)


def _edit(folder, slug, **changes):
    path = folder / slug / "course.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_an_instructor_added_to_the_catalog_gains_access_and_a_removed_one_loses_it(hub_db, catalog_folder):
    from jupyterhub import orm

    hub_db.add(orm.Group(name="cs101-students", users=[orm.User(name="bob")]))
    hub_db.commit()
    sync_roles(hub_db, load_catalog(catalog_folder))
    role = _role(hub_db, "instructor-intro-python")
    assert {user.name for user in role.users} == {"prof-lee"}
    assert "servers!server=bob/intro-python" in role.scopes

    _edit(catalog_folder, "intro-python", instructors={"users": ["prof-kim"]})
    changes = sync_roles(hub_db, load_catalog(catalog_folder))
    role = _role(hub_db, "instructor-intro-python")
    assert {user.name for user in role.users} == {"prof-kim"} and list(role.groups) == []
    assert any("users now ['prof-kim']" in change for change in changes)
    lee = orm.User.find(hub_db, "prof-lee")
    assert "instructor-intro-python" not in {r.name for r in lee.roles}
    assert sync_roles(hub_db, load_catalog(catalog_folder)) == []  # nothing left to change
    # Someone listed by name is recorded with the role a sign-in gives (a server's activity reports need it).
    assert {r.name for r in orm.User.find(hub_db, "student-alice").roles} == {"user"}


def test_a_student_who_left_the_group_leaves_the_instructors_scopes(hub_db, catalog_folder):
    from jupyterhub import orm

    bob = orm.User(name="bob")
    group = orm.Group(name="cs101-students", users=[bob])
    hub_db.add(group)
    hub_db.commit()
    sync_roles(hub_db, load_catalog(catalog_folder))
    group.users = []  # the provider's groups, synced at bob's last refresh
    hub_db.commit()
    sync_roles(hub_db, load_catalog(catalog_folder))
    assert not [scope for scope in _role(hub_db, "instructor-intro-python").scopes if "bob" in scope]


def test_a_new_course_gets_its_roles_and_custom_scope(hub_db, catalog_folder, repo_root):
    sync_roles(hub_db, load_catalog(catalog_folder))
    copy_course(repo_root, "data-analysis", catalog_folder)
    sync_roles(hub_db, load_catalog(catalog_folder))
    usage = _role(hub_db, "gpu-usage-data-analysis")
    assert usage is not None and Scopes.gpu_usage("data-analysis") in usage.scopes
    assert {user.name for user in _role(hub_db, "instructor-data-analysis").users} == {"prof-lee"}


def test_a_course_taken_out_of_the_catalog_leaves_empty_roles(hub_db, catalog_folder, repo_root):
    import shutil

    copy_course(repo_root, "data-analysis", catalog_folder)
    sync_roles(hub_db, load_catalog(catalog_folder))
    shutil.rmtree(catalog_folder / "data-analysis")
    sync_roles(hub_db, load_catalog(catalog_folder))
    role = _role(hub_db, "instructor-data-analysis")
    assert list(role.users) == [] and list(role.groups) == []


def test_a_replaced_service_token_is_retired_and_the_current_one_kept(hub_db):
    from jupyterhub import orm, roles

    from spawner.hub.role_sync import retire_replaced_service_tokens

    for role in roles.get_default_roles():
        roles.create_role(hub_db, role)
    hub_db.add(orm.OAuthClient(identifier="jupyterhub"))  # the hub's own client, which owns API tokens
    service = orm.Service(name="teachlab-cli")
    hub_db.add(service)
    hub_db.commit()
    service.new_api_token("old-token-" + "0" * 30, note="from config")
    service.new_api_token("new-token-" + "1" * 30, note="from config")
    assert retire_replaced_service_tokens(hub_db, "teachlab-cli", "new-token-" + "1" * 30) == 1
    assert orm.APIToken.find(hub_db, "old-token-" + "0" * 30) is None
    assert orm.APIToken.find(hub_db, "new-token-" + "1" * 30) is not None


def test_a_new_course_gets_its_publish_and_class_scopes_and_the_courses_service_may_grant_them(hub_db, catalog_folder, repo_root):
    from jupyterhub import orm

    client = orm.OAuthClient(identifier=f"service-{Scopes.COURSES_SERVICE}", allowed_scopes=["servers"])
    hub_db.add(client)
    hub_db.commit()
    sync_roles(hub_db, load_catalog(catalog_folder))
    copy_course(repo_root, "data-analysis", catalog_folder)
    changes = sync_roles(hub_db, load_catalog(catalog_folder))
    staff = _role(hub_db, "course-staff-data-analysis")
    assert Scopes.course_publish("data-analysis") in staff.scopes and Scopes.course_class("data-analysis") in staff.scopes
    assert {user.name for user in staff.users} == {"prof-lee"}
    assert Scopes.course_publish("data-analysis") in client.allowed_scopes and "servers" in client.allowed_scopes
    assert any(change.startswith(f"{Scopes.COURSES_SERVICE} may now request") for change in changes)

    _edit(catalog_folder, "data-analysis", instructors={"users": ["prof-kim"]})
    sync_roles(hub_db, load_catalog(catalog_folder))
    assert {user.name for user in _role(hub_db, "course-staff-data-analysis").users} == {"prof-kim"}
