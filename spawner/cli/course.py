"""``teachlab course ...`` and ``teachlab image ...``: check, list, build, publish and roll back course
environments, and build base images. Handlers import what they need when they run, so ``--help`` is quick."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..catalog import is_course_folder, load_catalog, load_course
from ..core.problems import TeachlabError

HISTORY_SHOWN = 10  # the newest publishes and rollbacks `teachlab course versions` lists under its table


def _course_validate(args: argparse.Namespace, console: Console) -> int:
    catalog = load_catalog(Path(args.path))
    console.print(f"ok: {len(catalog.courses)} course(s) valid in {args.path}", highlight=False)
    return 0


def _course_list(args: argparse.Namespace, console: Console) -> int:
    catalog = load_catalog(Path(args.path))
    table = Table("slug", "title", "term", "gpu", "groups", box=None, header_style="bold")
    for course in sorted(catalog.courses.values(), key=lambda c: c.slug):
        table.add_row(
            course.slug,
            course.title,
            f"{course.term.start.isoformat()} .. {course.term.end.isoformat()}",
            str(course.gpu),
            ", ".join(course.students.groups) or "-",
        )
    console.print(table)
    return 0


def _course_schema_docs(args: argparse.Namespace, console: Console) -> int:
    from ..catalog.docs import render_course_yaml_reference

    Path(args.output).write_text(render_course_yaml_reference())
    console.print(f"wrote {args.output}")
    return 0


def _settings(args: argparse.Namespace):
    from ..images.settings import BuildSettings

    overrides = {"state_dir": Path(args.state_dir)} if getattr(args, "state_dir", None) else {}
    if getattr(args, "advisory_db", None):
        overrides["advisory_db"] = Path(args.advisory_db)
    return BuildSettings.from_environment(**overrides)


def _course(args: argparse.Namespace):
    catalog_root = Path(args.catalog)
    folder = catalog_root / args.slug
    if not is_course_folder(folder):
        known = sorted(p.name for p in catalog_root.iterdir() if is_course_folder(p)) if catalog_root.is_dir() else []
        raise TeachlabError(f"no course '{args.slug}' in {catalog_root} (courses: {', '.join(known) or 'none'})")
    return load_course(folder)


def _progress():
    """Progress goes to standard error, so the result lines on standard output stay easy to read by scripts."""
    from ..core.progress import Progress

    return Progress(Console(stderr=True, highlight=False))


def _image_build_base(args: argparse.Namespace, console: Console) -> int:
    from ..images.build import ImageBuilder

    reference = ImageBuilder(_settings(args), _progress()).build_base(args.flavor)
    console.print(f"base image {reference} is ready")
    return 0


def _image_lock_server(args: argparse.Namespace, console: Console) -> int:
    from ..images.build import ImageBuilder

    path = ImageBuilder(_settings(args), _progress()).lock_server(args.flavor)
    console.print(f"wrote {path}; rebuild the base images to use it (teachlab image build-base --flavor ...)", markup=False)
    return 0


def _image_plan(args: argparse.Namespace, console: Console) -> int:
    """The rendered build plan with this machine's settings, without Docker: Dockerfile and context files."""
    from ..images.plan import PipSettings, load_flavor, render_base_context, render_course_context

    settings = _settings(args)
    flavor = load_flavor(settings.images_dir, args.flavor)
    constraints = settings.constraints_file.read_text()
    pip = PipSettings(
        index_url=settings.pip_index_url,
        extra_index_urls=settings.pip_extra_index_urls,
        ca_bundle=settings.ca_bundle.read_bytes() if settings.ca_bundle else None,
        conda_channels=settings.conda_channels,
        conda_channel_alias=settings.conda_channel_alias,
    )
    if args.course:
        course = _course(argparse.Namespace(catalog=args.catalog, slug=args.course))
        files = render_course_context(
            course,
            flavor,
            base_image=flavor.base_image(settings.image_namespace),
            base_image_id="(not built)",
            constraints=constraints,
            pip=pip,
        ).files
    else:
        installer = b"(the installer, downloaded at build time)" if flavor.installer else None
        if not flavor.server_lock_file.is_file():
            raise TeachlabError(f"{flavor.server_lock_file} is missing (teachlab image lock-server --flavor {flavor.name})")
        files = render_base_context(
            flavor,
            rootfs_image=flavor.rootfs_image(settings.image_namespace),
            server_lock=flavor.server_lock_file.read_text(),
            pip=pip,
            installer_bytes=installer,
        )
    console.print(files["Dockerfile"].decode(), markup=False, end="")
    console.print(f"# build context: {', '.join(sorted(files))}", markup=False)
    return 0


