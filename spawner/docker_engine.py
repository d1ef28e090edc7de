"""The few docker-py calls the CLI needs, with failures turned into one-line messages."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import docker
import docker.errors

from .problems import TeachlabError

_PIP_CAUSE = re.compile(r"^(ERROR: (?!Ignored the following).*|The conflict is caused by:|\s{4}\S.*depends on .*|\s{4}The user requested .*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DockerUnavailable(TeachlabError):
    pass


class BuildFailed(TeachlabError):
    """A ``docker build`` failed; the message is the cause, the full log stays in ``log_path``."""

    def __init__(self, cause: str, log_path: Optional[Path]):
        self.cause = cause
        self.log_path = log_path
        where = f" (full log: {log_path})" if log_path else ""
        super().__init__(f"{cause}{where}")


def connect() -> docker.DockerClient:
    """A client for the local engine, or a DockerUnavailable that says how to start it."""
    try:
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except (docker.errors.DockerException, OSError) as exc:
        reason = str(exc).splitlines()[0][:160]
        raise DockerUnavailable(
            f"Docker is not running or not reachable ({reason}); start it with deploy/bin/ensure-docker or 'make setup'"
        ) from None


def tar_context(files: Mapping[str, bytes | str]) -> io.BytesIO:
    """An in-memory build context; files keep fixed metadata so equal contexts are byte-identical."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in sorted(files):
            data = files[name].encode("utf-8") if isinstance(files[name], str) else files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def summarize_build_failure(log_lines: Iterable[str], error: str) -> str:
    """The cause of a failed build in a few lines: pip's ERROR lines and conflict explanation if any."""
    pip_lines = [line.rstrip() for line in log_lines if _PIP_CAUSE.match(line.rstrip())]
    unique = list(dict.fromkeys(line.strip().removeprefix("ERROR: ") for line in pip_lines))
    if unique:
        return "; ".join(unique[:6])
    return error.strip().splitlines()[-1] if error.strip() else "docker build failed"


def build_image(
    client: docker.DockerClient,
    *,
    context: io.BytesIO,
    tag: str,
    labels: Mapping[str, str],
    log_path: Path,
    on_line: Callable[[str], None] = lambda line: None,
    target: Optional[str] = None,
    network_mode: Optional[str] = None,
) -> str:
    """Build with the classic builder, stream the log to ``log_path``; return the image ID."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    image_id: Optional[str] = None
    with log_path.open("w", encoding="utf-8") as log:
        try:
            stream = client.api.build(
                fileobj=context, custom_context=True, tag=tag, labels=dict(labels), rm=True, forcerm=True,
                decode=True, target=target, network_mode=network_mode,
            )
            for chunk in stream:
                if "stream" in chunk:
                    for line in _ANSI.sub("", chunk["stream"]).splitlines():
                        log.write(line + "\n")
                        lines.append(line)
                        if line.strip():
                            on_line(line.strip())
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk:
                    log.write(chunk["error"] + "\n")
                    raise BuildFailed(summarize_build_failure(lines, chunk["error"]), log_path)
        except docker.errors.APIError as exc:
            raise BuildFailed(str(exc.explanation or exc), log_path) from None
    if image_id is None:
        image_id = client.images.get(tag).id
    return image_id
