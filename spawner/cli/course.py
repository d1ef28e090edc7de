"""``teachlab course ...`` and ``teachlab image ...``: check, list, build, publish and roll back course
environments, and build base images. Handlers import what they need when they run, so ``--help`` is quick."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..catalog import is_course_folder, load_catalog, load_course
from ..core.problems import TeachlabError


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
        files = render_base_context(
            flavor,
            rootfs_image=flavor.rootfs_image(settings.image_namespace),
            constraints=constraints,
            pip=pip,
            installer_bytes=installer,
        )
    console.print(files["Dockerfile"].decode(), markup=False, end="")
    console.print(f"# build context: {', '.join(sorted(files))}", markup=False)
    return 0


def _course_build(args: argparse.Namespace, console: Console) -> int:
    from ..images.build import ImageBuilder
    from ..images.registry import VersionRegistry

    settings = _settings(args)
    course = _course(args)
    lock = VersionRegistry(settings.registry_dir).read_lock(course.slug, args.from_lock) if args.from_lock else None
    candidate = ImageBuilder(settings, _progress()).build_course(course, lock=lock)
    console.print(
        f"built {candidate.tag} (environment {candidate.environment_hash[:12]}); publish it with: teachlab course publish {course.slug}"
    )
    return 0


def _course_publish(args: argparse.Namespace, console: Console) -> int:
    from ..images.publish import publish_course

    result = publish_course(_course(args), settings=_settings(args), progress=_progress(), from_lock=args.from_lock)
    messages = {
        "published": f"published {result.slug} {result.version} ({result.image}); it is current",
        "unchanged": f"{result.slug} is unchanged: {result.version} stays current",
        "restored": f"{result.slug} matches the earlier {result.version}, which is current again",
    }
    console.print(f"{messages[result.outcome]} [{result.seconds:.1f} s]", markup=False)
    return 0


def _course_versions(args: argparse.Namespace, console: Console) -> int:
    import json
    from dataclasses import asdict

    from ..images.registry import VersionRegistry

    record = VersionRegistry(_settings(args).registry_dir).read(args.slug)
    if args.json:
        console.print_json(
            json.dumps({"course": record.slug, "current": record.current, "versions": [asdict(v) for v in record.versions]})
        )
        return 0
    if not record.versions:
        console.print(f"{args.slug} has no published versions (publish one: teachlab course publish {args.slug})")
        return 0
    table = Table("", "version", "created (UTC)", "environment", "size", "image", box=None, header_style="bold")
    for version in record.versions:
        table.add_row(
            "*" if version.version == record.current else "",
            version.version,
            version.created.replace("T", " ")[:19],
            version.environment_hash[:12],
            f"{version.size_bytes / 1e6:.0f} MB",
            version.image,
        )
    console.print(table)
    return 0


def _course_rollback(args: argparse.Namespace, console: Console) -> int:
    from ..images.publish import rollback_course

    record = rollback_course(args.slug, settings=_settings(args), to_version=args.to)
    console.print(f"{record.slug} {record.current} is current ({record.current_version.image})")
    return 0


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
    course_action("publish", "build, smoke-test and make a new version current", _course_publish).add_argument(
        "--from-lock", metavar="VERSION", help="publish the exact package set of an earlier version"
    )
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
    plan = image_commands.add_parser("plan", help="print a rendered build plan (no Docker needed)")
    plan.add_argument("--flavor", required=True)
    plan.add_argument("--course", metavar="SLUG", help="the plan of this course's layer instead of the base")
    plan.add_argument("--catalog", default="course_envs", help="catalog folder (default: course_envs)")
    plan.set_defaults(handler=_image_plan)
