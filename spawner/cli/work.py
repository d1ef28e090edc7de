"""``teachlab work move``: bring a student's work for a course to another node (admins).

A student's work volume lives on one node; when that node was down the student started elsewhere with an empty
work folder (docs/scale-out.md, "Work that follows the student"). This command copies the work through the two
nodes' engines while the student's server is stopped, checks it, and removes it from the old node; the hub then
finds it on the new one. Thin glue over ``spawner.deploy.workmove``.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from .engines import add_engine_argument, engine_urls, node_engine


def move(args: argparse.Namespace, console: Console) -> int:
    from ..deploy.workmove import move_work

    engines = {node: node_engine(node, url) for node, url in engine_urls(args.engine or []).items()}
    done = move_work(
        engines, user=args.user, course=args.course, target=args.to, source=args.source, keep_source=args.keep_source
    )
    console.print(done.summary(), markup=False)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("work", help="students' work volumes on the swarm's nodes (admins)")
    sub = parser.add_subparsers(dest="work_command", required=True, metavar="ACTION")
    moving = sub.add_parser(
        "move",
        help="move a student's work for a course to another node (the server stopped; checked before the old copy goes)",
        description="Copy USER's work volume for COURSE from the node that holds it to NODE through the nodes' engines, "
        "check the files by digest, then remove the old copy. When NODE already holds a work volume for them, the earlier "
        "work goes into earlier-work-from-<old node>/ inside it.",
    )
    moving.add_argument("user", metavar="USER", help="the student's user name")
    moving.add_argument("course", metavar="COURSE", help="the course's slug")
    moving.add_argument("--to", required=True, metavar="NODE", help="the node to move the work to (a swarm node's name)")
    moving.add_argument("--from", dest="source", metavar="NODE", help="the node to take it from, when several hold work")
    moving.add_argument(
        "--keep-source", action="store_true", help="leave the old copy where it is (the hub keeps preferring that node)"
    )
    add_engine_argument(moving, "to look on: every node that may hold the work or run the server, --to's included")
    moving.set_defaults(handler=move)
