import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spawner.core import naming

DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
slugs = st.from_regex(naming.COURSE_SLUG_PATTERN, fullmatch=True)
nasty_text = st.one_of(
    st.text(min_size=1, max_size=300),
    st.sampled_from(
        [
            "@",
            ".",
            "..",
            "/",
            "{username}",
            "{}",
            " ",
            "\t",
            "a b",
            "..//..",
            "-",
            "--",
            "---",
            "ALICE",
            "alice",
            "al--ice",
            "a" * 400,
            "Ünïcødé",
            "用户",
            "a.b@c.d",
            "x-",
        ]
    ),
    st.text(alphabet="ab-", min_size=1, max_size=60),
)


@given(nasty_text)
def test_user_slug_is_docker_safe_and_bounded(username):
    slug = naming.user_slug(username)
    assert DOCKER_NAME.match(slug)
    assert len(slug) <= naming.MAX_USER_SLUG_LENGTH
    assert naming.PAIR_SEPARATOR not in slug
    assert slug == slug.lower()


@given(nasty_text, nasty_text)
def test_different_usernames_get_different_slugs(first, second):
    if first != second:
        assert naming.user_slug(first) != naming.user_slug(second)


@settings(max_examples=300)
@given(nasty_text, slugs, nasty_text, slugs)
def test_two_different_pairs_never_share_a_volume_or_container(user1, course1, user2, course2):
    if (user1, course1) != (user2, course2):
        assert naming.LabNames().home_volume(user1, course1) != naming.LabNames().home_volume(user2, course2)
        assert naming.LabNames().container(user1, course1) != naming.LabNames().container(user2, course2)


@given(nasty_text, slugs)
def test_names_are_docker_safe_and_short(username, course):
    for name in (naming.LabNames().home_volume(username, course), naming.LabNames().container(username, course)):
        assert DOCKER_NAME.match(name) and len(name) <= naming.MAX_NAME_LENGTH
    image = naming.course_image(course, naming.version_tag(12))
    repository, tag = image.split(":")
    assert repository == repository.lower() and len(tag) <= 128


@pytest.mark.parametrize(
    "username, expected",
    [
        pytest.param("alice", "alice", id="safe-kept"),
        pytest.param("student-42", "student-42", id="safe-dash"),
        pytest.param("Alice", "alice--3bc51062973c458d", id="uppercase-hashed"),
        pytest.param("a.b@uni.edu", "a-b-uni-edu--e2fcf7aa31a63763", id="email"),
        pytest.param("{username}", "username--efd66a42c2df19aa", id="template"),
        pytest.param("../..", "u--0cfd1c96cbc0c0e0", id="dots"),
    ],
)
def test_user_slugs_are_stable_across_releases(username, expected):
    assert naming.user_slug(username) == expected


def test_stable_volume_name():
    assert naming.LabNames().home_volume("alice", "intro-python") == "teachlab-home-alice---intro-python"
    assert naming.LabNames().data_volume("intro-python", "datasets") == "teachlab-data-intro-python---datasets"


@pytest.mark.parametrize("bad", ["", "a", "Intro", "intro--python", "-intro", "intro-", "a" * 33, "in tro", "../x", "{x}"])
def test_bad_course_slugs_never_reach_a_name(bad):
    assert not naming.is_course_slug(bad)
    with pytest.raises(ValueError):
        naming.LabNames().home_volume("alice", bad)


@given(st.text(max_size=50))
def test_suggested_slug_is_valid(text):
    assert naming.is_course_slug(naming.suggest_course_slug(text))


def test_version_tags_round_trip():
    assert naming.version_number(naming.version_tag(7)) == 7
    for bad in ["7", "v0", "v01", "latest", "v1;rm"]:
        with pytest.raises(ValueError):
            naming.version_number(bad)


def test_the_default_prefix_keeps_every_releases_names():
    names = naming.LabNames()
    assert names.container("alice", "intro-python") == "teachlab-alice---intro-python"
    assert names.home_volume("alice", "intro-python") == "teachlab-home-alice---intro-python"
    assert names.data_volume("intro-python", "datasets") == "teachlab-data-intro-python---datasets"


@given(
    st.sampled_from(["teachlab", "tl0a1b2c3d", "staging"]),
    st.sampled_from(["teachlab", "tl99", "prod"]),
    st.text(min_size=1, max_size=20),
    slugs,
)
def test_labs_with_different_prefixes_never_share_a_name(first, second, username, course):
    if first != second:
        a, b = naming.LabNames(first), naming.LabNames(second)
        assert a.container(username, course) != b.container(username, course)
        assert a.home_volume(username, course) != b.home_volume(username, course)


@pytest.mark.parametrize("prefix", ["", "Teachlab", "tl-a", "1lab", "a" * 21, "tl_a"])
def test_a_bad_prefix_is_refused(prefix):
    with pytest.raises(ValueError, match="is not a name prefix"):
        naming.LabNames(prefix)
