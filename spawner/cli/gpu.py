"""``teachlab gpu ...``: admins' commands on the GPU ledger (the same database the hub uses)."""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..core.contract import StateLayout, default_state_dir
from ..core.problems import TeachlabError
from ..core.spreadsheets import neutralise
from ..gpu import LOCAL_NODE, GpuLedger
from ..gpu.cache import inventory_for, ledger_for, parse_inventory_setting


def _ledger(args: argparse.Namespace) -> GpuLedger:
    url = args.ledger_url or os.environ.get("TEACHLAB_GPU_LEDGER_URL")
    if not url and os.environ.get("TEACHLAB_SITE_FILE"):  # a production server (docs/admins.md)
        from ..deploy.lab import ProductionLab
        from ..deploy.site import load_site

        url = ProductionLab(load_site(Path(os.environ["TEACHLAB_SITE_FILE"]))).records_url.render_as_string(hide_password=False)
    if not url:
        layout = StateLayout(Path(args.state_dir) if args.state_dir else default_state_dir(os.environ))
        if not layout.gpu_ledger.exists():
            raise TeachlabError(f"no GPU ledger at {layout.gpu_ledger}; start the lab once (make up) or pass --ledger-url")
        url = layout.gpu_ledger_url
    return ledger_for(url)


def _actor() -> str:
    """Who makes a change, for the audit log: the admin behind sudo if any."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _limit(text: str | None, kind: type) -> float | None:
    """``none`` removes a limit; anything else is a number."""
    if text is None or text.lower() == "none":
        return None
    try:
        return kind(text)
    except ValueError:
        raise TeachlabError(
            f"'{text}' is not a {'whole number' if kind is int else 'number'}; write e.g. 2, or none for no limit"
        ) from None


def status(args: argparse.Namespace, console: Console) -> int:
    ledger = _ledger(args)
    devices = inventory_for(parse_inventory_setting(args.inventory or os.environ.get("TEACHLAB_GPU_INVENTORY", "nvml")))
    holdings = {holding.device_uuid: holding for holding in ledger.holdings(node=LOCAL_NODE)}
    table = Table("#", "device", "model", "memory", "held by", "course", "since (UTC)", box=None, header_style="bold")
    for device in devices:
        holding = holdings.pop(device.uuid, None)
        table.add_row(
            str(device.index),
            device.uuid,
            device.model,
            f"{device.memory_bytes / 2**30:.0f} GiB",
            holding.username if holding else "free",
            holding.course if holding else "",
            holding.since.strftime("%Y-%m-%d %H:%M") if holding else "",
        )
    console.print(table)
    elsewhere = len(ledger.holdings()) - len(ledger.holdings(node=LOCAL_NODE))
    if elsewhere:
        console.print(f"{elsewhere} more held on the swarm's nodes: teachlab nodes shows them", markup=False)
    for holding in holdings.values():
        console.print(
            f"warning: {holding.username}/{holding.server_name} holds {holding.device_uuid}, which the inventory does not list",
            markup=False,
        )
    return 0


def quota_set(args: argparse.Namespace, console: Console) -> int:
    ledger = _ledger(args)
    if args.user:
        ledger.set_user_override(
            args.user, args.course, gpu_hours=_limit(args.hours, float), max_gpus=_limit(args.max_gpus, int), actor=_actor()
        )
        console.print(f"{args.user} in {args.course}: {ledger.quota_for(args.user, args.course)}", markup=False)
    else:
        ledger.set_course_quota(
            args.course,
            max_concurrent_gpus=_limit(args.max_concurrent, int),
            gpu_hours_per_student=_limit(args.hours, float),
            actor=_actor(),
        )
        console.print(
            f"{args.course}: at most {args.max_concurrent or 'any number of'} GPUs at once, "
            f"{args.hours or 'unlimited'} GPU-hours per student",
            markup=False,
        )
    return 0


def quota_show(args: argparse.Namespace, console: Console) -> int:
    ledger = _ledger(args)
    table = Table("course", "GPUs at once", "GPU-hours per student", box=None, header_style="bold")
    for quota in ledger.course_quotas():
        if args.course in (None, quota["course"]):
            table.add_row(
                quota["course"],
                str(quota["max_concurrent_gpus"] if quota["max_concurrent_gpus"] is not None else "no limit"),
                str(quota["gpu_hours_per_student"] if quota["gpu_hours_per_student"] is not None else "no limit"),
            )
    console.print(table)
    overrides = [o for o in ledger.user_overrides() if args.course in (None, o["course"])]
    if overrides:
        table = Table("student", "course", "GPU-hours", "GPUs at once", box=None, header_style="bold")
        for override in overrides:
            table.add_row(
                override["username"],
                override["course"],
                *(str(override[key]) if override[key] is not None else "course's" for key in ("gpu_hours", "max_gpus")),
            )
        console.print(table)
    return 0


def usage(args: argparse.Namespace, console: Console) -> int:
    rows = _ledger(args).usage_report(course=args.course)
    if args.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["course", "username", "gpu_hours"])
        for row in rows:
            writer.writerow([neutralise(row.course), neutralise(row.username), f"{row.gpu_seconds / 3600:.4f}"])
        console.out(buffer.getvalue(), end="", highlight=False)
        return 0
    table = Table("course", "student", "GPU-hours", box=None, header_style="bold")
    for row in rows:
        table.add_row(row.course, row.username, f"{row.gpu_seconds / 3600:.2f}")
    console.print(table)
    return 0


def release(args: argparse.Namespace, console: Console) -> int:
    released = _ledger(args).release(username=args.user, server_name=args.server, reason=args.reason, actor=_actor())
    if not released:
        console.print(f"{args.user}/{args.server} holds no GPU", markup=False)
    else:
        console.print(
            f"released {', '.join(released)} from {args.user}/{args.server} (logged); stop the server too if it still runs",
            markup=False,
        )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    gpu = commands.add_parser("gpu", help="GPU holdings, quotas and usage (admins)")
    actions = gpu.add_subparsers(dest="gpu_command", required=True, metavar="ACTION")

    def action(name: str, help_text: str, handler, parent=actions) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, help=help_text)
        parser.add_argument("--state-dir", help="lab state folder (default: $TEACHLAB_STATE_DIR or .teachlab)")
        parser.add_argument(
            "--ledger-url", help="SQLAlchemy URL of the ledger (default: $TEACHLAB_GPU_LEDGER_URL or the lab's SQLite file)"
        )
        parser.set_defaults(handler=handler)
        return parser

    action("status", "each GPU, who holds it, for which course, since when", status).add_argument(
        "--inventory", help="nvml, or a JSON list of devices (default: $TEACHLAB_GPU_INVENTORY or nvml)"
    )
    quota_parser = actions.add_parser("quota", help="show or set GPU quotas")
    quota_actions = quota_parser.add_subparsers(dest="quota_command", required=True, metavar="ACTION")
    setter = action("set", "set a course's quota, or one student's override with --user", quota_set, quota_actions)
    setter.add_argument("course")
    setter.add_argument("--max-concurrent", metavar="N", help="GPUs the course's servers may hold at once (none: no limit)")
    setter.add_argument("--hours", metavar="H", help="GPU-hours per student per term (none: no limit)")
    setter.add_argument("--user", help="set this student's override instead of the course's quota")
    setter.add_argument("--max-gpus", metavar="N", help="with --user: GPUs this student may hold at once")
    action("show", "course quotas and per-student overrides", quota_show, quota_actions).add_argument("course", nargs="?")
    usage_parser = action("usage", "GPU-hours per course and student", usage)
    usage_parser.add_argument("--course")
    usage_parser.add_argument("--csv", action="store_true", help="print CSV")
    releaser = action("release", "release a server's GPUs by hand (logged)", release)
    releaser.add_argument("user")
    releaser.add_argument("server", help="server name (the course slug)")
    releaser.add_argument("--reason", default="released by an admin")
