"""Publishing speed: republish an unchanged course and roll back, side by side with a no-cache rebuild.

Ours: `publish_course` on a course that is already current (build from Docker's cache, nothing new to
smoke-test) and `rollback_course`. Baseline: what a hand-rolled pipeline does when it rebuilds the
same course image from scratch (`docker build --no-cache` of the same context) — measured once.

    .venv/bin/python bench/publish_speed.py [--rounds 5]

Writes bench/results/publish_speed.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from spawner.catalog import load_course
from spawner.engine import connect
from spawner.engine.build import tar_context
from spawner.images.build import ImageBuilder
from spawner.images.plan import render_course_context
from spawner.images.publish import publish_course, rollback_course
from spawner.images.settings import BuildSettings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
LABEL = {"org.teachlab.bench": "publish-speed"}


def timed(function) -> tuple[float, object]:
    started = time.monotonic()
    value = function()
    return time.monotonic() - started, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    course = load_course(REPO / "course_envs" / "intro-python")
    with tempfile.TemporaryDirectory(prefix="teachlab-bench-") as folder:
        settings = BuildSettings.from_environment(state_dir=Path(folder), labels=LABEL)
        builder = ImageBuilder(settings)
        builder.build_base("debian-py39")
        first_seconds, first = timed(lambda: publish_course(course, settings=settings))
        republish = []
        for _ in range(args.rounds):
            seconds, result = timed(lambda: publish_course(course, settings=settings))
            assert result.outcome == "unchanged"
            republish.append(seconds)
        # a second version to roll back from: the same environment under another title
        publish_course(replace(course, title="Introduction to Python (bench)"), settings=settings)
        rollback_seconds, _ = timed(lambda: rollback_course(course.slug, settings=settings))

        client = connect()
        base = builder.flavor(course.image_flavor).base_image(settings.image_namespace)
        plan = render_course_context(
            course,
            builder.flavor(course.image_flavor),
            base_image=base,
            base_image_id=client.images.get(base).id,
            constraints=settings.constraints_file.read_text(),
            pip=builder.pip_settings(),
        )
        started = time.monotonic()
        for _ in client.api.build(
            fileobj=tar_context(plan.files),
            custom_context=True,
            tag="teachlab-bench/no-cache:latest",
            nocache=True,
            rm=True,
            forcerm=True,
            labels=LABEL,
            decode=True,
        ):
            pass
        no_cache_seconds = time.monotonic() - started
        for image in client.images.list(filters={"label": "org.teachlab.bench=publish-speed"}):
            client.images.remove(image.id, force=True)
    result = {
        "benchmark": "publish_speed",
        "course": course.slug,
        "teachlab_first_publish_s": round(first_seconds, 2),
        "teachlab_first_publish_outcome": first.outcome,
        "teachlab_republish_unchanged_s": {
            "median": round(statistics.median(republish), 2),
            "max": round(max(republish), 2),
            "all": [round(v, 2) for v in republish],
        },
        "teachlab_rollback_s": round(rollback_seconds, 3),
        "baseline_rebuild_without_cache_s": round(no_cache_seconds, 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "publish_speed.json").write_text(json.dumps(result, indent=2))
    print(
        f"republish unchanged: median {result['teachlab_republish_unchanged_s']['median']} s "
        f"(max {result['teachlab_republish_unchanged_s']['max']} s) vs rebuild without cache {result['baseline_rebuild_without_cache_s']} s; "
        f"rollback {result['teachlab_rollback_s']} s -> bench/results/publish_speed.json"
    )


if __name__ == "__main__":
    main()
