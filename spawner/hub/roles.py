"""Every role and custom scope the hub grants, made in this one module.

* Instructors of a course: list their students, open, start and stop exactly that course's server of
  each student (``servers!server=<student>/<course>``), and read the course's GPU usage.
* Admins (the provider's admin groups): manage GPUs through the ``teachlab-gpu`` service.
* Every user: their own things, and the GPU service's page for their own usage.
* Services: the idle culler and the CLI get only the scopes they use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..catalog import Catalog, Course
from ..catalog.cache import CatalogCache
from ..core.contract import Scopes

INSTRUCTOR_USER_SCOPES = ("list:users", "read:users:name", "read:users:activity")
INSTRUCTOR_SERVER_SCOPES = ("read:servers", "servers", "access:servers")
IDLE_CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
IDLE_CULLER = "idle-culler"
CLI_SERVICE = "teachlab-cli"
# The SSH gateway: whose token a password is needs no scope; it reads a user's groups and servers, starts
# the course server, follows its progress, and reports SSH traffic as the server's activity.
SSH_GATEWAY_SCOPES = ["read:users:name", "read:users:groups", "read:servers", "servers", "users:activity"]
# The CLI token of the demo lab (`make down`, admins' scripts): list users and their servers, stop servers.
CLI_SCOPES = ["list:users", "read:users:name", "read:servers", "delete:servers"]
# `teachlab deploy` in the production stack: stops servers (before taking the lab down or archiving a course)
# and erases a person on an admin's command (DELETE /users/<name> needs admin:users).
DEPLOY_SERVICE = "teachlab-deploy"
DEPLOY_SCOPES = ["list:users", "read:users:name", "read:servers", "delete:servers", "admin:users"]


def instructor_role_name(slug: str) -> str:
    return f"instructor-{slug}"


def course_students(course: Course, group_members: Mapping[str, Iterable[str]]) -> set[str]:
    """Everyone enrolled in a course: its listed users and the members of its groups."""
    students = set(course.students.users)
    for group in course.students.groups:
        students.update(group_members.get(group, ()))
    return students


def instructor_scopes(slug: str, students: Iterable[str]) -> list[str]:
    """Exactly this course's server of each student: ``servers!server=<student>/<course>``, not ``!group=``,
    which would also cover the student's servers of other courses."""
    scopes = []
    for student in sorted(set(students)):
        scopes += [f"{scope}!user={student}" for scope in INSTRUCTOR_USER_SCOPES]
        scopes += [f"{scope}!server={student}/{slug}" for scope in INSTRUCTOR_SERVER_SCOPES]
    return scopes


def instructor_roles(catalog: Catalog, group_members: Mapping[str, Iterable[str]]) -> list[dict]:
    """One role per course: its instructors may list, open, start and stop its students' course servers.

    ``group_members`` is what the hub knows when it starts (its database); logins keep the roles
    current afterwards (``sync_instructor_scopes``).
    """
    return [
        {
            "name": instructor_role_name(course.slug),
            "description": f"Instructors of {course.title}: list, open, start and stop its students' servers",
            "scopes": instructor_scopes(course.slug, course_students(course, group_members)),
            "users": list(course.instructors.users),
            "groups": list(course.instructors.groups),
        }
        for course in sorted(catalog.courses.values(), key=lambda c: c.slug)
        if course.instructors.users or course.instructors.groups
    ]


def custom_scopes(catalog: Catalog) -> dict[str, dict]:
    """The custom scopes the lab's services understand, for ``c.JupyterHub.custom_scopes``."""
    scopes = {Scopes.GPU_ADMIN: {"description": "Read all GPU holdings and usage, set GPU quotas, release GPUs."}}
    for course in catalog.courses.values():
        scopes[Scopes.gpu_usage(course.slug)] = {"description": f"Read the GPU usage of {course.title} ({course.slug})."}
    return scopes


