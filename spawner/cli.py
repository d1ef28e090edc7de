"""``teachlab``: the command line for instructors and admins.

Every expected failure (bad input, Docker down, a failed build) is a ``TeachlabError`` and ends as
one or more ``error:`` lines and exit status 1 — never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table

from .catalog import load_catalog
from .problems import ProblemsError, TeachlabError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teachlab", description="Teachlab: courses, images and GPUs of a JupyterHub teaching lab.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    course = commands.add_parser("course", help="check, list, build and publish course environments")
    course_commands = course.add_subparsers(dest="course_command", required=True, metavar="ACTION")
    validate = course_commands.add_parser("validate", help="check one course folder or a whole catalog")
    validate.add_argument("path", nargs="?", default="course_envs", help="course folder or catalog (default: course_envs)")
    validate.set_defaults(handler=_course_validate)
    listing = course_commands.add_parser("list", help="list the courses of a catalog")
    listing.add_argument("path", nargs="?", default="course_envs", help="catalog folder (default: course_envs)")
    listing.set_defaults(handler=_course_list)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args, console)
    except ProblemsError as exc:
        for problem in exc.problems:
            errors.print(str(problem), markup=False)
        return 1
    except TeachlabError as exc:
        for line in str(exc).splitlines():
            errors.print(f"error: {line}", markup=False)
        return 1
    except KeyboardInterrupt:
        errors.print("error: interrupted", markup=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
