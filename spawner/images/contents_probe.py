"""Runs INSIDE an image with the Jupyter server's Python; prints one ``TEACHLAB-CONTENTS {json}`` line:
both Pythons and their distributions, the Debian packages, and a conda course environment's packages.

Arguments: the course environment's Python, the course environment's folder.
This file must import nothing from Teachlab: it is sent into the container as source text.
"""

import json
import pathlib
import platform
import subprocess
import sys

DISTRIBUTIONS = r"""
import importlib.metadata as m, json, platform
pairs = sorted({(d.metadata["Name"], d.version) for d in m.distributions() if d.metadata["Name"]})
print(json.dumps({"python": platform.python_version(), "packages": pairs}))
"""


def main() -> None:
    course_python, course_env = sys.argv[1], sys.argv[2]
    server = json.loads(subprocess.run([sys.executable, "-I", "-c", DISTRIBUTIONS], capture_output=True, check=True).stdout)
    try:
        course = json.loads(subprocess.run([course_python, "-I", "-c", DISTRIBUTIONS], capture_output=True, check=True).stdout)
    except (OSError, subprocess.CalledProcessError):
        course = {"python": "", "packages": []}
    dpkg = subprocess.run(["dpkg-query", "-W", "-f", "${Package}=${Version}\\n"], capture_output=True, text=True, check=True)
    conda = []
    for record in sorted(pathlib.Path(course_env, "conda-meta").glob("*.json")):
        data = json.loads(record.read_text())
        conda.append([data.get("name", ""), data.get("version", "")])
    report = {
        "server": server,
        "course": course,
        "debian": dpkg.stdout.split(),
        "conda": conda,
        "machine": platform.machine(),
    }
    print("TEACHLAB-CONTENTS " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
