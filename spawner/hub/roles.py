"""Every role and custom scope the hub grants, made in this one module.

* Instructors of a course: list their students, open, start and stop exactly that course's server of
  each student (``servers!server=<student>/<course>``), read the course's GPU usage, and publish its
  environment and follow its class on the ``teachlab-courses`` pages (``custom:teachlab-courses:*:<course>``).
* Admins (the provider's admin groups): manage GPUs through the ``teachlab-gpu`` service, and every
  course's pages of ``teachlab-courses``.
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
# The class pre-warm: reads who is in a course's groups and whose server runs, starts and stops servers.
WARMER_SCOPES = ["read:users:name", "read:groups", "read:servers", "servers"]
WARM_NOW = [Scopes.WARM, f"access:services!service={Scopes.WARMER_SERVICE}"]
# The CLI token of the demo lab (`make down`, `teachlab class warm`, admins' scripts): list users and their servers,
# stop servers, ask the pre-warm to warm a course now.
CLI_SCOPES = ["list:users", "read:users:name", "read:servers", "delete:servers", *WARM_NOW]
# The monitoring system's token (Prometheus scraping /hub/metrics): nothing but the metrics.
METRICS_SERVICE = "teachlab-metrics"
METRICS_SCOPES = ["read:metrics"]
# teachlab-courses reads who is enrolled and whose server runs since when; it changes nothing with its own token.
COURSES_SERVICE_SCOPES = ["list:users", "read:users:name", "read:users:groups", "read:users:activity", "read:servers"]
# Its OAuth tokens may also carry the signed-in person's own ``servers`` scopes: a start or stop on the class
# page is made with the instructor's token, so the hub checks it against the instructor's own role.
COURSES_CLIENT_SERVER_SCOPES = ("servers",)
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


def gpu_custom_scopes(catalog: Catalog) -> dict[str, dict]:
    """The custom scopes of ``teachlab-gpu``."""
    scopes = {Scopes.GPU_ADMIN: {"description": "Read all GPU holdings and usage, set GPU quotas, release GPUs."}}
    for course in catalog.courses.values():
        scopes[Scopes.gpu_usage(course.slug)] = {"description": f"Read the GPU usage of {course.title} ({course.slug})."}
    return scopes


def course_custom_scopes(catalog: Catalog) -> dict[str, dict]:
    """The custom scopes of ``teachlab-courses``: each course's publish right and class page, and admins' all."""
    scopes = {Scopes.COURSES_ADMIN: {"description": "Publish and roll back every course's environment, follow every class."}}
    for course in catalog.courses.values():
        scopes[Scopes.course_publish(course.slug)] = {
            "description": f"Edit, publish and roll back the environment of {course.title} ({course.slug})."
        }
        scopes[Scopes.course_class(course.slug)] = {"description": f"Follow the class of {course.title} ({course.slug})."}
    return scopes


def custom_scopes(catalog: Catalog) -> dict[str, dict]:
    """The custom scopes the lab's services understand, for ``c.JupyterHub.custom_scopes``."""
    warm = {Scopes.WARM: {"description": "Start a course's students' servers ahead of a session (the class pre-warm)."}}
    return {**gpu_custom_scopes(catalog), **course_custom_scopes(catalog), **warm}


def oauth_client_scopes(catalog: Catalog) -> dict[str, list[str]]:
    """Per service, the scopes its OAuth tokens may carry (``oauth_client_allowed_scopes``), kept current by
    ``spawner.hub.role_sync`` as courses come and go."""
    return {
        Scopes.GPU_SERVICE: sorted(gpu_custom_scopes(catalog)),
        Scopes.COURSES_SERVICE: sorted(course_custom_scopes(catalog)) + list(COURSES_CLIENT_SERVER_SCOPES),
    }


def course_staff_role_name(slug: str) -> str:
    return f"course-staff-{slug}"


def course_staff_roles(catalog: Catalog) -> list[dict]:
    """Instructors of a course publish its environment and follow its class, and only theirs."""
    access = f"access:services!service={Scopes.COURSES_SERVICE}"
    return [
        {
            "name": course_staff_role_name(course.slug),
            "description": f"Instructors of {course.slug}: publish its environment, follow its class",
            "scopes": [Scopes.course_publish(course.slug), Scopes.course_class(course.slug), access],
            "users": list(course.instructors.users),
            "groups": list(course.instructors.groups),
        }
        for course in sorted(catalog.courses.values(), key=lambda c: c.slug)
        if course.instructors.users or course.instructors.groups
    ]


def course_roles(catalog: Catalog, admin_groups: Iterable[str]) -> list[dict]:
    """Admins reach every course's pages; each course's instructors reach theirs."""
    admins = {
        "name": "course-admins",
        "description": "Publish and roll back every course's environment, follow every class",
        "scopes": [Scopes.COURSES_ADMIN, f"access:services!service={Scopes.COURSES_SERVICE}"],
        "groups": list(admin_groups),
    }
    return [admins, *course_staff_roles(catalog)]


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


def class_admin_roles(admin_groups: Iterable[str]) -> list[dict]:
    """Admins may warm a course's servers now (``teachlab class warm``, the warmer's API)."""
    return [
        {
            "name": "warm-admins",
            "description": "Warm a course's servers ahead of a session",
            "scopes": WARM_NOW,
            "groups": list(admin_groups),
        }
    ]


def service_roles(*, with_cli: bool, with_metrics: bool = False, with_deploy: bool = False) -> list[dict]:
    """The idle culler's, the SSH gateway's, the warmer's and teachlab-courses' roles; the CLI's, the monitoring
    token's and `teachlab deploy`'s (the production stack) when the lab has those tokens."""
    roles = [
        {"name": IDLE_CULLER, "scopes": IDLE_CULLER_SCOPES, "services": [IDLE_CULLER]},
        {"name": Scopes.SSH_SERVICE, "scopes": SSH_GATEWAY_SCOPES, "services": [Scopes.SSH_SERVICE]},
        {"name": Scopes.WARMER_SERVICE, "scopes": WARMER_SCOPES, "services": [Scopes.WARMER_SERVICE]},
        {"name": Scopes.COURSES_SERVICE, "scopes": COURSES_SERVICE_SCOPES, "services": [Scopes.COURSES_SERVICE]},
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
    if with_metrics:
        roles.append(
            {
                "name": METRICS_SERVICE,
                "description": "Monitoring: scrape the hub's Prometheus metrics",
                "scopes": METRICS_SCOPES,
                "services": [METRICS_SERVICE],
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
    with_metrics: bool = False,
    with_deploy: bool = False,
) -> list[dict]:
    """``c.JupyterHub.load_roles``: every role the lab defines."""
    return (
        instructor_roles(catalog, group_members)
        + gpu_roles(catalog, admin_groups)
        + class_admin_roles(admin_groups)
        + course_roles(catalog, admin_groups)
        + service_roles(with_cli=with_cli, with_metrics=with_metrics, with_deploy=with_deploy)
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
