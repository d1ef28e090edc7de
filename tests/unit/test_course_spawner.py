"""CourseSpawner's state and input checks, without a hub or Docker (configured through traitlets Config)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tornado import web
from traitlets.config import Config

from spawner.hub.spawner import CourseSpawner, _single_values, upgrade_state


def _spawner(name: str = "intro-python", options=None) -> CourseSpawner:
    config = Config()
    config.CourseSpawner.catalog_path = "course_envs"
    config.CourseSpawner.state_dir = "/srv/teachlab"
    spawner = CourseSpawner(
        config=config,
        user=SimpleNamespace(name="alice", url="/user/alice/", groups=[]),
        orm_spawner=SimpleNamespace(name=name, server=None, state=None),
    )
    if options is not None:
        spawner.user_options = options
    return spawner


def test_state_round_trip_keeps_names_and_gpus():
    state = {
        "object_id": "abc123",
        "object_name": "teachlab-alice---intro-python",
        "course_slug": "intro-python",
        "image_version": "v3",
        "home_volume": "teachlab-home-renamed-long-ago",
        "gpu_devices": ["GPU-1"],
    }
    spawner = _spawner()
    spawner.load_state(state)
    assert spawner.get_state() == {**state, "teachlab_state_version": 1}


def test_clear_state_forgets_the_run_but_never_the_volume():
    spawner = _spawner()
    spawner.load_state({"course_slug": "intro-python", "image_version": "v3", "home_volume": "vol-1", "gpu_devices": ["GPU-1"]})
    spawner.clear_state()
    state = spawner.get_state()
    assert state["home_volume"] == "vol-1" and state["course_slug"] == "intro-python"
    assert "gpu_devices" not in state and "image_version" not in state


def test_state_from_plain_dockerspawner_loads_and_upgrades():
    spawner = _spawner()
    spawner.load_state({"object_id": "abc", "object_name": "jupyter-alice"})
    assert spawner.object_name == "jupyter-alice" and spawner.home_volume is None
    assert spawner.course_slug == "intro-python"  # version 0 knew no course: the server name is the course
    assert spawner.get_state()["teachlab_state_version"] == 1


def test_the_version_get_state_writes_is_read_back():
    spawner = _spawner()
    spawner.load_state({"course_slug": "intro-python", "home_volume": "vol-1"})
    written = spawner.get_state()
    again = _spawner()
    again.load_state(written)
    assert again.get_state() == written


def test_a_state_from_a_newer_release_keeps_the_keys_this_one_knows():
    newer = {"teachlab_state_version": 99, "course_slug": "intro-python", "home_volume": "vol-9", "future_key": 1}
    assert upgrade_state(newer, server_name="intro-python") == newer
    spawner = _spawner()
    spawner.load_state(newer)
    assert spawner.home_volume == "vol-9"


def test_state_of_a_server_that_is_no_course_gets_no_course():
    assert "course_slug" not in upgrade_state({}, server_name="Not A Course")


def test_ledger_defaults_to_the_state_folder():
    assert _spawner().gpu_ledger_url == "sqlite:////srv/teachlab/lab/gpu-ledger.sqlite"


@pytest.mark.parametrize(
    "options, accepted",
    [
        pytest.param({}, True, id="empty"),
        pytest.param({"course": "intro-python"}, True, id="own-course"),
        pytest.param({"course": "data-analysis"}, False, id="other-course"),
        pytest.param({"image": "alpine"}, False, id="unknown-key"),
        pytest.param(["course"], False, id="not-a-mapping"),
        pytest.param({"course": "x" * 65}, False, id="oversized"),
    ],
)
def test_user_options(options, accepted):
    spawner = _spawner(options=options)
    if accepted:
        spawner._check_user_options(["intro-python"])
    else:
        with pytest.raises(web.HTTPError) as refusal:
            spawner._check_user_options(["intro-python"])
        assert refusal.value.status_code == 400 and refusal.value.log_message.endswith("Your courses: intro-python")


def test_form_values_become_single_values():
    assert _single_values({"course": ["intro-python"], "many": ["a", "b"]}) == {"course": "intro-python", "many": ["a", "b"]}
