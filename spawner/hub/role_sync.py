"""Roles follow the catalog and group membership while the hub runs.

Every time the live catalog is re-read (``CatalogCache``, every few seconds), the instructor and GPU-usage
roles in the hub's database are made equal to what ``spawner.hub.roles`` derives from the catalog and the
hub's current groups: an instructor added to course.yaml gains their students' servers, one removed loses
them, a student who left the course's group is taken out of its instructors' scopes, and a new course gets
its custom scopes and roles (its publish right and class page included). It runs on the hub's event loop (the database session is not thread-safe).
"""

from __future__ import annotations

import logging
from typing import Any

from ..catalog import Catalog
from .roles import course_staff_roles, custom_scopes, gpu_usage_roles, instructor_roles, oauth_client_scopes

log = logging.getLogger("teachlab")
MANAGED_PREFIXES = ("instructor-", "gpu-usage-", "course-staff-")


def group_members(db: Any) -> dict[str, set[str]]:
    from jupyterhub import orm

    return {group.name: {user.name for user in group.users} for group in db.query(orm.Group)}


def _define_new_custom_scopes(catalog: Catalog) -> None:
    from jupyterhub import scopes

    missing = {name: spec for name, spec in custom_scopes(catalog).items() if name not in scopes.scope_definitions}
    if missing:
        scopes.define_custom_scopes(missing)


def _members(db: Any, role: Any, wanted: list[str], kind: str) -> bool:
    """Grant and strip ``role`` so its ``kind`` ("users" or "groups") are exactly ``wanted``; True on a change."""
    from jupyterhub import orm, roles

    model = orm.User if kind == "users" else orm.Group
    have = {entity.name for entity in getattr(role, kind)}
    changed = False
    for name in sorted(set(wanted) - have):
        entity = model.find(db, name)
        if entity is None:
            entity = model(name=name)  # as JupyterHub's load_roles does for people named before their first login
            db.add(entity)
            db.flush()
        roles.grant_role(db, entity, role.name, commit=False)
        changed = True
    for name in sorted(have - set(wanted)):
        roles.strip_role(db, model.find(db, name), role.name, commit=False)
        changed = True
    return changed


def _listed_students(db: Any, catalog: Catalog) -> list[str]:
    """Students named in course.yaml get a user record, as the instructors do: the hub then knows them before their
    first sign-in (the class pre-warm starts their servers; their access stays the catalog's to decide)."""
    from jupyterhub import orm, roles

    listed = {name: course.slug for course in catalog.courses.values() for name in course.students.users}
    # One query for the whole class (this runs at every catalog refresh, for hundreds of names).
    known = {name for (name,) in db.query(orm.User.name).filter(orm.User.name.in_(list(listed)))}
    made = []
    for name, slug in listed.items():
        if name not in known:
            user = orm.User(name=name)
            db.add(user)
            db.flush()
            roles.assign_default_roles(db, entity=user)  # the "user" role, as a sign-in would give
            made.append(f"user {name} recorded: listed in {slug}")
    return made


def sync_roles(db: Any, catalog: Catalog) -> list[str]:
    """Make the managed roles equal to the catalog; returns one line per change (for the log)."""
    from jupyterhub import orm, roles

    _define_new_custom_scopes(catalog)
    changes = _listed_students(db, catalog)
    wanted = instructor_roles(catalog, group_members(db)) + gpu_usage_roles(catalog) + course_staff_roles(catalog)
    for spec in wanted:
        role = orm.Role.find(db, spec["name"])
        if role is None:
            role = roles.create_role(db, {key: spec[key] for key in ("name", "description", "scopes")}, commit=False)
            changes.append(f"role {spec['name']} created")
        elif sorted(role.scopes) != sorted(spec["scopes"]):
            role.scopes = list(spec["scopes"])
            changes.append(f"role {spec['name']} scopes updated")
        for kind in ("users", "groups"):
            if _members(db, role, spec.get(kind, []), kind):
                changes.append(f"role {spec['name']} {kind} now {sorted(spec.get(kind, []))}")
    wanted_names = {spec["name"] for spec in wanted}
    for role in db.query(orm.Role):
        if role.name.startswith(MANAGED_PREFIXES) and role.name not in wanted_names and (role.users or role.groups):
            for kind in ("users", "groups"):
                _members(db, role, [], kind)
            changes.append(f"role {role.name} emptied: its course left the catalog")
    for service, allowed in oauth_client_scopes(catalog).items():
        client = db.query(orm.OAuthClient).filter_by(identifier=f"service-{service}").one_or_none()
        if client is not None and set(client.allowed_scopes or []) != set(allowed):
            client.allowed_scopes = sorted(allowed)
            changes.append(f"{service} may now request {len(client.allowed_scopes)} scopes")
    if changes:
        db.commit()
    return changes


def sync_roles_listener():
    """A ``CatalogCache`` async listener that syncs the running hub's roles after each refresh."""

    async def listener(catalog: Catalog) -> None:
        from jupyterhub.app import JupyterHub

        if not JupyterHub.initialized() or getattr(JupyterHub.instance(), "db", None) is None:
            return
        app = JupyterHub.instance()
        try:
            for change in sync_roles(app.db, catalog):
                log.info("roles follow the catalog: %s", change)
        except Exception:
            app.db.rollback()
            log.exception("roles could not follow the catalog; they stay as they were")

    return listener


def retire_replaced_service_tokens(db: Any, service: str, current_token: str) -> int:
    """Delete the service's tokens from earlier configurations (JupyterHub adds a configured token but never
    removes the one it replaced): a copied old CLI token stops working once the lab rotated it."""
    from jupyterhub import orm

    current = orm.APIToken.find(db, current_token)
    owner = orm.Service.find(db, service)
    if owner is None or current is None:
        return 0
    stale = [token for token in owner.api_tokens if token.id != current.id and token.note == "from config"]
    for token in stale:
        db.delete(token)
    if stale:
        db.commit()
    return len(stale)


def retire_replaced_tokens_listener(service: str, current_token: str):
    """A ``CatalogCache`` async listener that retires replaced config tokens of ``service`` on the running hub."""

    async def listener(catalog: Catalog) -> None:
        from jupyterhub.app import JupyterHub

        if JupyterHub.initialized() and getattr(JupyterHub.instance(), "db", None) is not None:
            retired = retire_replaced_service_tokens(JupyterHub.instance().db, service, current_token)
            if retired:
                log.info("retired %d replaced token(s) of the %s service", retired, service)

    return listener
