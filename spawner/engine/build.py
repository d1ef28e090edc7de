"""Image builds on the engine: byte-identical build contexts and a streamed, summarised build log."""

from __future__ import annotations

import io
import re
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

from ..core.problems import TeachlabError

_PIP_CAUSE = re.compile(
    r"^(ERROR: (?!Ignored the following).*|The conflict is caused by:|\s{4}\S.*depends on .*|\s{4}The user requested .*)$"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BuildFailed(TeachlabError):
    """A ``docker build`` failed; the message is the cause, the full log stays in ``log_path``."""

    def __init__(self, cause: str, log_path: Path | None):
        self.cause = cause
        self.log_path = log_path
        where = f" (full log: {log_path})" if log_path else ""
        super().__init__(f"{cause}{where}")


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
    target: str | None = None,
    network_mode: str | None = None,
    no_cache: bool = False,
    build_arguments: Mapping[str, str] | None = None,
    container_limits: Mapping[str, int] | None = None,
    time_limit_seconds: float | None = None,
) -> str:
    """Build with the classic builder, stream the log to ``log_path``; return the image ID. ``no_cache``
    runs every step again (a rebuild from locks must prove itself, not reuse layers).

    ``network_mode``, ``build_arguments`` and ``container_limits`` apply to every ``RUN`` step. Past
    ``time_limit_seconds`` the build is abandoned: the connection closes and the engine cancels the build
    and removes its step's container (a step that prints nothing is cut when a read waits that long)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    image_id: str | None = None
    deadline = None if time_limit_seconds is None else time.monotonic() + time_limit_seconds
    too_long = f"the build ran longer than its limit of {time_limit_seconds or 0:.0f} s and was stopped"
    with log_path.open("w", encoding="utf-8") as log:
        try:
            stream = client.api.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                labels=dict(labels),
                rm=True,
                forcerm=True,
                decode=True,
                target=target,
                network_mode=network_mode,
                nocache=no_cache,
                buildargs=dict(build_arguments) if build_arguments else None,
                container_limits=dict(container_limits) if container_limits else None,
                timeout=time_limit_seconds,
            )
            for chunk in stream:
                if deadline is not None and time.monotonic() > deadline:
                    stream.close()
                    log.write(too_long + "\n")
                    raise BuildFailed(too_long, log_path)
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
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, TimeoutError):
            if deadline is None:
                raise
            log.write(too_long + "\n")
            raise BuildFailed(too_long, log_path) from None
    if image_id is None:
        image_id = client.images.get(tag).id
    return image_id