def _course_build(args: argparse.Namespace, console: Console) -> int:
    from ..images.build import ImageBuilder
    from ..images.publish import build_from_locks, read_version_locks
    from ..images.registry import VersionRegistry

    settings = _settings(args)
    course = _course(args)
    builder = ImageBuilder(settings, _progress())
    if args.from_lock:
        locks = read_version_locks(VersionRegistry(settings.registry_dir), course.slug, args.from_lock)
        candidate = build_from_locks(builder, course, locks)
    else:
        candidate = builder.build_course(course)
    console.print(
        f"built {candidate.tag} (environment {candidate.environment_hash[:12]}); publish it with: teachlab course publish {course.slug}"
    )
    return 0


def _acceptances(args: argparse.Namespace) -> list:
    """``--accept ID`` (repeatable) with one ``--reason`` and ``--expires`` for all of them."""
    import os
    from datetime import date

    from ..images.scan import new_acceptance

    if not args.accept and (args.reason or args.expires):
        raise TeachlabError("--reason and --expires go with --accept ADVISORY-ID")
    by = os.environ.get("SUDO_USER") or os.environ.get("USER") or "unknown"
    return [
        new_acceptance(advisory, reason=args.reason, expires=args.expires, accepted_by=by, today=date.today())
        for advisory in args.accept
    ]


def _course_publish(args: argparse.Namespace, console: Console) -> int:
    from ..images.publish import publish_course

    result = publish_course(
        _course(args), settings=_settings(args), progress=_progress(), from_lock=args.from_lock, accept=_acceptances(args)
    )
    messages = {
        "published": f"published {result.slug} {result.version} ({result.image}); it is current",
        "unchanged": f"{result.slug} is unchanged: {result.version} stays current",
        "restored": f"{result.slug} matches the earlier {result.version}, which is current again",
    }
    console.print(f"{messages[result.outcome]} [{result.seconds:.1f} s]", markup=False)
    from ..images.registry import VersionRegistry
    from ..images.scan import scan_summary

    published = VersionRegistry(_settings(args).registry_dir).read(result.slug).version(result.version)
    console.print(f"scan: {scan_summary(published.scan)}", markup=False)
    return 0


