"""The SSH gateway's pure parts: login names, forward rules, back-off, the key store (SQLite, no hub)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spawner.ssh.backoff import SourceBackoff
from spawner.ssh.keys import MAX_KEYS_PER_USER, KeyRejected, SshKeyStore, parse_public_key
from spawner.ssh.login import LoginName, LoginNameError, forward_refusal, is_container_loopback, parse_login_name


# -- login names ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("alice+intro-python", LoginName("alice", "intro-python"), id="plain"),
        pytest.param("student-alice+data-analysis", LoginName("student-alice", "data-analysis"), id="dashed-user"),
        pytest.param("a.b@uni.edu+cs101", LoginName("a.b@uni.edu", "cs101"), id="email-user"),
    ],
)
def test_login_name_carries_user_and_course(text, expected):
    assert parse_login_name(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("alice", "names no course", id="no-course"),
        pytest.param("+intro-python", "names no user", id="no-user"),
        pytest.param("alice+intro+python", "more than one '+'", id="two-plus"),
        pytest.param("alice+Intro_Python", "is not a course name", id="bad-slug"),
        pytest.param("alice+", "is not a course name", id="empty-course"),
        pytest.param("al\x00ice+intro-python", "cannot be right", id="control-character"),
        pytest.param("a" * 400 + "+intro-python", "cannot be right", id="too-long"),
    ],
)
def test_a_bad_login_name_says_what_to_type(text, says):
    with pytest.raises(LoginNameError) as error:
        parse_login_name(text)
    assert says in str(error.value)
    assert "alice+intro-python" in str(error.value)  # the example of what to type
    assert "\n" not in str(error.value)


@given(st.text(max_size=80))
def test_any_login_name_parses_or_is_refused_in_one_line(text):
    try:
        login = parse_login_name(text)
    except LoginNameError as error:
        assert "\n" not in str(error)
    else:
        assert "+" not in login.course and login.user and f"{login.user}+{login.course}" == text


# -- forwards ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST.", "::1", "[::1]"])
def test_forwards_to_the_containers_loopback_are_allowed(host):
    assert is_container_loopback(host)
    assert forward_refusal(host, 8888) is None


@pytest.mark.parametrize("host", ["172.17.0.5", "10.0.0.1", "0.0.0.0", "example.org", "teachlab-bob---intro-python", "::", ""])
def test_forwards_anywhere_else_are_refused_with_how_to_use_loopback(host):
    refusal = forward_refusal(host, 8888)
    assert refusal is not None and "127.0.0.1" in refusal and "-D" in refusal


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_a_port_that_does_not_exist_is_refused(port):
    assert "1 and 65535" in forward_refusal("127.0.0.1", port)


# -- back-off ---------------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_starts_after_the_free_failures_and_doubles_up_to_the_limit():
    clock = Clock()
    backoff = SourceBackoff(free_failures=3, max_delay=8, window=600, clock=clock)
    delays = []
    for _ in range(8):
        delays.append(backoff.delay("198.51.100.7"))
        backoff.failed("198.51.100.7")
    assert delays == [0, 0, 0, 1, 2, 4, 8, 8]
    assert backoff.delay("203.0.113.9") == 0  # another source is not slowed


def test_backoff_forgets_after_the_window_and_on_success():
    clock = Clock()
    backoff = SourceBackoff(free_failures=1, window=60, clock=clock)
    backoff.failed("a")
    backoff.failed("a")
    assert backoff.delay("a") == 2
    clock.now += 61
    assert backoff.delay("a") == 0
    backoff.failed("b")
    backoff.failed("b")
    backoff.succeeded("b")
    assert backoff.delay("b") == 0


def test_backoff_memory_is_bounded():
    backoff = SourceBackoff(max_sources=3, clock=Clock())
    for source in "abcde":
        backoff.failed(source)
    assert len(backoff._sources) == 3 and "a" not in backoff._sources


# -- keys ---------------------------------------------------------------------------------------------
def public_key(comment: str = "alice@laptop", algorithm: str = "ssh-ed25519", **kwargs) -> str:
    key = asyncssh.generate_private_key(algorithm, comment=comment, **kwargs)
    return key.export_public_key().decode()


@pytest.fixture
def store(tmp_path):
    store = SshKeyStore.open(f"sqlite:///{tmp_path / 'records.sqlite'}")
    yield store
    store.close()


def test_a_key_is_parsed_with_its_fingerprint(tmp_path):
    text = public_key()
    parsed = parse_public_key(text + "\n")
    assert parsed.algorithm == "ssh-ed25519"
    assert parsed.fingerprint == asyncssh.import_public_key(text).get_fingerprint("sha256")
    assert parsed.comment == "alice@laptop" and parsed.public_key == " ".join(text.split()[:2])


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("", "paste the contents", id="empty"),
        pytest.param("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----", "PRIVATE key", id="private"),
        pytest.param("ssh-ed25519 not-base64", "not an OpenSSH public key", id="garbage"),
        pytest.param("hello world", "not an OpenSSH public key", id="words"),
    ],
)
def test_bad_keys_are_refused_with_what_to_do(text, says):
    with pytest.raises(KeyRejected) as rejected:
        parse_public_key(text)
    assert says in str(rejected.value)


def test_two_keys_on_two_lines_are_refused():
    with pytest.raises(KeyRejected, match="exactly one public key"):
        parse_public_key(public_key() + "\n" + public_key())


def test_short_rsa_keys_are_refused():
    with pytest.raises(KeyRejected, match="1024 bits"):
        parse_public_key(public_key(algorithm="ssh-rsa", key_size=1024))


def test_a_key_belongs_to_one_user(store):
    text = public_key()
    added = store.add("alice", text)
    assert store.owner_of(added.fingerprint) == "alice"
    with pytest.raises(KeyRejected, match="registered to another account"):
        store.add("bob", text)
    with pytest.raises(KeyRejected, match="already added"):
        store.add("alice", text)
    assert store.owner_of(added.fingerprint) == "alice"
    assert store.keys_of("bob") == []


def test_keys_are_listed_and_deleted_only_by_their_owner(store):
    first, second = store.add("alice", public_key("one")), store.add("alice", public_key("two"))
    assert [key.comment for key in store.keys_of("alice")] == ["one", "two"]
    with pytest.raises(KeyRejected, match="no key number"):
        store.delete("bob", first.id)
    assert len(store.keys_of("alice")) == 2
    store.delete("alice", first.id)
    assert [key.id for key in store.keys_of("alice")] == [second.id]
    assert store.owner_of(first.fingerprint) is None


def test_one_user_has_a_limited_number_of_keys(store):
    for number in range(MAX_KEYS_PER_USER):
        store.add("alice", public_key(f"k{number}"))
    with pytest.raises(KeyRejected, match="delete one"):
        store.add("alice", public_key("one-too-many"))


def test_last_use_is_recorded(tmp_path):
    now = datetime(2026, 11, 15, 9, 30, tzinfo=timezone.utc)
    store = SshKeyStore.open(f"sqlite:///{tmp_path / 'records.sqlite'}", clock=lambda: now)
    key = store.add("alice", public_key())
    assert key.added_at == now and key.last_used_at is None
    now += timedelta(hours=1)
    store.mark_used(key.fingerprint)
    assert store.keys_of("alice")[0].last_used_at == now
    store.close()


def test_the_store_shares_a_database_with_the_gpu_ledger(tmp_path):
    from spawner.gpu.ledger import GpuLedger

    url = f"sqlite:///{tmp_path / 'records.sqlite'}"
    ledger = GpuLedger.open(url)
    store = SshKeyStore.open(url)
    store.add("alice", public_key())
    reopened = SshKeyStore.open(url)  # migrations ran once; opening again is a no-op
    assert len(reopened.keys_of("alice")) == 1
    assert ledger.holdings() == []
    for thing in (ledger, store, reopened):
        thing.close()


def test_concurrent_adds_of_one_key_leave_exactly_one_owner(tmp_path):
    url = f"sqlite:///{tmp_path / 'records.sqlite'}"
    SshKeyStore.open(url).close()
    text = public_key()
    results: list[str] = []

    def add(user: str) -> None:
        store = SshKeyStore.open(url)
        try:
            store.add(user, text)
            results.append(user)
        except KeyRejected:
            pass
        finally:
            store.close()

    threads = [threading.Thread(target=add, args=(f"user{number}",)) for number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 1
    check = SshKeyStore.open(url)
    assert check.owner_of(parse_public_key(text).fingerprint) == results[0]
    check.close()


# -- make up ------------------------------------------------------------------------------------------
def test_the_demo_lab_prints_an_ssh_command_for_its_gateway(tmp_path):
    from dataclasses import asdict

    from spawner.devlab.lab import Lab, LabPorts

    lab = Lab(state_dir=tmp_path)
    assert lab.ssh_command("student-alice", "intro-python") == "ssh -p 2222 student-alice+intro-python@127.0.0.1"
    assert len(set(asdict(LabPorts()).values())) == len(asdict(LabPorts()))  # no two processes share a port
    settings = lab.hub_settings()
    assert (settings.ssh_port, settings.ssh_service_port) == (2222, 8084)
    assert parse_login_name(lab.ssh_command("student-alice", "intro-python").split()[-1].split("@")[0]).course == "intro-python"
