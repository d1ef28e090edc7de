"""Teachlab: a JupyterHub teaching lab. Subpackages by concern (the folder tree is the architecture):

``core`` (contract, names, problems) -> ``catalog``, ``engine``, ``images``, ``gpu`` -> ``hub`` (inside
JupyterHub), ``services`` (hub-managed services), ``cli`` (the ``teachlab`` command) -> ``devlab``
(``make up``'s demo lab and the tests' harness). Imports only point down that list.

``spawner.CourseSpawner`` is imported lazily so that the pure parts load without JupyterHub or DockerSpawner.
"""


def __getattr__(name: str):
    if name == "CourseSpawner":
        from .hub.spawner import CourseSpawner

        return CourseSpawner
    raise AttributeError(f"module 'spawner' has no attribute {name!r}")