def gpu_usage_roles(catalog: Catalog) -> list[dict]:
    """Instructors read their course's GPU usage through the GPU service."""
    access = f"access:services!service={Scopes.GPU_SERVICE}"
    return [
        {
            "name": f"gpu-usage-{course.slug}",
            "description": f"Read the GPU usage of {course.slug}",
            "scopes": [Scopes.gpu_usage(course.slug), access],
            "users": list(course.instructors.users),
            "groups": list(course.instructors.groups),
        }
        for course in sorted(catalog.courses.values(), key=lambda c: c.slug)
        if course.instructors.users or course.instructors.groups
    ]


def gpu_roles(catalog: Catalog, admin_groups: Iterable[str]) -> list[dict]:
    """Admins manage GPUs, instructors read their course's usage, every user reads their own."""
    access = f"access:services!service={Scopes.GPU_SERVICE}"
    ssh_page = f"access:services!service={Scopes.SSH_SERVICE}"
    work_download = f"access:services!service={Scopes.WORK_SERVICE}"
    return [
        {"name": "user", "scopes": ["self", access, ssh_page, work_download]},
        {
            "name": "gpu-admins",
            "description": "Set GPU quotas, see and release every GPU",
            "scopes": [Scopes.GPU_ADMIN, access],
            "groups": list(admin_groups),
        },
        *gpu_usage_roles(catalog),
    ]


def service_roles(*, with_cli: bool, with_deploy: bool = False) -> list[dict]:
    """The idle culler's and the SSH gateway's roles, the CLI's when the lab has a CLI token, and `teachlab
    deploy`'s in the production stack."""
    roles = [
        {"name": IDLE_CULLER, "scopes": IDLE_CULLER_SCOPES, "services": [IDLE_CULLER]},
        {"name": Scopes.SSH_SERVICE, "scopes": SSH_GATEWAY_SCOPES, "services": [Scopes.SSH_SERVICE]},
    ]
    if with_cli:
        roles.append(
            {
                "name": CLI_SERVICE,
                "description": "The teachlab CLI of this lab's admins",
                "scopes": CLI_SCOPES,
                "services": [CLI_SERVICE],
            }
        )
    if with_deploy:
        roles.append(
            {
                "name": DEPLOY_SERVICE,
                "description": "teachlab deploy: stop servers, erase a person on an admin's command",
                "scopes": DEPLOY_SCOPES,
                "services": [DEPLOY_SERVICE],
            }
        )
    return roles


def all_roles(
    catalog: Catalog,
    group_members: Mapping[str, Iterable[str]],
    admin_groups: Iterable[str],
    *,
    with_cli: bool,
    with_deploy: bool = False,
) -> list[dict]:
    """``c.JupyterHub.load_roles``: every role the lab defines."""
    return (
        instructor_roles(catalog, group_members)
        + gpu_roles(catalog, admin_groups)
        + service_roles(with_cli=with_cli, with_deploy=with_deploy)
    )


def sync_instructor_scopes(db: Any, catalog: Catalog, username: str, groups: Iterable[str]) -> None:
    """At login (the groups claim is fresh): add or remove this user's server in each course's instructor role."""
    from jupyterhub import orm

    groups = set(groups)
    changed = False
    for course in catalog.courses.values():
        role = orm.Role.find(db, instructor_role_name(course.slug))
        if role is None:
            continue
        own = set(instructor_scopes(course.slug, [username]))
        enrolled = course.students.include(username, groups)
        scopes = (set(role.scopes) | own) if enrolled else (set(role.scopes) - own)
        if scopes != set(role.scopes):
            role.scopes = sorted(scopes)
            changed = True
    if changed:
        db.commit()


def instructor_scopes_hook(cache: CatalogCache) -> Callable:
    """``Authenticator.post_auth_hook`` keeping instructor roles equal to course membership."""

    def hook(authenticator: Any, handler: Any, authentication: dict) -> dict:
        groups = authentication.get("groups") or ()
        sync_instructor_scopes(handler.db, cache.catalog, authentication["name"], groups)
        return authentication

    return hook
