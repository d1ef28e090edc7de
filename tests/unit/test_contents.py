"""What an image contains, as its labels say it (no Docker: the probe's output is given)."""

from __future__ import annotations

import json

import pytest

from spawner.core.problems import TeachlabError
from spawner.images.contents import ImageContents, cuda_runtime, image_labels, parse_probe_output

PROBE = {
    "server": {"python": "3.11.2", "packages": [["jupyter_server", "2.21.1"], ["JupyterLab", "4.6.6"], ["jupyterhub", "6.1.1"]]},
    "course": {"python": "3.9.2", "packages": [["torch", "2.3.0+cu121"], ["numpy", "1.26.4"], ["ipykernel", "6.31.0"]]},
    "debian": ["bash=5.2.15-2+b7", "python3.9=3.9.2-1+deb11u7"],
    "conda": [],
}


def test_probe_output_is_read_with_canonical_names():
    contents = parse_probe_output("noise\nTEACHLAB-CONTENTS " + json.dumps(PROBE) + "\n", "img")
    assert contents.server_packages == {"jupyter-server": "2.21.1", "jupyterlab": "4.6.6", "jupyterhub": "6.1.1"}
    assert contents.debian_lock() == "bash=5.2.15-2+b7\npython3.9=3.9.2-1+deb11u7\n"
    assert ImageContents.from_dict(contents.as_dict()) == contents


def test_a_probe_that_printed_nothing_is_one_clear_error():
    with pytest.raises(TeachlabError, match="could not read what img contains: Traceback line"):
        parse_probe_output("Traceback line\n", "img")


def test_labels_name_both_pythons_jupyter_major_libraries_and_cuda():
    labels = image_labels(parse_probe_output("TEACHLAB-CONTENTS " + json.dumps(PROBE), "img"))
    assert labels == {
        "org.teachlab.python-kernel": "3.9.2",
        "org.teachlab.python-server": "3.11.2",
        "org.teachlab.jupyter-server": "2.21.1",
        "org.teachlab.jupyterlab": "4.6.6",
        "org.teachlab.jupyterhub": "6.1.1",
        "org.teachlab.lib.torch": "2.3.0+cu121",
        "org.teachlab.lib.numpy": "1.26.4",
        "org.teachlab.cuda-runtime": "12.1",
    }


@pytest.mark.parametrize(
    "course, conda, expected",
    [
        pytest.param({"nvidia-cuda-runtime-cu12": "12.4.127", "torch": "2.4.0"}, {}, "12.4", id="cuda-runtime-wheel"),
        pytest.param({"torch": "2.1.0+cu118"}, {}, "11.8", id="torch-local-build"),
        pytest.param({}, {"cudatoolkit": "11.8.0"}, "11.8", id="conda-cudatoolkit"),
        pytest.param({"torch": "2.3.0+cpu"}, {}, None, id="cpu-torch"),
        pytest.param({"numpy": "1.26.4"}, {}, None, id="no-cuda"),
    ],
)
def test_cuda_runtime_is_found_where_it_lives(course, conda, expected):
    assert cuda_runtime(ImageContents("3.11", "3.9.2", {}, course, {}, conda_packages=conda)) == expected
