"""``teachlab deploy ...``: the production lab on this server (docs/admins.md).

Every command reads the site file (``--site``, else ``$TEACHLAB_SITE_FILE``, else /etc/teachlab/site.yaml)
and checks it first: a site file with problems prints one line per problem and changes nothing. Handlers
import what they need when they run, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..core.progress import Progress


def _site_path(args: argparse.Namespace) -> Path:
    from ..deploy.site import DEFAULT_SITE_FILE, SITE_FILE_VARIABLE

    return Path(args.site or os.environ.get(SITE_FILE_VARIABLE) or DEFAULT_SITE_FILE)


def _lab(args: argparse.Namespace, console: Console):
    from ..deploy.lab import ProductionLab
    from ..deploy.site import load_site

    return ProductionLab(load_site(_site_path(args)), Progress(Console(stderr=True, highlight=False)))


def _validate(args: argparse.Namespace, console: Console) -> int:
    from ..deploy.site import load_site

    site = load_site(_site_path(args))
    console.print(f"ok: {site.path} describes the lab at {site.public_url}", markup=False)
    return 0


def _build(args: argparse.Namespace, console: Console) -> int:
    lab = _lab(args, console)
    images = lab.image_builder().build()
    for reference in images.references():
        console.print(reference, markup=False)
    return 0


def _print_states(console: Console, states) -> None:
    table = Table("service", "tasks", "state", "image", box=None, header_style="bold")
    for state in states:
        table.add_row(state.name, f"{state.running}/{state.desired}", state.state, state.image)
    console.print(table)


def _up(args: argparse.Namespace, console: Console) -> int:
    lab = _lab(args, console)
    _print_states(console, lab.up())
    console.print(f"Teachlab is up: {lab.site.public_url}", markup=False)
    return 0


def _status(args: argparse.Namespace, console: Console) -> int:
    import datetime

    from cryptography import x509

    lab = _lab(args, console)
    lab.swarm.require_manager()
    states = lab.swarm.states()
    if not states:
        console.print("no Teachlab stack is deployed on this server (teachlab deploy up)", markup=False)
        return 1
    _print_states(console, states)
    servers = [container for container in lab.student_containers() if container.status == "running"]
    console.print(f"students' servers running: {len(servers)}", markup=False)
    certificate = x509.load_pem_x509_certificates(lab.site.certificate.read_bytes())[0]
    days = (certificate.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).days
    console.print(f"TLS certificate for {lab.site.host}: {days} days left", markup=False)
    return 0 if all(state.ready for state in states) else 1


def _down(args: argparse.Namespace, console: Console) -> int:
    lab = _lab(args, console)
    stopped = lab.down(stop_servers=not args.keep_servers)
    console.print(f"Teachlab is down ({stopped} server(s) stopped); volumes, databases and secrets are kept.", markup=False)
    return 0


def _backup(args: argparse.Namespace, console: Console) -> int:
    from ..deploy.backup import write_backup

    result = write_backup(_lab(args, console), Path(args.to) if args.to else None, with_images=not args.without_images)
    console.print(
        f"backup written: {result.folder} ({result.files} files, {result.volumes} volumes, {result.images} images, "
        f"{result.size_bytes / 2**20:.0f} MiB)",
        markup=False,
    )
    return 0


def _restore(args: argparse.Namespace, console: Console) -> int:
    from ..deploy.backup import restore_backup

    lab = restore_backup(
        Path(args.backup), site_path=Path(args.site) if args.site else None, progress=Progress(Console(stderr=True))
    )
    _print_states(console, lab.swarm.states())
    console.print(f"restored from {args.backup}: {lab.site.public_url}", markup=False)
    return 0


def _upgrade(args: argparse.Namespace, console: Console) -> int:
    from ..deploy.upgrade import upgrade

    result = upgrade(_lab(args, console))
    for database, (before, after) in result.revisions.items():
        console.print(f"{database}: {before or 'new'} -> {after}", markup=False)
    console.print(
        f"hub: {result.old_image} -> {result.new_image}; students' servers still running: {result.servers_kept}", markup=False
    )
    return 0


def _archive_course(args: argparse.Namespace, console: Console) -> int:
    from ..deploy.endofterm import archive_course

    result = archive_course(_lab(args, console), args.course, with_data=args.with_data)
    console.print(
        f"{result.course}: {result.work_volumes} work volume(s)"
        + (f" and {result.data_volumes} data volume(s)" if args.with_data else "")
        + f" archived to {result.folder} and deleted; the archive is kept until {result.delete_after}",
        markup=False,
    )
    console.print(result.line, markup=False)
    return 0


def _prune_archives(args: argparse.Namespace, console: Console) -> int:
    from ..deploy.endofterm import prune_archives

    lines = prune_archives(_lab(args, console))
    for line in lines:
        console.print(line, markup=False)
    console.print(f"{len(lines)} expired course archive(s) deleted", markup=False)
    return 0


def _erase_person(args: argparse.Namespace, console: Console) -> int:
    from ..core.problems import TeachlabError
    from ..deploy.erase import erase_person

    if args.username != args.confirm:
        raise TeachlabError(f"to erase {args.username}, repeat the name: --confirm {args.username}")
    result = erase_person(_lab(args, console), args.username)
    console.print(", ".join(f"{name}: {count}" for name, count in result.counts.items()), markup=False)
    console.print(result.line, markup=False)
    return 0


def _node_certificates(args: argparse.Namespace, console: Console) -> int:
    import ipaddress

    from ..core.problems import TeachlabError
    from ..deploy.certificates import NodeCertificates
    from ..deploy.site import load_site

    site = load_site(_site_path(args))
    if site.swarm is None:
        raise TeachlabError(f"{site.path} has no swarm section: add one first (docs/admins.md, Adding machines)")
    for address in args.addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise TeachlabError(f"{address} is not an address: give each node's address in the swarm (docker node inspect)")
    certificates = NodeCertificates(site.node_certificates_dir).ensure(site.swarm.manager_address)
    for address in args.addresses:
        node = certificates.write_node(address, engine_port=site.swarm.engine_port, registry=site.swarm.registry_address)
        console.print(f"{address}: copy {node.tree} onto the node (see {node.folder / 'README.txt'})", markup=False)
    console.print(
        f"the hub's client certificate for teachlab nodes: DOCKER_CERT_PATH={certificates.docker_cli_folder}", markup=False
    )
    return 0


def _site_docs(args: argparse.Namespace, console: Console) -> int:
    from ..deploy.docs import render_site_yaml_reference

    Path(args.output).write_text(render_site_yaml_reference())
    console.print(f"wrote {args.output}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    deploy = commands.add_parser("deploy", help="the production lab on this server: build, up, status, backups, upgrades")
    actions = deploy.add_subparsers(dest="deploy_command", required=True, metavar="ACTION")

    def action(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("--site", help="the site file (default: $TEACHLAB_SITE_FILE or /etc/teachlab/site.yaml)")
        parser.set_defaults(handler=handler)
        return parser

    action("validate", "check the site file: one line per problem", _validate)
    action("build", "build the stack's images from the offline root filesystem", _build)
    action("up", "deploy (or update) the stack and wait until every service is healthy", _up)
    action("status", "the stack's services, students' servers, the certificate", _status)
    down = action("down", "stop every server and remove the stack (volumes, databases, secrets stay)", _down)
    down.add_argument("--keep-servers", action="store_true", help="leave students' servers running")
    backup = action("backup", "write a backup of the whole lab", _backup)
    backup.add_argument("--to", help="folder to write it in (default: the site file's paths.backups)")
    backup.add_argument("--without-images", action="store_true", help="leave out the course images (their locks stay)")
    restore = action("restore", "put a backup back onto an empty server", _restore)
    restore.add_argument("backup", help="the backup's folder (teachlab-<time>)")
    action("upgrade", "migrate the databases and roll the hub to the images just built; servers keep running", _upgrade)
    archive = action("archive-course", "after a course's term: archive then delete its students' work", _archive_course)
    archive.add_argument("course", help="the course's slug")
    archive.add_argument("--with-data", action="store_true", help="archive and delete the course's data volumes too")
    action("prune-archives", "delete course archives whose keeping time is over", _prune_archives)
    erase = action("erase-person", "erase a person: servers, work, SSH keys, GPU and hub records, archives", _erase_person)
    erase.add_argument("username")
    erase.add_argument("--confirm", required=True, metavar="USERNAME", help="the same username again")
    nodes = action(
        "node-certificates", "on a swarm: the lab's node CA and each node's engine certificate and settings", _node_certificates
    )
    nodes.add_argument("addresses", nargs="+", metavar="ADDRESS", help="a node's address in the swarm")
    docs = actions.add_parser("site-docs", help="write the site file reference from its JSON Schema")
    docs.add_argument("--output", default="docs/site-yaml.md", help="where to write (default: docs/site-yaml.md)")
    docs.set_defaults(handler=_site_docs)