def _course_versions(args: argparse.Namespace, console: Console) -> int:
    import json
    from dataclasses import asdict
    from datetime import date

    from ..images.registry import VersionRegistry
    from ..images.scan import AcceptanceStore, environment_cell, finding_lines, scan_summary

    settings = _settings(args)
    record = VersionRegistry(settings.registry_dir).read(args.slug)
    if args.json:
        console.print_json(
            json.dumps(
                {
                    "course": record.slug,
                    "current": record.current,
                    "versions": [asdict(v) for v in record.versions],
                    "history": [asdict(entry) for entry in record.history],
                    "acceptances": [
                        {**asdict(a), "active": a.active(date.today())}
                        for a in AcceptanceStore(settings.layout.acceptances).read()
                    ],
                }
            )
        )
        return 0
    if not record.versions:
        console.print(f"{args.slug} has no published versions (publish one: teachlab course publish {args.slug})")
        return 0
    table = Table(
        "",
        "version",
        "created (UTC)",
        "Python kernel / server",
        "jupyter-server",
        "size",
        "advisories of",
        "server",
        "course",
        "Debian",
        "by",
        box=None,
        header_style="bold",
    )
    for version in record.versions:
        scan = (version.scan or {}).get("last_audit") or version.scan or {}
        table.add_row(
            "*" if version.version == record.current else "",
            version.version,
            version.created.replace("T", " ")[:16],
            f"{version.kernel_python or '?'} / {version.server_python or '?'}",
            version.jupyter_server or "?",
            f"{version.size_bytes / 1e6:.0f} MB",
            (scan.get("advisory_data") or {}).get("date") or "no data",
            *(environment_cell(scan.get(key)) for key in ("server", "course", "debian")),
            version.published_by or "",
        )
    console.print(table)
    if record.history:
        console.print(f"Publishes and rollbacks (the newest {HISTORY_SHOWN}, oldest first):")
    for entry in record.history[-HISTORY_SHOWN:]:
        change = f"{entry.from_version or '-'} -> {entry.to_version or '-'}"
        detail = f": {entry.detail}" if entry.detail else ""
        console.print(f"{entry.at} {entry.actor} {entry.action} {change} ({entry.outcome}{detail})", markup=False)
    current = record.current_version
    if current is not None:
        scan = (current.scan or {}).get("last_audit") or current.scan
        console.print(f"{current.version}: image {current.image}; SBOM {current.sbom or 'none'}", markup=False)
        console.print(f"{current.version} scan: {scan_summary(scan)}", markup=False)
        for line in finding_lines(scan):
            console.print(f"  {line}", markup=False)
    for acceptance in AcceptanceStore(settings.layout.acceptances).read():
        state = "active" if acceptance.active(date.today()) else "EXPIRED (void)"
        console.print(
            f"accepted {acceptance.id} until {acceptance.expires} ({state}) by {acceptance.accepted_by}: {acceptance.reason}",
            markup=False,
        )
    return 0


def _course_audit(args: argparse.Namespace, console: Console) -> int:
    """Re-check current versions against the newest advisory data; exit 1 when something new was found."""
    from datetime import date

    from ..images.publish import audit_version
    from ..images.registry import VersionRegistry
    from ..images.scan import scan_summary

    if bool(args.slug) == bool(args.all):
        raise TeachlabError("name one course (teachlab course audit SLUG) or audit all of them (--all)")
    settings = _settings(args)
    registry = VersionRegistry(settings.registry_dir)
    slugs = [args.slug] if args.slug else sorted(p.stem for p in settings.registry_dir.glob("*.json"))
    new = 0
    for slug in slugs:
        audit, found = audit_version(registry, slug, settings=settings, today=date.today())
        console.print(f"{slug} {registry.read(slug).current}: {scan_summary(audit)}", markup=False)
        for environment, finding in found:
            console.print(
                f"  NEW in {environment}: {finding['id']} {finding['package']} {finding['installed']} "
                f"(fixed in {', '.join(finding['fixed']) or 'no fixed version yet'})",
                markup=False,
            )
        new += len(found)
    return 1 if new else 0


def _course_rollback(args: argparse.Namespace, console: Console) -> int:
    from ..images.publish import rollback_course

    record = rollback_course(args.slug, settings=_settings(args), to_version=args.to)
    console.print(f"{record.slug} {record.current} is current ({record.current_version.image})")
    return 0


ADVISORY_OPTION = "--advisory-db"
ADVISORY_HELP = "folder of OSV advisory records (default: $TEACHLAB_ADVISORY_DB; without data: 'not scanned')"


