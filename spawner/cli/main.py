"""``teachlab``: the command line for instructors and admins.

Every expected failure (bad input, Docker down, a failed build) is a ``TeachlabError`` and ends as
one or more ``error:`` lines and exit status 1 — never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console

from ..core.problems import ProblemsError, TeachlabError
from . import classes, course, deploy, gpu, nodes, work


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="teachlab",
        description="Teachlab: courses, images, GPUs, class sessions and the production stack of a JupyterHub teaching lab.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    course.register(commands)
    gpu.register(commands)
    nodes.register(commands)
    work.register(commands)
    classes.register(commands)
    deploy.register(commands)
    return parser


def run_handler(args: argparse.Namespace) -> int:
    """Run a parsed command's handler; expected failures become ``error:`` lines, never a traceback."""
    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
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
    except Exception as exc:
        if os.environ.get("TEACHLAB_DEBUG"):
            raise
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        errors.print(f"error: {type(exc).__name__}: {first_line} (set TEACHLAB_DEBUG=1 for the traceback)", markup=False)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_handler(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
