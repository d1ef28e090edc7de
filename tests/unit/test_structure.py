"""The folder tree is the architecture: imports point down the layers, facts are spelled once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "spawner"
# What each subpackage may import from the others
# (core -> cluster -> catalog/engine/gpu/node -> images -> hub/services/ssh -> deploy -> cli -> devlab).
ALLOWED = {
    "core": set(),
    "cluster": {"core"},  # placement and capacity across nodes
    "catalog": {"core"},
    "engine": {"core"},
    "gpu": {"core", "cluster"},
    "node": {"core"},
    "hubclient": {"core"},
    "prewarm": {"core", "catalog"},
    "images": {"core", "catalog", "engine"},
    "hub": {"core", "cluster", "catalog", "engine", "images", "gpu", "node", "prewarm"},
    "services": {
        "core",
        "catalog",
        "engine",
        "images",
        "gpu",
        "prewarm",
        "hubclient",
    },  # teachlab-courses owns the confined builder
    "ssh": {"core", "catalog", "engine", "hubclient"},  # the SSH gateway service: the hub only through its REST API
    # the production stack (admins' teachlab deploy commands, and the hub image's health check, migrations and
    # teachlab-work service): above the hub and the SSH gateway, whose settings and stores it uses
    "deploy": {"core", "cluster", "catalog", "engine", "images", "gpu", "node", "hubclient", "prewarm", "hub", "ssh"},
    "cli": {"core", "cluster", "catalog", "engine", "images", "gpu", "deploy"},
    "devlab": {
        "core",
        "cluster",
        "catalog",
        "engine",
        "images",
        "gpu",
        "node",
        "hubclient",
        "prewarm",
        "hub",
        "services",
        "cli",
        "ssh",
        "deploy",
    },
}
# Pure cores: no Docker, no JupyterHub, no Tornado (tested without a daemon or a hub).
PURE = [
    "core",
    "cluster",
    "catalog",
    "gpu",
    "node",
    "prewarm/planner.py",
    "catalog/timetable.py",
    "hub/admission.py",
    "hub/container_spec.py",
    "deploy/site.py",
    "deploy/stack.py",
    "deploy/audit.py",
    "images/plan.py",
    "images/registry.py",
    "images/locks.py",
    "images/advisories.py",
    "images/scan.py",
    "images/contents.py",
    "images/confinement.py",
    "services/classlist.py",
    "ssh/login.py",
    "ssh/backoff.py",
    "ssh/keys.py",
]
FRAMEWORKS = ("docker", "dockerspawner", "jupyterhub", "tornado")
# Facts with one home (spawner/core/contract.py); a copy elsewhere drifts.
STRAY = re.compile(r"org\.teachlab\.|/opt/jupyter|/opt/course-env|1000:1000|/home/jovyan|uid 1000")


def _modules():
    return sorted(path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts)


def _imported_subpackages(path: Path) -> set[str]:
    """Subpackages of ``spawner`` that ``path`` imports, at any nesting level (function-local imports too)."""
    relative = path.relative_to(PACKAGE)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = (
                    list(relative.parts[:-1])[: len(relative.parts) - node.level] if node.level > 1 else list(relative.parts[:-1])
                )
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("spawner."):
                target = node.module.split(".")[1:]
            else:
                continue
            if target:
                found.add(target[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("spawner."))
    return found


def _external_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    relative = path.relative_to(PACKAGE)
    if len(relative.parts) == 1:
        return  # spawner/__init__.py: the lazy CourseSpawner export
    layer = relative.parts[0]
    wrong = _imported_subpackages(path) - ALLOWED[layer] - {layer}
    assert not wrong, f"{relative} ({layer}) imports {sorted(wrong)}; {layer} may import only {sorted(ALLOWED[layer])}"


def test_nothing_outside_devlab_imports_it():
    importers = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if p.relative_to(PACKAGE).parts[0] != "devlab" and "devlab" in _imported_subpackages(p)
    ]
    assert importers == []


@pytest.mark.parametrize("part", PURE)
def test_pure_cores_import_no_framework(part):
    target = PACKAGE / part
    for path in [target] if target.is_file() else sorted(target.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        used = _external_imports(path) & set(FRAMEWORKS)
        assert not used, f"{path.relative_to(PACKAGE)} imports {sorted(used)}"


def test_label_keys_paths_and_the_uid_are_defined_once():
    strays = []
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".html", ".json", ".j2", ".mako") and path.name != "contract.py":
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if STRAY.search(line):
                    strays.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert strays == [], "spell these through spawner.core.contract:\n" + "\n".join(strays)


def test_the_readme_names_each_subpackage():
    readme = (PACKAGE.parent / "README.md").read_text()
    for subpackage in ALLOWED:
        assert re.search(rf"^\| `spawner/{subpackage}/` \| .+ \|$", readme, re.MULTILINE), f"README misses spawner/{subpackage}/"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(ALLOWED)


# Not modules to import: a configuration file the idle culler's process reads; entry points run when imported.
NOT_IMPORTABLE = {"hub/idle_culler_config.py"}


@pytest.mark.parametrize(
    "path",
    [path for path in _modules() if str(path.relative_to(PACKAGE)) not in NOT_IMPORTABLE and path.name != "__main__.py"],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_every_module_imports(path):
    """A name taken away in one module and still imported by another (a service's process would die at start)."""
    import importlib

    parts = path.relative_to(PACKAGE).with_suffix("").parts
    importlib.import_module(".".join(("spawner", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("spawner", *parts)))
