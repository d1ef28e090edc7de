"""The course catalog: ``course_envs/<slug>/{course.yaml,environment.yml}`` checked against one JSON
Schema and loaded into frozen dataclasses (``model``), kept live in the hub (``cache``)."""

from .loader import COURSE_FILE, ENVIRONMENT_FILE, course_schema, is_course_folder, load_catalog, load_course
from .model import Access, Catalog, Course, Members, Resources, Term

__all__ = [
    "COURSE_FILE",
    "ENVIRONMENT_FILE",
    "Access",
    "Catalog",
    "Course",
    "Members",
    "Resources",
    "Term",
    "course_schema",
    "is_course_folder",
    "load_catalog",
    "load_course",
]
