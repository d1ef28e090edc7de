"""``python -m spawner.devlab up|down``: what ``make up`` and ``make down`` run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from ..cli.main import run_handler


def _up(args: argparse.Namespace, console: Console) -> int:
    from ..core.progress import Progress
    from .run import lab_up

    lab_up(
        state_dir=Path(args.state_dir),
        catalog_path=Path(args.catalog),
        console=console,
        progress=Progress(Console(stderr=True, highlight=False)),
    )
    return 0


def _down(args: argparse.Namespace, console: Console) -> int:
    from .run import lab_down

    lab_down(state_dir=Path(args.state_dir), catalog_path=Path(args.catalog), console=console)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spawner.devlab", description="The demo lab on this machine.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text, handler in (
        ("up", "publish the example courses and start provider, proxy and hub", _up),
        ("down", "stop the servers, the hub, the proxy and the provider; keep all data", _down),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--state-dir", default=".teachlab", help="state folder (default: .teachlab)")
        action.add_argument("--catalog", default="course_envs", help="catalog folder (default: course_envs)")
        action.set_defaults(handler=handler)
    return run_handler(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
