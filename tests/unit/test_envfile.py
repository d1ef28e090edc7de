import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet

from spawner.catalog.envfile import parse_match_spec


@pytest.mark.parametrize(
    "raw, name, version, build, channel, pep440",
    [
        pytest.param("numpy", "numpy", None, None, None, "", id="bare"),
        pytest.param("numpy=1.21", "numpy", "=1.21", None, None, "==1.21.*", id="fuzzy"),
        pytest.param("numpy==1.21.5", "numpy", "==1.21.5", None, None, "==1.21.5", id="exact"),
        pytest.param("numpy>=1.20,<2", "numpy", ">=1.20,<2", None, None, "<2,>=1.20", id="range"),
        pytest.param("numpy 1.21.*", "numpy", "1.21.*", None, None, "==1.21.*", id="space-glob"),
        pytest.param("numpy=1.21=py39_0", "numpy", "=1.21", "py39_0", None, "==1.21.*", id="build-string"),
        pytest.param("conda-forge::pytorch=2.1", "pytorch", "=2.1", None, "conda-forge", "==2.1.*", id="channel"),
        pytest.param("Scikit-Learn", "scikit-learn", None, None, None, "", id="lowercased"),
        pytest.param("python=3.9", "python", "=3.9", None, None, "==3.9.*", id="python"),
    ],
)
def test_match_spec_table(raw, name, version, build, channel, pep440):
    spec = parse_match_spec(raw)
    assert (spec.name, spec.version, spec.build, spec.channel) == (name, version, build, channel)
    assert spec.to_pep440() == SpecifierSet(pep440)


@pytest.mark.parametrize("raw", ["nump y", "numpy[version='>=1']", "numpy=>1.2!", "=1.2", ""])
def test_unreadable_match_specs_are_refused(raw):
    with pytest.raises(ValueError):
        parse_match_spec(raw)


def test_either_or_has_no_pip_equivalent():
    with pytest.raises(ValueError, match="either-or"):
        parse_match_spec("numpy=1.2|1.3").to_pep440()


@given(st.from_regex(r"[a-z][a-z0-9_\-]{0,20}", fullmatch=True), st.lists(st.integers(0, 99), min_size=1, max_size=3))
def test_fuzzy_pin_matches_its_own_releases(name, parts):
    version = ".".join(map(str, parts))
    spec = parse_match_spec(f"{name}={version}")
    assert spec.to_pep440().contains(version + ".7")
    assert spec.to_pep440().contains(version)
