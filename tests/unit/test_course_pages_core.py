"""teachlab-courses without a hub or Docker: a candidate environment.yml is checked as `teachlab course
validate` checks it, the catalog's file is replaced whole, one publish per course at a time, the log keeps
every line, the class list, and the roles and scopes that decide who sees which course."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

from spawner.catalog import load_catalog, load_course
from spawner.core.contract import Scopes
from spawner.core.problems import ProblemsError, TeachlabError
from spawner.hub.roles import all_roles, course_custom_scopes, oauth_client_scopes
from spawner.images.registry import CourseRecord, CourseVersion, HistoryEntry
from spawner.services.classlist import class_rows
from spawner.services.publishing import (
    MAX_ENVIRONMENT_BYTES,
    JobProgress,
    PublishBusy,
    PublishJob,
    PublishJobs,
    check_candidate,
    history_rows,
    version_rows,
    write_environment,
)
from support.catalogs import copy_course

REPO = Path(__file__).resolve().parents[2]
BROKEN = REPO / "tests" / "broken_catalogs"
# Broken catalogs whose course.yaml is fine: their problem is in environment.yml, so a candidate shows it.
ENVIRONMENT_PROBLEMS = [
    "bad-match-spec",
    "no-python-pin",
    "pip-not-a-list",
    "second-pip-list",
    "two-python-pins",
    "unknown-environment-key",
]


@pytest.fixture
def catalog(tmp_path):
    folder = tmp_path / "course_envs"
    copy_course(REPO, "intro-python", folder)
    return folder


@pytest.mark.parametrize("case", ENVIRONMENT_PROBLEMS)
def test_a_candidate_shows_the_same_one_line_problems_as_teachlab_course_validate(case, catalog, tmp_path):
    broken = BROKEN / case / "intro-python"
    if (
        not (broken / "environment.yml").exists()
        or (BROKEN / case / "intro-python" / "course.yaml").read_text()
        != (REPO / "course_envs" / "intro-python" / "course.yaml").read_text()
    ):
        pytest.skip(f"{case} also changes course.yaml")
    with pytest.raises(ProblemsError) as validate:  # what `teachlab course validate course_envs/intro-python` prints
        shutil.copyfile(broken / "environment.yml", catalog / "intro-python" / "environment.yml")
        load_catalog(catalog)
    (catalog / "intro-python" / "environment.yml").write_text(
        (REPO / "course_envs" / "intro-python" / "environment.yml").read_text()
    )
    with pytest.raises(ProblemsError) as candidate:
        check_candidate(catalog, "intro-python", (broken / "environment.yml").read_text(), tmp_path / "work")
    relative = [str(problem).replace(str(catalog.parent) + "/", "") for problem in validate.value.problems]
    assert [str(problem) for problem in candidate.value.problems] == relative
    assert all(line.startswith("course_envs/intro-python/environment.yml:") for line in relative)


def test_a_valid_candidate_is_the_course_with_its_environment_and_the_catalog_is_untouched(catalog, tmp_path):
    text = (catalog / "intro-python" / "environment.yml").read_text().replace("  - pip\n", "  - pip\n  - pip: [toolz==1.0.0]\n")
    course = check_candidate(catalog, "intro-python", text, tmp_path / "work")
    assert course.slug == "intro-python" and course.environment.pip_requirements == ("toolz==1.0.0",)
    assert "toolz" not in (catalog / "intro-python" / "environment.yml").read_text()


def test_an_oversized_candidate_is_refused_before_it_is_read(catalog, tmp_path):
    with pytest.raises(TeachlabError, match="larger than 64 KiB"):
        check_candidate(catalog, "intro-python", "#" * (MAX_ENVIRONMENT_BYTES + 1), tmp_path / "work")


def test_the_catalogs_environment_is_replaced_whole_and_leaves_no_temporary_file(catalog):
    folder = catalog / "intro-python"
    stop, seen = threading.Event(), set()

    def read_forever():
        while not stop.is_set():
            seen.add((folder / "environment.yml").read_text())

    reader = threading.Thread(target=read_forever)
    reader.start()
    texts = ["name: a\n" * 2000, "name: b\n" * 3000]
    for index in range(100):
        write_environment(folder, texts[index % 2])
    stop.set()
    reader.join()
    assert seen <= {*texts, (REPO / "course_envs" / "intro-python" / "environment.yml").read_text()}
    assert sorted(p.name for p in folder.iterdir()) == ["course.yaml", "environment.yml"]


def test_one_publish_per_course_at_a_time_and_its_log_keeps_every_line():
    async def scenario():
        jobs = PublishJobs()
        gate = threading.Event()

        def work(progress: JobProgress):
            with progress.step("build intro-python environment"):
                progress.detail("Step 1/6 : FROM base")
                gate.wait(5)
            progress.info("smoke test passed")
            return {"version": "v2"}

        job = jobs.start("intro-python", "lena", work)
        with pytest.raises(PublishBusy, match=r"^a publish of intro-python by lena is running since \d\d:\d\d:\d\d UTC; wait"):
            jobs.start("intro-python", "ada", work)
        other = jobs.start("data-analysis", "ada", lambda progress: {"version": "v1"})  # another course is not held up
        await other.task
        gate.set()
        await job.task
        assert (job.state, job.result) == ("succeeded", {"version": "v2"})
        assert job.lines == [
            "... build intro-python environment",
            "Step 1/6 : FROM base",
            "ok: build intro-python environment",
            "smoke test passed",
        ]
        assert jobs.running == {} and jobs.latest["intro-python"] is job
        again = jobs.start("intro-python", "lena", lambda progress: (_ for _ in ()).throw(TeachlabError("pip: no such package")))
        await again.task
        assert (again.state, again.error) == ("failed", "pip: no such package")

    asyncio.run(scenario())


def test_a_follower_wakes_when_a_line_arrives_from_the_publish_thread():
    async def scenario():
        job = PublishJob(id="0" * 16, course="c", actor="a", started_at=None)
        loop = asyncio.get_running_loop()
        progress = JobProgress(job, lambda: loop.call_soon_threadsafe(job.wake))
        waiting = asyncio.ensure_future(job.changed(10))
        await asyncio.sleep(0)
        threading.Thread(target=progress.info, args=("hello",)).start()
        await asyncio.wait_for(waiting, 5)
        assert job.lines == ["hello"]

    asyncio.run(scenario())


def _version(tag: str, created: str, by: str | None) -> CourseVersion:
    return CourseVersion(
        tag,
        f"i:{tag}",
        f"sha256:{tag}",
        f"{tag}hash" * 4,
        created,
        812_300_000,
        "b",
        "debian-py39",
        kernel_python="3.9.2",
        published_by=by,
    )


def test_versions_newest_first_with_the_current_one_marked_and_the_history_newest_first():
    record = CourseRecord(
        "c",
        "v1",
        (_version("v1", "2026-11-01T10:00:00+00:00", "admin"), _version("v2", "2026-11-02T10:00:00+00:00", "lena")),
        (
            HistoryEntry("t1", "lena", "publish", "v1", "v2", "published"),
            HistoryEntry("t2", "ada", "rollback", "v2", "v1", "rolled back"),
        ),
    )
    rows = version_rows(record)
    assert [(r["version"], r["current"], r["published_by"], r["size_mb"]) for r in rows] == [
        ("v2", False, "lena", 812.3),
        ("v1", True, "admin", 812.3),
    ]
    assert rows[0]["environment_hash"] == "v2hashv2hash" and "not scanned" in rows[0]["scan"]
    assert [row["actor"] for row in history_rows(record)] == ["ada", "lena"]


def test_the_class_lists_groups_and_listed_users_with_their_servers(tmp_path):
    copy_course(REPO, "intro-python", tmp_path, students={"groups": ["cs101-students"], "users": ["olga", "ivy"]})
    course = load_course(tmp_path / "intro-python")
    users = [
        {
            "name": "nora",
            "groups": ["cs101-students"],
            "servers": {
                "intro-python": {"ready": True, "started": "2026-11-29T09:00:00Z", "last_activity": "2026-11-29T09:30:00Z"}
            },
        },
        {"name": "bob", "groups": ["cs101-students"], "servers": {"intro-python": {"ready": False, "pending": "spawn"}}},
        {"name": "ivy", "groups": [], "servers": {"other": {"ready": True}}, "last_activity": "2026-11-28T10:00:00Z"},
        {"name": "zed", "groups": ["ds201-students"], "servers": {}},
        # recorded by the hub (listed in course.yaml, or a group member) before ever signing in
        {"name": "una", "groups": ["cs101-students"], "servers": {}, "last_activity": None},
    ]
    rows = class_rows(
        course,
        users=users,
        running_versions={"nora": "v1", "bob": "v2"},
        current_version="v2",
        gpus_held={"nora": 1},
        gpu_seconds={"nora": 5400.0},
        server_url=lambda name: f"https://{name}.lab/user/{name}/intro-python/",
    )
    by_name = {row.username: row for row in rows}
    assert list(by_name) == ["bob", "ivy", "nora", "olga", "una"]  # zed is not enrolled
    assert (by_name["nora"].status, by_name["nora"].version, by_name["nora"].outdated) == ("running", "v1", True)
    assert (by_name["nora"].gpus_held, by_name["nora"].gpu_hours, by_name["nora"].started) == (1, 1.5, "2026-11-29T09:00:00Z")
    assert (by_name["bob"].status, by_name["bob"].outdated) == ("starting", False)
    assert (by_name["ivy"].status, by_name["ivy"].version, by_name["ivy"].last_activity) == (
        "stopped",
        None,
        "2026-11-28T10:00:00Z",
    )
    assert (by_name["olga"].known, by_name["olga"].status) == (False, "never signed in")
    assert (by_name["una"].known, by_name["una"].status) == (True, "never signed in")


def test_each_courses_instructors_alone_hold_its_publish_and_class_scopes_and_admins_hold_all(tmp_path):
    copy_course(REPO, "intro-python", tmp_path)
    copy_course(REPO, "data-analysis", tmp_path)
    catalog = load_catalog(tmp_path)
    roles = {role["name"]: role for role in all_roles(catalog, {}, ["lab-admins"], with_cli=False)}
    intro = roles["course-staff-intro-python"]
    assert intro["scopes"] == [
        Scopes.course_publish("intro-python"),
        Scopes.course_class("intro-python"),
        f"access:services!service={Scopes.COURSES_SERVICE}",
    ]
    assert (intro["users"], intro["groups"]) == (["prof-lee"], ["cs101-staff"])
    assert not any("intro-python" in scope for scope in roles["course-staff-data-analysis"]["scopes"])
    assert roles["course-admins"]["groups"] == ["lab-admins"] and Scopes.COURSES_ADMIN in roles["course-admins"]["scopes"]
    service = roles[Scopes.COURSES_SERVICE]
    assert service["services"] == [Scopes.COURSES_SERVICE] and "servers" not in service["scopes"]  # its own token only reads
    assert set(course_custom_scopes(catalog)) == {
        Scopes.COURSES_ADMIN,
        *(Scopes.course_publish(slug) for slug in ("intro-python", "data-analysis")),
        *(Scopes.course_class(slug) for slug in ("intro-python", "data-analysis")),
    }
    clients = oauth_client_scopes(catalog)
    assert clients[Scopes.COURSES_SERVICE] == [*sorted(course_custom_scopes(catalog)), "servers"]
    assert all(scope.startswith("custom:teachlab-gpu:") for scope in clients[Scopes.GPU_SERVICE])