def register(commands: argparse._SubParsersAction) -> None:
    course = commands.add_parser("course", help="check, list, build and publish course environments")
    course_commands = course.add_subparsers(dest="course_command", required=True, metavar="ACTION")
    validate = course_commands.add_parser("validate", help="check one course folder or a whole catalog")
    validate.add_argument("path", nargs="?", default="course_envs", help="course folder or catalog (default: course_envs)")
    validate.set_defaults(handler=_course_validate)
    listing = course_commands.add_parser("list", help="list the courses of a catalog")
    listing.add_argument("path", nargs="?", default="course_envs", help="catalog folder (default: course_envs)")
    listing.set_defaults(handler=_course_list)

    schema_docs = course_commands.add_parser("schema-docs", help="write the course.yaml reference from the JSON Schema")
    schema_docs.add_argument("--output", default="docs/course-yaml.md", help="where to write (default: docs/course-yaml.md)")
    schema_docs.set_defaults(handler=_course_schema_docs)

    def course_action(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        action = course_commands.add_parser(name, help=help_text)
        action.add_argument("slug", help="course slug (its folder name)")
        action.add_argument("--catalog", default="course_envs", help="catalog folder (default: course_envs)")
        action.add_argument("--state-dir", help="where versions are recorded (default: $TEACHLAB_STATE_DIR or .teachlab)")
        action.set_defaults(handler=handler)
        return action

    course_action("build", "build a course image (cached when unchanged)", _course_build).add_argument(
        "--from-lock", metavar="VERSION", help="rebuild the exact package set of a published version"
    )
    publish = course_action("publish", "build, smoke-test, scan and make a new version current", _course_publish)
    publish.add_argument("--from-lock", metavar="VERSION", help="publish the exact package set of an earlier version")
    publish.add_argument(
        "--accept",
        metavar="ADVISORY-ID",
        action="append",
        default=[],
        help="accept a known vulnerability in the Jupyter server environment (admins; with --reason and --expires)",
    )
    publish.add_argument("--reason", help="why the accepted advisory cannot be exploited here (recorded and shown)")
    publish.add_argument("--expires", metavar="YYYY-MM-DD", help="the day after which the acceptance is void")
    publish.add_argument(ADVISORY_OPTION, metavar="FOLDER", help=ADVISORY_HELP)
    audit = course_commands.add_parser("audit", help="re-check current versions against the newest advisory data")
    audit.add_argument("slug", nargs="?", help="course slug (or --all)")
    audit.add_argument("--all", action="store_true", help="every published course")
    audit.add_argument("--state-dir", help="where versions are recorded (default: $TEACHLAB_STATE_DIR or .teachlab)")
    audit.add_argument(ADVISORY_OPTION, metavar="FOLDER", help=ADVISORY_HELP)
    audit.set_defaults(handler=_course_audit)
    course_action("versions", "list published versions", _course_versions).add_argument(
        "--json", action="store_true", help="print JSON"
    )
    course_action("rollback", "make an earlier version current", _course_rollback).add_argument(
        "--to", metavar="VERSION", help="the version to make current (default: the one before the current)"
    )

    image = commands.add_parser("image", help="base images of the course image flavors")
    image_commands = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    build_base = image_commands.add_parser("build-base", help="build a flavor's base image (debootstrap + docker)")
    build_base.add_argument("--flavor", required=True, help="debian-py39 or miniconda-py39")
    build_base.add_argument("--state-dir", help="where build logs go (default: $TEACHLAB_STATE_DIR or .teachlab)")
    build_base.set_defaults(handler=_image_build_base)
    lock_server = image_commands.add_parser(
        "lock-server", help="resolve the Jupyter server environment from constraints.txt into its hashed lock"
    )
    lock_server.add_argument("--flavor", default="debian-py39", help="a venv flavor whose system Python is the server's")
    lock_server.add_argument("--state-dir", help="where build logs go (default: $TEACHLAB_STATE_DIR or .teachlab)")
    lock_server.set_defaults(handler=_image_lock_server)
    plan = image_commands.add_parser("plan", help="print a rendered build plan (no Docker needed)")
    plan.add_argument("--flavor", required=True)
    plan.add_argument("--course", metavar="SLUG", help="the plan of this course's layer instead of the base")
    plan.add_argument("--catalog", default="course_envs", help="catalog folder (default: course_envs)")
    plan.set_defaults(handler=_image_plan)
