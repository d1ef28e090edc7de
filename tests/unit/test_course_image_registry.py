"""Course images in the stack's registry (issue 14): the names a version gets there, the digest it is recorded by, the
setting, and publishing with a push that fails (no Docker: a stand-in engine answers the push; tests/cluster pushes to
the real registry on a swarm's manager)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import docker.errors
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from spawner.catalog import load_catalog
from spawner.core import naming
from spawner.core.problems import TeachlabError
from spawner.deploy.images import REGISTRY, STACK_IMAGE_NAMES, build_context
from spawner.deploy.stack import REGISTRY_STORAGE
from spawner.images import publish
from spawner.images.contents import ImageContents
from spawner.images.distribution import PushFailed, pull_stream_events, push_version, pushed_digest, stream_error
from spawner.images.registry import CourseVersion, VersionRegistry
from spawner.images.settings import BUILD_VARIABLES, BuildSettings
from support.catalogs import copy_course

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        pytest.param("10.0.0.2:5000", True, id="address-and-port"),
        pytest.param("registry.lab.example:443", True, id="host-and-port"),
        pytest.param("registry:5000", True, id="short-host"),
        pytest.param("10.0.0.2", False, id="no-port"),
        pytest.param("https://10.0.0.2:5000", False, id="scheme"),
        pytest.param("10.0.0.2:5000/teachlab", False, id="path"),
        pytest.param("Registry:5000", False, id="uppercase"),
        pytest.param("10.0.0.2:0", False, id="port-zero"),
        pytest.param("10.0.0.2:70000", False, id="port-too-big"),
        pytest.param("-bad:5000", False, id="leading-dash"),
    ],
)
def test_a_registry_address_is_host_and_port(address, valid):
    assert naming.is_registry_address(address) is valid


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        pytest.param("10.0.0.2:5000/t/course-c1:v3", f"10.0.0.2:5000/t/course-c1@{DIGEST}", id="tag-dropped"),
        pytest.param("10.0.0.2:5000/t/course-c1", f"10.0.0.2:5000/t/course-c1@{DIGEST}", id="no-tag"),
        pytest.param(f"10.0.0.2:5000/t/course-c1@sha256:{'f' * 64}", f"10.0.0.2:5000/t/course-c1@{DIGEST}", id="re-pinned"),
        pytest.param("t/course-c1:v1", f"t/course-c1@{DIGEST}", id="no-registry"),
    ],
)
def test_a_digest_reference_keeps_the_repository_and_drops_the_tag(reference, expected):
    assert naming.digest_reference(reference, DIGEST) == expected
    assert naming.is_digest_reference(expected)


def test_names_refuse_what_is_not_an_address_or_a_digest():
    assert naming.registry_course_image("10.0.0.2:5000", "intro-python", "v3", "teachlab") == (
        "10.0.0.2:5000/teachlab/course-intro-python:v3"
    )
    with pytest.raises(ValueError, match="not a registry address"):
        naming.registry_course_image("10.0.0.2", "intro-python", "v3")
    with pytest.raises(ValueError, match="not a sha256 digest"):
        naming.digest_reference("10.0.0.2:5000/t/course-c1:v1", "sha256:abc")
    assert not naming.is_digest_reference("10.0.0.2:5000/t/course-c1:v1")
    assert not naming.is_digest_reference(f"@{DIGEST}")


@given(
    slug=st.from_regex(naming.COURSE_SLUG_PATTERN, fullmatch=True),
    version=st.integers(min_value=1, max_value=10**6).map(naming.version_tag),
    port=st.integers(min_value=1, max_value=65535),
    digest=st.text("0123456789abcdef", min_size=64, max_size=64),
)
def test_every_pushed_version_has_one_digest_reference_in_its_repository(slug, version, port, digest):
    pushed = naming.registry_course_image(f"10.0.0.2:{port}", slug, version, "teachlab")
    pinned = naming.digest_reference(pushed, f"sha256:{digest}")
    assert pinned == f"10.0.0.2:{port}/teachlab/course-{slug}@sha256:{digest}"
    assert naming.is_digest_reference(pinned) and not naming.is_digest_reference(pushed)


def _version(tag: str, **changes) -> CourseVersion:
    fields = dict(
        version=tag,
        image=f"teachlab/course-c1:{tag}",
        image_id=f"sha256:{tag}",
        environment_hash=tag,
        created="2026-11-29T12:00:00+00:00",
        size_bytes=1,
        base_image="b",
        flavor="debian-py39",
    )
    return CourseVersion(**{**fields, **changes})


def test_the_registry_image_is_kept_and_records_written_before_it_existed_still_load(tmp_path):
    registry = VersionRegistry(tmp_path)
    registry.add_current("c1", _version("v1"), "")
    registry.add_current("c1", _version("v2", registry_image=f"10.0.0.2:5000/teachlab/course-c1@{DIGEST}"), "")
    assert registry.read("c1").version("v2").registry_image == f"10.0.0.2:5000/teachlab/course-c1@{DIGEST}"
    # A record written by an earlier release: no registry_image key at all.
    data = json.loads((tmp_path / "c1.json").read_text())
    for entry in data["versions"]:
        entry.pop("registry_image")
    (tmp_path / "c1.json").write_text(json.dumps(data))
    assert [v.registry_image for v in registry.read("c1").versions] == [None, None]
    updated = registry.record_registry_image("c1", "v1", f"10.0.0.2:5000/teachlab/course-c1@{DIGEST}")
    assert updated.current == "v2" and registry.read("c1").version("v1").registry_image.endswith(DIGEST)
    with pytest.raises(TeachlabError, match="has no version v9"):
        registry.record_registry_image("c1", "v9", "x")


def test_the_registry_setting_comes_from_the_environment_and_a_wrong_one_says_how_to_fix_it(tmp_path):
    environ = {"TEACHLAB_STATE_DIR": str(tmp_path)}
    assert BuildSettings.from_environment(environ).registry_address is None  # default: a single server, no push
    settings = BuildSettings.from_environment(
        {**environ, "TEACHLAB_REGISTRY": "10.0.0.2:5000", "TEACHLAB_REGISTRY_PUSH_ADDRESS": "127.0.0.1:5000"}
    )
    assert (settings.registry_address, settings.registry_push_address) == ("10.0.0.2:5000", "127.0.0.1:5000")
    assert {"TEACHLAB_REGISTRY", "TEACHLAB_REGISTRY_PUSH_ADDRESS"} <= set(BUILD_VARIABLES)  # the courses service too
    with pytest.raises(TeachlabError, match=r"registry address 'https://10.0.0.2:5000' is not host:port .* TEACHLAB_REGISTRY"):
        BuildSettings.from_environment({**environ, "TEACHLAB_REGISTRY": "https://10.0.0.2:5000"})
    with pytest.raises(TeachlabError, match="TEACHLAB_REGISTRY_PUSH_ADDRESS is set without TEACHLAB_REGISTRY"):
        BuildSettings.from_environment({**environ, "TEACHLAB_REGISTRY_PUSH_ADDRESS": "127.0.0.1:5000"})


def test_the_push_streams_digest_and_first_error():
    events = [{"status": "Pushed", "id": "a1"}, {"progressDetail": {}, "aux": {"Tag": "v1", "Digest": DIGEST, "Size": 9}}]
    assert pushed_digest(events) == DIGEST
    failing = [{"status": "Preparing"}, {"errorDetail": {"message": "x509: certificate signed by unknown authority\nmore"}}]
    with pytest.raises(PushFailed, match=r"^x509: certificate signed by unknown authority$"):
        pushed_digest(failing)
    with pytest.raises(PushFailed, match="ended without the manifest's digest"):
        pushed_digest([{"status": "Pushed"}])
    pulled = pull_stream_events('{"status":"Pulling"}\nnot json\n{"error":"manifest unknown"}\n')
    assert stream_error(pulled) == "manifest unknown" and stream_error(pulled[:1]) is None


class StandInEngine:
    """docker-py's ``client.api`` for a push: records tags and removals; the push answers ``push_events`` (or raises
    ``push_error``)."""

    def __init__(self, push_events=(), push_error=None):
        self.push_events = list(push_events)
        self.push_error = push_error
        self.tags: list[str] = []
        self.pushed: list[tuple[str, str]] = []
        self.removed: list[str] = []
        self.api = self

    def tag(self, image, repository, tag):
        self.tags.append(f"{repository}:{tag}")

    def push(self, repository, tag, stream, decode):
        assert stream and decode
        self.pushed.append((repository, tag))
        if self.push_error is not None:
            raise self.push_error
        return iter(self.push_events)

    def remove_image(self, reference, noprune):
        assert noprune
        self.removed.append(reference)


SETTINGS = dict(image_namespace="teachlab", registry_address="10.0.0.2:5000", registry_push_address="127.0.0.1:5000")


def test_a_push_goes_through_this_engines_route_and_is_recorded_under_the_nodes_address(tmp_path):
    engine = StandInEngine([{"aux": {"Digest": DIGEST}}])
    settings = BuildSettings(state_dir=tmp_path, **SETTINGS)
    reference = push_version(engine, image_id="sha256:1", slug="c1", version="v2", settings=settings)
    assert reference == f"10.0.0.2:5000/teachlab/course-c1@{DIGEST}"
    assert engine.tags == ["127.0.0.1:5000/teachlab/course-c1:v2"] and engine.pushed == [
        ("127.0.0.1:5000/teachlab/course-c1", "v2")
    ]
    assert engine.removed == ["127.0.0.1:5000/teachlab/course-c1:v2"]  # the registry's name does not stay here


@pytest.mark.parametrize(
    ("engine", "reason"),
    [
        pytest.param(StandInEngine([{"error": "unauthorized: authentication required"}]), "unauthorized", id="stream-error"),
        pytest.param(
            StandInEngine(push_error=docker.errors.APIError('500 Server Error: Internal Server Error ("connection refused")')),
            "connection refused",
            id="engine-error",
        ),
    ],
)
def test_a_failed_push_is_one_line_that_says_nothing_was_recorded(tmp_path, engine, reason):
    settings = BuildSettings(state_dir=tmp_path, **SETTINGS)
    with pytest.raises(PushFailed) as failed:
        push_version(engine, image_id="sha256:1", slug="c1", version="v2", settings=settings)
    message = str(failed.value)
    assert "\n" not in message and reason in message
    assert message.startswith("pushing c1 v2 to the registry 10.0.0.2:5000 (through 127.0.0.1:5000) failed: ")
    assert "the current version stays as it was" in message and "/etc/docker/certs.d/127.0.0.1:5000/ca.crt" in message
    assert engine.removed == ["127.0.0.1:5000/teachlab/course-c1:v2"]


CONTENTS = ImageContents("3.11.2", "3.9.2", {"jupyter-server": "2.21.1"}, {"numpy": "1.26.4"}, {"bash": "5.2.15-2+b7"})


class StandInBuilder:
    """``ImageBuilder`` for publish's steps: a candidate per environment hash, and the version's tag."""

    environment_hash = "env-1"

    def __init__(self, settings, progress, client, confinement=None):
        self.settings = settings

    def build_course(self, course):
        return SimpleNamespace(
            slug=course.slug,
            image_id=f"sha256:candidate-{self.environment_hash}",
            environment_hash=self.environment_hash,
            top_level_distributions=("numpy",),
            base_image="teachlab/debian-py39:v1",
            flavor=SimpleNamespace(name="debian-py39", environment_builder="venv"),
        )

    def tag_version(self, candidate, version, labels):
        return f"{self.settings.image_namespace}/course-{candidate.slug}:{version}", f"sha256:{version}"


@pytest.fixture
def publishing(tmp_path, repo_root, monkeypatch):
    """publish_course with every Docker step stood in but the push, which each test gives."""
    copy_course(repo_root, "intro-python", tmp_path / "catalog")
    course = load_catalog(tmp_path / "catalog").courses["intro-python"]
    monkeypatch.setattr(publish, "ImageBuilder", StandInBuilder)
    monkeypatch.setattr(
        publish, "run_smoke_test", lambda *a, **k: SimpleNamespace(python="3.9.2", default_kernel_title="Python 3.9", imports=())
    )
    monkeypatch.setattr(publish, "read_contents", lambda *a, **k: CONTENTS)
    monkeypatch.setattr(publish, "scan_debian_with_trivy", lambda *a, **k: None)
    monkeypatch.setattr(publish, "_read_file", lambda *a, **k: "jupyter-server==2.21.1\n")
    monkeypatch.setattr(publish, "read_lock", lambda *a, **k: "numpy==1.26.4\n")
    monkeypatch.setattr(publish, "write_sbom", lambda image, path: Path(path).write_text("{}"))
    client = SimpleNamespace(images=SimpleNamespace(get=lambda image_id: SimpleNamespace(attrs={"Size": 7})))
    settings = BuildSettings(state_dir=tmp_path / "state", **SETTINGS)
    return course, settings, client


def test_a_publish_whose_push_fails_keeps_the_previous_version_current_and_records_nothing_of_the_new_one(
    publishing, monkeypatch
):
    course, settings, client = publishing
    pushes = []

    def push(client, *, image_id, slug, version, settings):
        pushes.append((image_id, slug, version))
        if version == "v2":
            raise PushFailed(f"pushing {slug} {version} to the registry {settings.registry_address} failed: stand-in")
        return f"10.0.0.2:5000/teachlab/course-{slug}@{DIGEST}"

    monkeypatch.setattr(publish, "push_version", push)
    first = publish.publish_course(course, settings=settings, client=client, actor="prof-lee")
    assert (first.version, first.outcome, first.registry_image) == (
        "v1",
        "published",
        f"10.0.0.2:5000/teachlab/course-intro-python@{DIGEST}",
    )
    registry = VersionRegistry(settings.registry_dir)
    assert registry.current_image("intro-python").registry_image == first.registry_image
    monkeypatch.setattr(StandInBuilder, "environment_hash", "env-2")  # a changed environment: a new version
    with pytest.raises(PushFailed, match=r"pushing intro-python v2 to the registry 10\.0\.0\.2:5000 failed"):
        publish.publish_course(course, settings=settings, client=client, actor="prof-lee")
    record = registry.read("intro-python")
    assert record.current == "v1" and [v.version for v in record.versions] == ["v1"]
    assert not registry.has_file("intro-python", "v2", "course") and not registry.has_file("intro-python", "v2", "sbom")
    assert (record.history[-1].outcome, record.history[-1].to_version) == ("failed", None)
    assert record.history[-1].detail.startswith("pushing intro-python v2 to the registry")
    assert pushes == [("sha256:v1", "intro-python", "v1"), ("sha256:v2", "intro-python", "v2")]


def test_a_version_published_before_the_lab_had_a_registry_is_pushed_when_published_again(publishing, monkeypatch):
    course, settings, client = publishing
    monkeypatch.setattr(publish, "_image_present", lambda client, image_id: True)
    without = BuildSettings(state_dir=settings.state_dir)  # no registry yet
    monkeypatch.setattr(publish, "push_version", lambda *a, **k: pytest.fail("no registry: no push"))
    assert publish.publish_course(course, settings=without, client=client).registry_image is None
    monkeypatch.setattr(publish, "push_version", lambda client, **k: f"10.0.0.2:5000/teachlab/course-{k['slug']}@{DIGEST}")
    again = publish.publish_course(course, settings=settings, client=client)
    assert (again.outcome, again.version) == ("unchanged", "v1")
    assert again.registry_image == f"10.0.0.2:5000/teachlab/course-intro-python@{DIGEST}"
    assert VersionRegistry(settings.registry_dir).current_image("intro-python").registry_image == again.registry_image


def test_the_registry_recipe_serves_tls_only_with_files_given_at_run_time_and_keeps_images_on_the_volume(tmp_path):
    context = build_context(REGISTRY, "teachlab/rootfs:1", "teachlab/stack-base:1", {})
    dockerfile = context["Dockerfile"].decode()
    assert "FROM teachlab/stack-base:1" in dockerfile and "--no-install-recommends docker-registry" in dockerfile
    config = yaml.safe_load(context["config.yml"])
    assert config["http"]["tls"] == {
        "certificate": "/run/teachlab-registry/certificate.pem",
        "key": "/run/teachlab-registry/key.pem",
    }
    assert config["storage"]["filesystem"]["rootdirectory"] == REGISTRY_STORAGE  # the stack's volume is mounted there
    assert REGISTRY not in STACK_IMAGE_NAMES  # a single server's stack has no registry; a swarm's (with_registry) has
    # Without a certificate and key the start script stops before it does anything, saying what to set.
    script = tmp_path / "teachlab-registry.sh"
    script.write_bytes(context["teachlab-registry.sh"])
    refused = subprocess.run(["sh", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, check=False)
    assert refused.returncode != 0 and "set TEACHLAB_REGISTRY_CERTIFICATE" in refused.stderr
    refused = subprocess.run(
        ["sh", str(script)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TEACHLAB_REGISTRY_CERTIFICATE": "/nonexistent"},
        check=False,
    )
    assert refused.returncode != 0 and "set TEACHLAB_REGISTRY_KEY" in refused.stderr
