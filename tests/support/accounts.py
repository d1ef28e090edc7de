"""Who and what the hub tests use: test accounts, the GPU course's students, fake_gpu_inventory."""

from __future__ import annotations

STUDENTS = ("alice", "bob", "carol", "dave", "erin", "fiona")
TEST_ACCOUNTS = (
    *({"username": name, "name": name.title(), "groups": ["cs101-students"]} for name in STUDENTS),
    {"username": "gina", "name": "Gina", "groups": ["cs101-students"]},  # only tests/e2e signs her in
    {"username": "frank", "name": "Frank", "groups": ["ds201-students"]},
    {"username": "holly", "name": "Holly", "groups": ["cs101-students", "ds201-students"]},  # in two courses
    {"username": "ivy", "name": "Ivy", "groups": ["idle-testers"]},
    {"username": "prof", "name": "Prof", "groups": ["cs101-staff"]},
    {"username": "gpu-gail", "name": "Gail", "groups": ["gpu-testers"]},
    {"username": "admin", "name": "Admin", "groups": ["lab-admins"]},
    {"username": "rita", "name": "Rita", "groups": ["cs101-students"]},  # removed from cs101 by the revocation test
    {"username": "tom", "name": "Tom", "groups": ["tas"]},  # made an instructor of a course while the hub runs
    {"username": "sam", "name": "Sam", "groups": ["cs101-students"]},  # writes hostile HTML in the origin test
    {"username": "warm01", "name": "Wanda", "groups": []},  # comes to class and finds her warm server
    {"username": "lena", "name": "Lena", "groups": ["envlab-staff"]},  # teaches env-lab (tests/e2e/test_course_pages.py)
    {"username": "nora", "name": "Nora", "groups": ["envlab-students"]},  # takes env-lab
    {"username": "quinn", "name": "Quinn", "groups": ["gpu-testers"]},  # GPU quotas set in the admin's forms
)
HUB_COURSES = (
    "intro-python",
    "data-analysis",
    "ended-course",
    "quick-idle",
    "versioned",
    "gpu-course",
    "offline-course",
    "tiny-disk",
    "crowd-course",
    "warm-course",
    "timetable-course",
)
GPU_STUDENTS = tuple(f"gpu{number:02d}" for number in range(1, 51))
# The class-start tests: a hundred first starts at once; a class warmed by hand; a class warmed by its timetable.
CROWD_STUDENTS = tuple(f"crowd{number:03d}" for number in range(1, 101))
WARM_STUDENTS = ("warm01", "warm02", "warm03")
TIMETABLE_STUDENTS = ("tt01", "tt02")
# fake_gpu_inventory: four declared GPUs that do not exist. dockerd runs with the stand-in
# nvidia-container-runtime-hook (tests/fake_gpu_runtime), so containers requesting them start and see
# exactly the requested IDs in NVIDIA_VISIBLE_DEVICES; no real device is attached.
FAKE_GPU_INVENTORY = [
    {"uuid": f"GPU-fa4e0000-0000-4000-8000-00000000000{index}", "index": index, "model": "Fake GPU (tests)", "memory": "16G"}
    for index in range(4)
]
