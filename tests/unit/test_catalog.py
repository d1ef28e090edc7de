from datetime import date
from pathlib import Path

import pytest

from spawner.catalog import load_catalog
from spawner.cli import main
from spawner.core.problems import ProblemsError

BROKEN = Path(__file__).resolve().parent.parent / "broken_catalogs"
BROKEN_CASES = sorted(p.name for p in BROKEN.iterdir() if p.is_dir())


def test_example_catalog_is_valid(repo_root):
    catalog = load_catalog(repo_root / "course_envs")
    assert set(catalog.courses) == {"intro-python", "data-analysis", "deep-learning"}
    intro = catalog.courses["intro-python"]
    assert intro.environment.python.raw == "python=3.9"
    assert [spec.name for spec in intro.environment.conda_dependencies] == ["numpy", "pandas", "matplotlib", "pip"]
    assert intro.resources.memory_bytes == 1 << 30
    assert catalog.courses["deep-learning"].gpu == 1
    assert catalog.courses["data-analysis"].environment.pip_requirements == (
        "requests>=2.31,<3",
        "tabulate==0.9.0",
        "python-dateutil>=2.8",
    )


def test_validate_command_accepts_the_example_catalog(repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    assert main(["course", "validate", "course_envs"]) == 0
    assert "3 course(s) valid" in capsys.readouterr().out


def test_validate_one_course_folder(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    assert main(["course", "validate", "course_envs/intro-python"]) == 0


@pytest.mark.parametrize("case", BROKEN_CASES)
def test_broken_catalog_gets_its_exact_lines(case, monkeypatch, capsys):
    monkeypatch.chdir(BROKEN)
    assert main(["course", "validate", case]) == 1
    captured = capsys.readouterr()
    expected = (BROKEN / case / "expected.txt").read_text().splitlines()
    assert captured.err.splitlines() == expected
    assert "Traceback" not in captured.err + captured.out


def test_at_least_the_issue_cases_are_kept():
    required = {
        "yaml-syntax-error",
        "unknown-root-key",
        "unknown-nested-key",
        "wrong-type",
        "bad-slug",
        "term-end-before-start",
        "negative-gpu",
        "two-python-pins",
        "pip-not-a-list",
    }
    assert required <= set(BROKEN_CASES)


def test_every_problem_line_has_file_path_message_and_fix():
    for case in BROKEN_CASES:
        for line in (BROKEN / case / "expected.txt").read_text().splitlines():
            where, _, rest = line.partition(": ")
            assert where.count(":") == 1, line
            assert rest.endswith(")") and " (" in rest, line


def test_missing_catalog_folder_is_one_line(tmp_path, capsys):
    assert main(["course", "validate", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.strip().endswith("(pass a catalog folder such as course_envs, or one course folder)")


@pytest.mark.parametrize(
    "username, groups, today, role, reason",
    [
        pytest.param("student-alice", [], date(2026, 10, 1), "student", "you are enrolled", id="listed-user-in-term"),
        pytest.param("bob", ["cs101-students"], date(2026, 10, 1), "student", "you are enrolled", id="group-member-in-term"),
        pytest.param(
            "bob",
            ["cs101-students"],
            date(2026, 8, 31),
            None,
            "the term of 'intro-python' starts on 2026-09-01",
            id="before-term",
        ),
        pytest.param(
            "bob", ["cs101-students"], date(2027, 9, 1), None, "the term of 'intro-python' ended on 2027-08-31", id="after-term"
        ),
        pytest.param("bob", ["cs101-students"], date(2027, 8, 31), "student", "you are enrolled", id="last-day-inclusive"),
        pytest.param("prof-lee", [], date(2030, 1, 1), "instructor", "you teach this course", id="instructor-after-term"),
        pytest.param("ta", ["cs101-staff"], date(2026, 10, 1), "instructor", "you teach this course", id="staff-group"),
        pytest.param(
            "mallory", ["ds201-students"], date(2026, 10, 1), None, "you are not enrolled in 'intro-python'", id="other-course"
        ),
    ],
)
def test_access(repo_root, username, groups, today, role, reason):
    course = load_catalog(repo_root / "course_envs").courses["intro-python"]
    access = course.access(username, groups, today)
    assert (access.role, access.reason) == (role, reason)


def test_problems_error_lists_every_problem(tmp_path):
    folder = tmp_path / "c1"
    folder.mkdir()
    (folder / "course.yaml").write_text("titel: x\ngpu: -2\n")
    (folder / "environment.yml").write_text("name: x\nchannels: [c]\ndependencies: [numpy]\n")
    with pytest.raises(ProblemsError) as info:
        load_catalog(tmp_path)
    paths = [p.path for p in info.value.problems]
    assert "titel" in paths and "gpu" in paths and "dependencies" in paths


def test_course_yaml_reference_is_generated_from_the_schema(repo_root):
    from spawner.catalog.docs import render_course_yaml_reference

    assert (repo_root / "docs" / "course-yaml.md").read_text() == render_course_yaml_reference(), (
        "docs/course-yaml.md is stale: run .venv/bin/teachlab course schema-docs"
    )
