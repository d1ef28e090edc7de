from datetime import date, datetime, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from spawner.gpu.quotas import (
    SECONDS_PER_HOUR,
    EffectiveQuota,
    Refusal,
    check_allocation,
    remaining_gpu_hours,
    term_window,
)

HOUR = 3600.0
COURSE = "deep-learning"


def decide(*, requested=1, quota=EffectiveQuota(), used_hours=0.0, course_held=0, free=4, total=4):
    return check_allocation(
        course=COURSE,
        requested=requested,
        quota=quota,
        used_seconds=used_hours * HOUR,
        course_held=course_held,
        free_devices=free,
        total_devices=total,
    )


@pytest.mark.parametrize(
    "case, expected",
    [
        pytest.param({}, None, id="no-quota-free-device"),
        pytest.param({"free": 0}, Refusal("all 4 GPUs are in use; try again later", 503), id="all-in-use"),
        pytest.param({"free": 0, "total": 1}, Refusal("the only GPU is in use; try again later", 503), id="only-gpu-in-use"),
        pytest.param(
            {"requested": 2, "free": 1},
            Refusal("only 1 of 4 GPUs is free and deep-learning servers need 2; try again later", 503),
            id="too-few-free",
        ),
        pytest.param(
            {"requested": 2, "free": 1, "total": 1},
            Refusal("this hub has 1 GPU and deep-learning servers need 2; tell your instructor", 503),
            id="host-too-small",
        ),
        pytest.param(
            {"quota": EffectiveQuota(max_concurrent_gpus=2), "course_held": 2},
            Refusal("deep-learning may hold at most 2 GPUs at once and all 2 are in use; try again later", 429),
            id="course-cap-reached",
        ),
        pytest.param(
            {"quota": EffectiveQuota(max_concurrent_gpus=1), "course_held": 1},
            Refusal("deep-learning may hold at most 1 GPU at once and it is in use; try again later", 429),
            id="course-cap-of-one",
        ),
        pytest.param(
            {"quota": EffectiveQuota(max_concurrent_gpus=3), "course_held": 2, "requested": 2},
            Refusal(
                "deep-learning may hold at most 3 GPUs at once and 2 are in use and its server needs 2; try again later", 429
            ),
            id="course-cap-partly-used",
        ),
        pytest.param({"quota": EffectiveQuota(max_concurrent_gpus=2), "course_held": 1}, None, id="course-cap-room-left"),
        pytest.param(
            {"quota": EffectiveQuota(max_concurrent_gpus=0)},
            Refusal("GPUs are switched off for deep-learning; ask your instructor", 403),
            id="course-cap-zero",
        ),
        pytest.param(
            {"quota": EffectiveQuota(max_concurrent_gpus=1), "requested": 2},
            Refusal("deep-learning may hold at most 1 GPU at once and its server needs 2; ask your instructor", 403),
            id="course-cap-below-one-server",
        ),
        pytest.param(
            {"quota": EffectiveQuota(max_gpus=1), "requested": 2},
            Refusal("you may use at most 1 GPU at once in deep-learning and its server needs 2; ask your instructor", 403),
            id="user-cap-below-need",
        ),
        pytest.param(
            {"quota": EffectiveQuota(max_gpus=0)},
            Refusal("GPUs are switched off for you in deep-learning; ask your instructor", 403),
            id="user-switched-off",
        ),
        pytest.param({"quota": EffectiveQuota(gpu_hours=20), "used_hours": 19.5}, None, id="hours-left"),
        pytest.param(
            {"quota": EffectiveQuota(gpu_hours=20), "used_hours": 20.06},
            Refusal("you have used 20 of 20 GPU-hours this term in deep-learning; ask your instructor for more", 403),
            id="hours-spent",
        ),
        pytest.param(
            {"quota": EffectiveQuota(gpu_hours=2.5), "used_hours": 3.99},
            Refusal("you have used 3.9 of 2.5 GPU-hours this term in deep-learning; ask your instructor for more", 403),
            id="hours-overrun-rounded-down",
        ),
        pytest.param(
            {"quota": EffectiveQuota(gpu_hours=0)},
            Refusal("you have used 0 of 0 GPU-hours this term in deep-learning; ask your instructor for more", 403),
            id="zero-hours",
        ),
        pytest.param(
            {"quota": EffectiveQuota(gpu_hours=1, max_concurrent_gpus=1), "used_hours": 1, "course_held": 1, "free": 0},
            Refusal("you have used 1 of 1 GPU-hours this term in deep-learning; ask your instructor for more", 403),
            id="personal-limit-reported-first",
        ),
        pytest.param(
            {"quota": EffectiveQuota(max_concurrent_gpus=4), "course_held": 4, "free": 0},
            Refusal("deep-learning may hold at most 4 GPUs at once and all 4 are in use; try again later", 429),
            id="course-cap-before-host",
        ),
    ],
)
def test_allocation_decisions(case, expected):
    assert decide(**case) == expected


