"""The pure container spec of a course server (spawner/hub/container_spec.py), without Docker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spawner.catalog import load_catalog
from spawner.core.contract import IMAGE, Labels
from spawner.hub.container_spec import NO_GPU, make_container_spec

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(REPO / "course_envs")
INTRO = CATALOG.courses["intro-python"]
DEEP = CATALOG.courses["deep-learning"]
GPU_IDS = ("GPU-fa4e0000-0000-4000-8000-000000000002",)


def spec(course=INTRO, **changes):
    arguments = dict(
        course=course,
        image="teachlab/course-intro-python:v3",
        version="v3",
        role="student",
        username="alice",
        home_volume="teachlab-home-alice---intro-python",
        lab_id="lab-1234",
        gpu_device_ids=GPU_IDS if course.gpu else (),
    )
    arguments.update(changes)
    return make_container_spec(**arguments)


def test_students_read_course_data_and_write_their_work():
    binds = spec().binds
    assert binds == {
        "teachlab-home-alice---intro-python": {"bind": IMAGE.work_mount, "mode": "rw"},
        "teachlab-data-intro-python---datasets": {"bind": f"{IMAGE.data_mount}/datasets", "mode": "ro"},
    }


def test_instructors_write_course_data():
    binds = spec(role="instructor").binds
    assert binds["teachlab-data-intro-python---datasets"]["mode"] == "rw"
    assert binds["teachlab-home-alice---intro-python"]["mode"] == "rw"


def test_an_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role must be"):
        spec(role="admin")


def test_a_cpu_course_sees_no_gpu():
    made = spec()
    assert made.environment["NVIDIA_VISIBLE_DEVICES"] == NO_GPU == "void"
    assert made.device_requests == []
    assert made.host_config(network="n", auto_remove=True)["device_requests"] == []
    assert Labels.GPUS not in made.labels


def test_a_cpu_course_is_never_given_devices():
    with pytest.raises(ValueError, match="CPU course"):
        spec(gpu_device_ids=GPU_IDS)


def test_a_gpu_course_gets_exactly_its_devices():
    made = spec(
        course=DEEP, image="teachlab/course-deep-learning:v1", username="gail", home_volume="teachlab-home-gail---deep-learning"
    )
    assert made.environment["NVIDIA_VISIBLE_DEVICES"] == GPU_IDS[0]
    assert made.device_requests == [{"driver": "nvidia", "device_ids": list(GPU_IDS), "capabilities": [["gpu"]]}]
    assert made.labels[Labels.GPUS] == GPU_IDS[0]
    assert made.host_config(network="n", auto_remove=True)["device_requests"] == made.device_requests


def test_a_gpu_course_needs_as_many_devices_as_it_asks_for():
    with pytest.raises(ValueError, match="needs 1 GPU"):
        spec(course=DEEP, gpu_device_ids=())
    two = replace(DEEP, gpu=2)
    assert len(spec(course=two, gpu_device_ids=("GPU-a", "GPU-b")).device_requests[0]["device_ids"]) == 2


def test_limits_user_command_and_hardening():
    made = spec()
    config = made.host_config(network="teachlab-students", auto_remove=True)
    assert config["mem_limit"] == 1 << 30
    assert (config["cpu_period"], config["cpu_quota"]) == (100_000, 100_000)
    assert config["network_mode"] == "teachlab-students" and config["auto_remove"] is True
    assert config["security_opt"] == ["no-new-privileges"] and config["cap_drop"] == ["ALL"]
    assert config["pids_limit"] == 1024 and config["init"] is False
    assert config["cap_add"] == [] and config["privileged"] is False
    assert made.user == IMAGE.user == "1000:1000"
    assert list(made.command) == IMAGE.singleuser_command
    assert made.name == "teachlab-alice---intro-python"
    assert made.environment["TEACHLAB_COURSE"] == "intro-python" and made.environment["TEACHLAB_COURSE_VERSION"] == "v3"


def test_the_root_filesystem_is_read_only_scratch_is_bounded_and_logs_rotate():
    config = spec().host_config(network="n", auto_remove=True)
    assert config["read_only"] is True
    assert config["tmpfs"]["/tmp"].startswith("size=") and "nosuid" in config["tmpfs"]["/tmp"]
    assert config["tmpfs"][IMAGE.home].startswith("size=") and f"uid={IMAGE.uid}" in config["tmpfs"][IMAGE.home]
    assert config["log_config"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    # JupyterLab's settings and IPython's history live on the (size-limited, persistent) work volume.
    assert spec().environment["JUPYTERLAB_SETTINGS_DIR"].startswith(IMAGE.work_mount + "/")


def test_a_course_without_internet_is_marked_offline():
    assert spec().offline is False
    assert spec(course=replace(INTRO, network="off")).offline is True


def test_a_sites_extra_host_config_cannot_loosen_the_container():
    sneaky = {
        "privileged": True,
        "cap_drop": [],
        "security_opt": [],
        "mem_limit": "100g",
        "device_requests": [{"count": -1}],
        "dns": ["192.0.2.53"],
    }
    config = spec(extra_host_config=sneaky).host_config(network="n", auto_remove=True)
    assert config["cap_drop"] == ["ALL"] and config["security_opt"] == ["no-new-privileges"]
    assert config["mem_limit"] == 1 << 30 and config["device_requests"] == []
    assert config["read_only"] is True and "/tmp" in config["tmpfs"]
    assert config["dns"] == ["192.0.2.53"]  # options the platform does not set pass through
    assert config["privileged"] is False


def test_the_lab_label_is_always_present_whatever_extra_labels_say():
    """A site's extra_labels (the trait's own example) once replaced the lab label; reconciliation then released
    every GPU in use at the next hub start."""
    made = spec(
        extra_labels={"org.example.lab": "cs", Labels.LAB: "other-lab", Labels.USER: "mallory", Labels.GPUS: "GPU-stolen"}
    )
    assert made.labels[Labels.LAB] == "lab-1234"
    assert made.labels[Labels.USER] == "alice" and made.labels[Labels.SERVER] == "intro-python"
    assert made.labels["org.example.lab"] == "cs"
    assert Labels.GPUS not in made.labels


@given(username=st.text(min_size=1, max_size=40))
def test_labels_carry_any_username_exactly(username):
    """No template rendering happens on the way to the engine: braces and format specs stay as they are."""
    made = spec(username=username, home_volume="v")
    assert made.labels[Labels.USER] == username
    assert made.labels[Labels.COURSE] == "intro-python"
