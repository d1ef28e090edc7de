"""``teachlab class ...``: a course's class sessions, by hand.

``class warm SLUG --now`` asks the lab's ``teachlab-warmer`` service to start the enrolled students' servers
now, exactly as it does before a session in the timetable (same budget, quotas and checks). It talks to the
service on this machine with the lab's CLI token: ``--warmer-url`` / ``TEACHLAB_WARMER_URL``, else the
port the development lab recorded in ``<state>/lab/lab.json``; ``--token-file`` / ``TEACHLAB_CLI_TOKEN``,
else ``<state>/lab/admin-token``.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console

from ..core.contract import Scopes, StateLayout, default_state_dir
from ..core.naming import is_course_slug
from ..core.problems import TeachlabError

WARM_TIMEOUT_SECONDS = 600  # warming a class starts its servers a few seconds apart


def _layout(args: argparse.Namespace) -> StateLayout:
    return StateLayout(Path(args.state_dir) if args.state_dir else default_state_dir(os.environ))


def warmer_url(args: argparse.Namespace) -> str:
    url = args.warmer_url or os.environ.get("TEACHLAB_WARMER_URL")
    if url:
        return url.rstrip("/") + "/"
    description = _layout(args).lab_description
    try:
        port = json.loads(description.read_text())["ports"]["warmer"]
    except (OSError, ValueError, KeyError):
        raise TeachlabError(
            f"cannot tell where the lab's warmer listens (no warmer port in {description}); "
            "pass --warmer-url http://127.0.0.1:PORT/services/teachlab-warmer/ or start the lab (make up)"
        ) from None
    return f"http://127.0.0.1:{port}/services/{Scopes.WARMER_SERVICE}/"


def cli_token(args: argparse.Namespace) -> str:
    if args.token_file:
        path = Path(args.token_file)
    elif os.environ.get("TEACHLAB_CLI_TOKEN"):
        return os.environ["TEACHLAB_CLI_TOKEN"]
    else:
        path = _layout(args).admin_token
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise TeachlabError(f"cannot read the CLI token from {path}: {error.strerror}; pass --token-file") from None
    if not token:
        raise TeachlabError(f"{path} is empty; pass --token-file with the lab's CLI token")
    return token


def warm(args: argparse.Namespace, console: Console) -> int:
    if not args.now:
        raise TeachlabError("the timetable warms sessions by itself (course.yaml sessions); add --now to warm the course now")
    if not is_course_slug(args.slug):
        raise TeachlabError(f"'{args.slug}' is not a course slug; write the course folder's name, e.g. intro-python")
    request = urllib.request.Request(
        f"{warmer_url(args)}api/warm/{args.slug}",
        method="POST",
        data=b"",
        headers={"Authorization": f"token {cli_token(args)}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=WARM_TIMEOUT_SECONDS) as response:
            result = json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("message") or error.reason
        except ValueError:
            message = error.reason
        raise TeachlabError(f"the warmer refused: {message} (HTTP {error.code})") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TeachlabError(f"cannot reach the lab's warmer at {warmer_url(args)}: {reason}; is the lab up?") from None
    console.print(
        f"{args.slug}: started {len(result['started'])}, refused {len(result['refused'])}, "
        f"over the memory budget {len(result['over_budget'])}",
        markup=False,
    )
    for label in ("started", "refused", "over_budget"):
        if result[label]:
            console.print(f"  {label.replace('_', ' ')}: {', '.join(result[label])}", markup=False)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    classes = commands.add_parser("class", help="class sessions: warm a course's servers by hand")
    actions = classes.add_subparsers(dest="class_command", required=True, metavar="ACTION")
    warm_parser = actions.add_parser("warm", help="start the enrolled students' servers of a course (the pre-warm)")
    warm_parser.add_argument("slug", help="the course, e.g. intro-python")
    warm_parser.add_argument("--now", action="store_true", help="warm now instead of waiting for the timetable")
    warm_parser.add_argument("--warmer-url", help="the teachlab-warmer service's URL (default: the local lab's)")
    warm_parser.add_argument("--token-file", help="file holding the lab's CLI token (default: <state>/lab/admin-token)")
    warm_parser.add_argument("--state-dir", help="lab state folder (default: $TEACHLAB_STATE_DIR or .teachlab)")
    warm_parser.set_defaults(handler=warm)
