"""Teachlab's hub-side code. ``spawner.CourseSpawner`` is imported lazily so that the pure modules
(catalog, naming, GPU ledger, quotas) and the CLI load without JupyterHub or DockerSpawner."""


def __getattr__(name: str):
    if name == "CourseSpawner":
        from .course_spawner import CourseSpawner

        return CourseSpawner
    raise AttributeError(f"module 'spawner' has no attribute {name!r}")