def test_term_window_covers_whole_days_in_utc():
    assert term_window(date(2025, 9, 1), date(2025, 12, 20)) == (
        datetime(2025, 9, 1, tzinfo=timezone.utc),
        datetime(2025, 12, 21, tzinfo=timezone.utc),
    )


@pytest.mark.parametrize(
    "quota, used_hours, expected",
    [
        pytest.param(EffectiveQuota(), 100.0, None, id="unlimited"),
        pytest.param(EffectiveQuota(gpu_hours=20), 19.5, 0.5, id="some-left"),
        pytest.param(EffectiveQuota(gpu_hours=20), 25.0, 0.0, id="overrun-is-zero"),
    ],
)
def test_remaining_gpu_hours(quota, used_hours, expected):
    assert remaining_gpu_hours(quota, used_hours * HOUR) == expected


counts = st.one_of(st.none(), st.integers(min_value=0, max_value=8))


@given(
    quota=st.builds(
        EffectiveQuota,
        max_concurrent_gpus=counts,
        max_gpus=counts,
        gpu_hours=st.one_of(st.none(), st.floats(min_value=0, max_value=100)),
    ),
    requested=st.integers(min_value=1, max_value=4),
    used_seconds=st.floats(min_value=0, max_value=200 * HOUR),
    course_held=st.integers(min_value=0, max_value=8),
    free_and_total=st.integers(min_value=0, max_value=8).flatmap(
        lambda total: st.tuples(st.integers(min_value=0, max_value=total), st.just(total))
    ),
)
# The boundary that a round trip through hours once made flaky: usage exactly equal to the allowance.
@example(
    quota=EffectiveQuota(gpu_hours=4.5127865121291095e-68),
    requested=1,
    used_seconds=4.5127865121291095e-68 * SECONDS_PER_HOUR,
    course_held=0,
    free_and_total=(1, 1),
)
@example(
    quota=EffectiveQuota(gpu_hours=2.0), requested=1, used_seconds=2 * SECONDS_PER_HOUR, course_held=0, free_and_total=(1, 1)
)
def test_a_grant_respects_every_limit_and_a_refusal_names_one(quota, requested, used_seconds, course_held, free_and_total):
    free, total = free_and_total
    refusal = check_allocation(
        course=COURSE,
        requested=requested,
        quota=quota,
        used_seconds=used_seconds,
        course_held=course_held,
        free_devices=free,
        total_devices=total,
    )
    if refusal is None:
        assert requested <= free
        assert quota.max_gpus is None or requested <= quota.max_gpus
        assert quota.max_concurrent_gpus is None or course_held + requested <= quota.max_concurrent_gpus
        # In the unit the production code compares: seconds divided by SECONDS_PER_HOUR.
        assert quota.gpu_hours is None or used_seconds / SECONDS_PER_HOUR < quota.gpu_hours
    else:
        assert refusal.status in (403, 429, 503)
        assert "\n" not in refusal.reason and refusal.reason.endswith(("later", "instructor", "for more"))
