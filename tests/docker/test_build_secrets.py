"""Mirror credentials stay in the build: a pip index with a password never reaches the course image.

The build stage reads the mirror's settings from ``/tmp/teachlab-build/pip.conf``; the final stage copies
only the course's environment. A file deleted in a later layer would still sit in an earlier one, so the
check reads every layer of ``docker save`` (each file's bytes), the image's configuration and its history.
"""

from __future__ import annotations

import base64
import secrets
import tarfile
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest
from pip._internal.models.index import PyPI

from spawner.catalog import load_course
from spawner.engine.build import build_image, tar_context
from spawner.images.build import ImageBuilder
from spawner.images.plan import render_course_context
from support.catalogs import copy_course

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("print_container_logs_on_failure")]


def places_holding(docker_client, image: str, needles: list[bytes], folder: Path) -> list[str]:
    """Where in the image's ``docker save`` archive a needle occurs: 'LAYER:FILE' inside layers, else the member."""
    archive_path = folder / "saved.tar"
    with archive_path.open("wb") as out:
        for chunk in docker_client.images.get(image).save(named=False):
            out.write(chunk)
    found = []
    with tarfile.open(archive_path) as archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            stream = archive.extractfile(member)
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=stream, mode="r|") as layer:
                    for entry in layer:
                        content = layer.extractfile(entry).read() if entry.isfile() else entry.linkname.encode()
                        if any(needle in content or needle in entry.name.encode() for needle in needles):
                            found.append(f"{member.name}:{entry.name}")
            elif any(needle in stream.read() for needle in needles):
                found.append(member.name)
    archive_path.unlink()
    return found


def test_a_pip_mirror_password_never_reaches_a_layer_of_the_course_image(
    docker_client, build_settings, base_image, repo_root, tmp_path
):
    """The build uses an index URL with a (fake) password; the course image holds it nowhere. The build
    stage, searched the same way, does hold it: the search finds what is there."""
    password = f"teachlab-fake-mirror-secret-{secrets.token_hex(8)}"
    user = "teachlab-reader"
    index_url = f"https://{user}:{quote(password)}@{PyPI.netloc}/simple"
    needles = [password.encode(), base64.b64encode(f"{user}:{password}".encode())]
    settings = replace(build_settings, pip_index_url=index_url, pip_extra_index_urls=())
    builder = ImageBuilder(settings, client=docker_client)
    course = load_course(copy_course(repo_root, "intro-python", tmp_path / "catalog", new_slug="mirror-secret"))

    candidate = builder.build_course(course)

    leaks = places_holding(docker_client, candidate.image_id, needles, tmp_path)
    history = docker_client.api.history(candidate.image_id)
    config = docker_client.api.inspect_image(candidate.image_id)
    assert leaks == []
    assert not any(password in (step.get("CreatedBy") or "") for step in history)
    assert password not in repr(config)

    flavor = builder.flavor(course.image_flavor)
    plan = render_course_context(
        course,
        flavor,
        base_image=base_image,
        base_image_id=docker_client.images.get(base_image).id,
        constraints=settings.constraints_file.read_text(),
        pip=builder.pip_settings(),
    )
    control_tag = f"{settings.image_namespace}/mirror-secret-build-stage:control"
    build_stage = build_image(
        docker_client,
        context=tar_context(plan.files),
        tag=control_tag,
        labels=settings.labels,
        log_path=tmp_path / "build-stage.log",
        target="build",
    )
    try:
        assert any(
            place.endswith("tmp/teachlab-build/pip.conf")
            for place in places_holding(docker_client, build_stage, needles, tmp_path)
        )
    finally:
        docker_client.images.remove(control_tag, force=True)
