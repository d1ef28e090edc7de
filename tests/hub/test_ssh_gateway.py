"""The second way in: Debian's OpenSSH client (ssh, scp, sftp, tmux for a terminal) against the real lab's
teachlab-ssh gateway, into real course containers.

Students: dave (cs101: intro-python), erin (cs101, the "other student"), gpu-gail (the GPU course). No other
test signs dave or erin in over SSH, so their servers and work volumes are this module's.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request

import pytest

from spawner.core.contract import StateLayout
from spawner.devlab.lab import free_port
from spawner.gpu.cache import ledger_for
from support.ssh import KeysPage, OpenSsh, make_key, refusal_lines

pytestmark = [
    pytest.mark.hub,
    pytest.mark.docker,
    pytest.mark.usefixtures("print_container_logs_on_failure", "hub_log_on_failure"),
]

STUDENT, OTHER = "dave", "erin"
COURSE = "intro-python"
LOGIN = f"{STUDENT}+{COURSE}"


@pytest.fixture(scope="module")
def keys_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("ssh-keys")


@pytest.fixture(scope="module")
def openssh(lab, keys_folder) -> OpenSsh:
    return OpenSsh(lab, keys_folder)


@pytest.fixture(scope="module")
def dave_key(users, keys_folder):
    key = make_key(keys_folder, "dave_key")
    KeysPage(users(STUDENT)).register(key)
    return key


@pytest.fixture(scope="module")
def erin_key(users, keys_folder):
    key = make_key(keys_folder, "erin_key")
    KeysPage(users(OTHER)).register(key)
    return key


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout} s")


# -- key login ----------------------------------------------------------------------------------------
def test_key_login_starts_the_server_and_runs_the_course_python_as_the_student(users, openssh, dave_key, docker_client):
    users(STUDENT).ensure_stopped(COURSE)
    result = openssh.ssh(LOGIN, "python -c 'import sys; print(sys.version)'; id -u; pwd; command -v python", key=dave_key)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()  # sys.version may span two lines (the compiler on the second)
    assert re.match(r"^3\.9\.\d+ ", lines[0]), result.stdout
    assert lines[-3:] == ["1000", "/home/jovyan/work", "/opt/course-env/bin/python"], result.stdout
    # The server was stopped: the gateway started it and printed the hub's progress messages meanwhile.
    progress = refusal_lines(result.stderr)
    assert any("starting Introduction to Python" in line for line in progress), result.stderr
    assert any(re.search(r"\[\s*\d+%\] .*Preparing storage", line) for line in progress), result.stderr
    assert users(STUDENT).server(COURSE).get("ready")


def test_exit_status_stdin_and_stderr_pass_through(openssh, dave_key):
    result = openssh.ssh(LOGIN, "cat; echo to-stderr >&2; exit 7", key=dave_key, input="from stdin\n")
    assert (result.returncode, result.stdout) == (7, "from stdin\n")
    assert "to-stderr" in result.stderr and refusal_lines(result.stderr) == []


def test_a_connection_that_outlives_its_server_starts_it_again(users, openssh, dave_key, keys_folder, background_ssh):
    """VS Code keeps one connection open for hours; after the server stopped, its next channel starts it again."""
    control = keys_folder / "control.sock"
    background_ssh(LOGIN, "-M", "-S", str(control), "-N", key=dave_key)
    wait_for(control.exists, 60, "the shared connection")
    shared = ["-S", str(control)]
    first = openssh.ssh(LOGIN, *shared, "hostname", key=dave_key)
    assert first.returncode == 0, first.stderr
    users(STUDENT).stop(COURSE)
    users(STUDENT).wait_until_stopped(COURSE)
    again = openssh.ssh(LOGIN, *shared, "hostname", key=dave_key)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() != first.stdout.strip()  # a new container (its hostname is its id)
    assert any("starting Introduction to Python" in line for line in refusal_lines(again.stderr)), again.stderr


# -- a terminal ---------------------------------------------------------------------------------------
@pytest.fixture
def tmux(keys_folder):
    """A tmux server of this test's own (its own socket), killed afterwards."""
    socket_path = keys_folder / "tmux.sock"

    def run(*arguments: str) -> str:
        return subprocess.run(["tmux", "-S", str(socket_path), *arguments], capture_output=True, text=True, check=True).stdout

    yield run
    subprocess.run(["tmux", "-S", str(socket_path), "kill-server"], capture_output=True)


def test_an_interactive_terminal_follows_window_size_and_reports_the_exit_status(openssh, dave_key, tmux):
    command = " ".join(openssh.ssh_command(LOGIN, "-tt", key=dave_key))
    tmux("new-session", "-d", "-s", "student", "-x", "120", "-y", "40", f"{command}; echo ssh-exited-with-$?; sleep 600")

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "student")

    def typed(keys: str, expect: str, timeout: float = 60) -> str:
        tmux("send-keys", "-t", "student", keys, "Enter")
        try:
            return wait_for(lambda: expect in screen() and screen(), timeout, f"{expect!r} on the terminal")
        except AssertionError:
            raise AssertionError(f"{expect!r} not on the terminal after {timeout} s; it shows:\n{screen()}") from None

    wait_for(lambda: "$" in screen(), 120, "a shell prompt")
    typed("echo $((6*7)) $(id -u) $PWD", "42 1000 /home/jovyan/work")
    typed("stty size", "40 120")
    tmux("resize-window", "-t", "student", "-x", "100", "-y", "30")
    # The new size travels tmux -> ssh (SIGWINCH) -> gateway -> engine; ask until it has arrived.
    deadline = time.monotonic() + 30
    while "30 100" not in screen():
        assert time.monotonic() < deadline, f"the new size never reached the shell; the terminal shows:\n{screen()}"
        tmux("send-keys", "-t", "student", "stty size", "Enter")
        time.sleep(2)
    typed("python -c 'import sys; print(\"kernel\", sys.version_info[:2])'", "kernel (3, 9)")
    typed("exit 3", "ssh-exited-with-3")


# -- files --------------------------------------------------------------------------------------------
def test_scp_and_sftp_round_trip_a_file_that_jupyterlab_then_shows(users, openssh, dave_key, keys_folder):
    upload = keys_folder / "notes.txt"
    upload.write_text("written on my laptop\n")
    sent = openssh.scp(str(upload), f"{LOGIN}@127.0.0.1:from-scp.txt", key=dave_key)
    assert sent.returncode == 0, sent.stderr
    back = keys_folder / "back-from-scp.txt"
    fetched = openssh.scp(f"{LOGIN}@127.0.0.1:from-scp.txt", str(back), key=dave_key)
    assert fetched.returncode == 0 and back.read_text() == "written on my laptop\n", fetched.stderr

    batch = f"put {upload} from-sftp.txt\nls -l\nget from-sftp.txt {keys_folder / 'back-from-sftp.txt'}\npwd\n"
    session = openssh.sftp(LOGIN, batch, key=dave_key)
    assert session.returncode == 0, session.stderr
    assert "Remote working directory: /home/jovyan/work" in session.stdout
    assert (keys_folder / "back-from-sftp.txt").read_text() == "written on my laptop\n"

    # JupyterLab's file browser lists the work folder through the server's contents API.
    listing = users(STUDENT).get_server_page("api/contents/", course=COURSE)
    assert listing.status_code == 200, listing.text
    names = {item["name"] for item in listing.json()["content"]}
    assert {"from-scp.txt", "from-sftp.txt"} <= names
    content = users(STUDENT).get_server_page("api/contents/from-sftp.txt", course=COURSE).json()
    assert content["content"] == "written on my laptop\n"


# -- forwards -----------------------------------------------------------------------------------------
@pytest.fixture
def web_server_in_the_container(docker_client, dave_key, openssh, lab):
    """A web server the student runs inside the container, on its loopback only."""
    openssh.ssh(LOGIN, "true", key=dave_key)  # the server runs
    container = docker_client.containers.get(lab.names.container(STUDENT, COURSE))
    container.exec_run(
        ["bash", "-c", "mkdir -p /tmp/site && echo served-inside-the-container > /tmp/site/index.html"], user="1000:1000"
    )
    container.exec_run(
        ["python", "-m", "http.server", "8765", "--bind", "127.0.0.1", "--directory", "/tmp/site"], user="1000:1000", detach=True
    )
    yield 8765
    container.exec_run(["pkill", "-f", "http.server 8765"], user="1000:1000")


@pytest.fixture
def background_ssh(openssh):
    """Start ssh processes in the background; they are stopped (by their own pids) afterwards."""
    started: list[subprocess.Popen] = []

    def start(login: str, *arguments: str, key, env=None) -> subprocess.Popen:
        process = subprocess.Popen(
            openssh.ssh_command(login, *arguments, key=key),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or openssh.environment(),
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def test_a_local_forward_reaches_a_server_inside_the_container(web_server_in_the_container, background_ssh, dave_key):
    local = free_port()
    background_ssh(LOGIN, "-N", "-L", f"{local}:127.0.0.1:{web_server_in_the_container}", key=dave_key)
    body = wait_for(lambda: _get(f"http://127.0.0.1:{local}/"), 60, "the forwarded page")
    assert body.strip() == "served-inside-the-container"


def _socks5_connect(proxy_port: int, host: str, port: int) -> int:
    """A SOCKS5 CONNECT through ssh -D; returns the reply code (0 means connected)."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=20) as proxy:
        proxy.sendall(b"\x05\x01\x00")
        assert proxy.recv(2) == b"\x05\x00"
        name = host.encode()
        proxy.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
        reply = proxy.recv(10)
        return reply[1] if len(reply) > 1 else -1


def test_no_way_into_another_students_container(users, openssh, dave_key, erin_key, background_ssh, docker_client, lab):
    users(OTHER).start_and_wait(COURSE)
    erin_container = docker_client.containers.get(lab.names.container(OTHER, COURSE))
    erin_address = erin_container.attrs["NetworkSettings"]["Networks"][lab.network]["IPAddress"]

    # dave's key does not open erin's login name, whatever the course.
    result = openssh.ssh(f"{OTHER}+{COURSE}", "id", key=dave_key)
    assert result.returncode == 255 and result.stdout == ""
    assert refusal_lines(result.stderr) == [
        f"teachlab-ssh: the key {_fingerprint(dave_key)} is not registered for {OTHER}; "
        f"add your public key at {lab.service_url('teachlab-ssh')}"
    ]

    # A forward to erin's container (her Jupyter server's port) is refused by the gateway, before any packet.
    local = free_port()
    forward = background_ssh(LOGIN, "-N", "-L", f"{local}:{erin_address}:8888", key=dave_key)
    wait_for(lambda: _port_open(local), 60, "the local end of the forward")
    assert _get(f"http://127.0.0.1:{local}/") is None
    forward.terminate()
    stderr = forward.communicate(timeout=20)[1]
    assert f"administratively prohibited: teachlab-ssh: forwarding to {erin_address} is refused" in stderr


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _fingerprint(key) -> str:
    output = subprocess.run(["ssh-keygen", "-lf", str(key.with_suffix(".pub"))], capture_output=True, text=True, check=True)
    return output.stdout.split()[1]


def test_remote_dynamic_and_agent_forwarding_are_refused(
    openssh, dave_key, background_ssh, users, docker_client, lab, keys_folder
):
    remote = openssh.ssh(LOGIN, "-R", "0:127.0.0.1:9", "true", key=dave_key)
    assert remote.returncode == 0
    assert "teachlab-ssh: remote port forwarding (-R) is refused" in remote.stderr

    # -D: a SOCKS request for anything but the container's own loopback is refused by the gateway.
    users(OTHER).start_and_wait(COURSE)
    erin_address = docker_client.containers.get(lab.names.container(OTHER, COURSE)).attrs["NetworkSettings"]["Networks"][
        lab.network
    ]["IPAddress"]
    proxy_port = free_port()
    dynamic = background_ssh(LOGIN, "-N", "-D", str(proxy_port), key=dave_key)
    wait_for(lambda: _port_open(proxy_port), 60, "the SOCKS listener of ssh -D")
    assert _socks5_connect(proxy_port, erin_address, 8888) != 0
    dynamic.terminate()
    assert f"teachlab-ssh: forwarding to {erin_address} is refused" in dynamic.communicate(timeout=20)[1]

    # -A: an agent the student runs locally is never offered to the container.
    agent_socket = keys_folder / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_socket)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(agent_socket.exists, 10, "the ssh-agent socket")
        env = {**openssh.environment(), "SSH_AUTH_SOCK": str(agent_socket)}
        command = _without_identity_agent(openssh.ssh_command(LOGIN, "-A", "echo ${SSH_AUTH_SOCK:-no-agent}", key=dave_key))
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "no-agent"
        assert "teachlab-ssh: agent forwarding (-A) is refused" in result.stderr
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def _without_identity_agent(command: list[str]) -> list[str]:
    """The command with its ``-o IdentityAgent=none`` pair dropped (so -A has an agent to offer)."""
    cleaned: list[str] = []
    for part in command:
        if part == "IdentityAgent=none" and cleaned and cleaned[-1] == "-o":
            cleaned.pop()
            continue
        cleaned.append(part)
    return cleaned


# -- refusals -----------------------------------------------------------------------------------------
def test_a_wrong_key_gets_one_line(openssh, keys_folder, dave_key, lab):
    stranger = make_key(keys_folder, "stranger_key")
    result = openssh.ssh(LOGIN, "id", key=stranger)
    assert result.returncode == 255 and result.stdout == ""
    assert refusal_lines(result.stderr) == [
        f"teachlab-ssh: the key {_fingerprint(stranger)} is not registered for {STUDENT}; "
        f"add your public key at {lab.service_url('teachlab-ssh')}"
    ]


def test_guessing_slows_down(openssh, keys_folder):
    """After 6 wrong keys for one login name from one address, each further try waits longer (1 s, 2 s, ...)."""
    stranger = make_key(keys_folder, "guesser_key")
    durations = []
    for _ in range(9):
        started = time.monotonic()
        assert openssh.ssh("frank+data-analysis", "id", key=stranger).returncode == 255
        durations.append(time.monotonic() - started)
    baseline = min(durations[:6])
    assert durations[6] >= baseline + 0.9 and durations[7] >= baseline + 1.9 and durations[8] >= baseline + 3.9, durations
    # Another login name from the same address is not slowed down by these misses.
    started = time.monotonic()
    openssh.ssh("gina+intro-python", "id", key=stranger)
    assert time.monotonic() - started < baseline + 0.9


def test_an_api_token_is_a_password_and_an_expired_one_gets_one_line(users, openssh, lab):
    dave = users(STUDENT)
    fresh = dave.api("POST", f"/users/{STUDENT}/tokens", json={"note": "ssh test", "expires_in": 3600}).json()["token"]
    result = openssh.ssh(LOGIN, "id -u", password=fresh)
    assert (result.returncode, result.stdout.strip()) == (0, "1000"), result.stderr

    short = dave.api("POST", f"/users/{STUDENT}/tokens", json={"note": "expires at once", "expires_in": 1}).json()["token"]
    time.sleep(2.5)
    result = openssh.ssh(LOGIN, "id -u", password=short)
    assert result.returncode == 255 and result.stdout == ""
    assert refusal_lines(result.stderr) == [
        f"teachlab-ssh: that password is not a valid API token of {STUDENT} (expired, revoked or mistyped); "
        f"make a new token at {lab.public_url}/hub/token"
    ]
    # Another user's valid token does not open dave's login name either.
    erin_token = users(OTHER).token
    result = openssh.ssh(LOGIN, "id -u", password=erin_token)
    assert result.returncode == 255 and len(refusal_lines(result.stderr)) == 1


@pytest.mark.parametrize(
    ("course", "says"),
    [
        pytest.param("data-analysis", "you cannot use data-analysis: you are not enrolled in 'data-analysis'.", id="not-mine"),
        pytest.param(
            "ended-course", "you cannot use ended-course: the term of 'ended-course' ended on 2025-06-30.", id="term-ended"
        ),
        pytest.param("no-such-course", "there is no course 'no-such-course'.", id="no-course"),
    ],
)
def test_a_course_that_is_not_yours_gets_one_line(openssh, dave_key, docker_client, course, says):
    result = openssh.ssh(f"{STUDENT}+{course}", "id", key=dave_key)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = refusal_lines(result.stderr)
    assert line.startswith(f"teachlab-ssh: {says}") and "Your courses: intro-python" in line, line
    assert docker_client.containers.list(all=True, filters={"name": f"teachlab-{STUDENT}---{course}"}) == []


def test_a_server_that_cannot_start_gets_one_line(openssh, dave_key):
    result = openssh.ssh(f"{STUDENT}+not-published", "id", key=dave_key)
    assert result.returncode == 1 and result.stdout == ""
    lines = [line for line in refusal_lines(result.stderr) if not re.search(r"starting Not Published|\[\s*[\d?]+%\]", line)]
    assert lines == [
        "teachlab-ssh: Not Published failed to start: Not Published has no published environment yet; "
        "ask your instructor to publish it"
    ], result.stderr


def test_a_bad_login_name_gets_one_line(openssh, dave_key):
    result = openssh.ssh(STUDENT, "id", key=dave_key)
    assert result.returncode == 255
    assert refusal_lines(result.stderr) == [
        f"teachlab-ssh: '{STUDENT}' names no course; log in as <your lab username>+<course>, "
        "e.g. ssh -p 2222 alice+intro-python@<lab address>"
    ]


def test_gpu_quota_exhausted_gets_the_hubs_reason(users, openssh, keys_folder, lab):
    gail = users("gpu-gail")
    key = make_key(keys_folder, "gail_key")
    KeysPage(gail).register(key)
    ledger = ledger_for(StateLayout(lab.state_dir).gpu_ledger_url)
    ledger.set_user_override("gpu-gail", "gpu-course", gpu_hours=0.0, max_gpus=None, actor="tests")
    try:
        result = openssh.ssh("gpu-gail+gpu-course", "nvidia-smi", key=key)
    finally:
        ledger.set_user_override("gpu-gail", "gpu-course", gpu_hours=None, max_gpus=None, actor="tests")
    assert result.returncode == 1
    lines = [line for line in refusal_lines(result.stderr) if not re.search(r"starting GPU Course|\[\s*[\d?]+%\]", line)]
    assert len(lines) == 1 and lines[0].startswith("teachlab-ssh: the lab did not start GPU Course: ") and "GPU-hours" in lines[0]


# -- the keys page --------------------------------------------------------------------------------------
def test_the_keys_page_lists_and_deletes_keys_and_needs_its_xsrf_token(users, keys_folder, openssh):
    fiona = users("fiona")
    page = KeysPage(fiona)
    key = make_key(keys_folder, "fiona_key")
    public = key.with_suffix(".pub").read_text()

    refused = page.add(public, with_xsrf=False)
    assert refused.status_code in (302, 403) and "Added" not in refused.text
    assert 'id="no-ssh-keys"' in page.open().text

    page.register(key)
    listing = page.open().text
    assert _fingerprint(key) in listing and "ssh -p" in listing and "User fiona+intro-python" in listing
    again = page.add(public)
    assert again.status_code == 400 and "you have already added this key" in again.text
    stolen = KeysPage(users(STUDENT)).add(public)
    assert stolen.status_code == 400 and "registered to another account" in stolen.text
    private = page.add(key.read_text())
    assert private.status_code == 400 and "PRIVATE key" in private.text

    key_id = int(re.search(r'id="ssh-key-(\d+)"', listing).group(1))
    assert KeysPage(users(STUDENT)).delete(key_id).status_code == 404  # not dave's to delete
    assert openssh.ssh("fiona+intro-python", "true", key=key).returncode == 0
    assert page.delete(key_id).status_code == 200
    result = openssh.ssh("fiona+intro-python", "true", key=key)
    assert result.returncode == 255 and "is not registered for fiona" in result.stderr
    fiona.ensure_stopped(COURSE)


def test_the_home_page_links_the_keys_page(users, lab):
    home = users(STUDENT).session.get(f"{lab.public_url}/hub/home")
    assert f'href="{lab.service_url("teachlab-ssh")}"' in home.text


# -- activity and logs --------------------------------------------------------------------------------
def test_ssh_traffic_counts_as_activity_and_every_session_is_logged(users, openssh, dave_key, lab):
    dave = users(STUDENT)
    before = dave.server(COURSE)["last_activity"]
    time.sleep(1.5)
    assert openssh.ssh(LOGIN, "for i in 1 2 3 4 5 6 7 8; do echo tick; sleep 1; done", key=dave_key).returncode == 0
    after = wait_for(
        lambda: (dave.server(COURSE)["last_activity"] > before) and dave.server(COURSE)["last_activity"], 20, "activity"
    )
    assert after > before
    log = (lab.folder / "hub.log").read_text(errors="replace")
    assert re.search(rf"ssh session ended: exec {re.escape(LOGIN)} from 127\.0\.0\.1:\d+ after [\d.]+ s, exit 0", log)
    assert re.search(rf"ssh forward closed: {re.escape(LOGIN)} from 127\.0\.0\.1:\d+ to 127\.0\.0\.1:8765 after", log)
    assert "ssh login: " + LOGIN in log


def test_the_host_key_is_kept_in_the_state_folder_and_is_the_one_clients_saw(lab, openssh, dave_key):
    host_key = StateLayout(lab.state_dir).ssh_host_key
    assert (host_key.stat().st_mode & 0o777) == 0o600
    public = subprocess.run(["ssh-keygen", "-y", "-f", str(host_key)], capture_output=True, text=True, check=True).stdout.split()[
        1
    ]
    assert public in openssh.known_hosts.read_text()


# -- the idle culler ----------------------------------------------------------------------------------
def test_a_busy_session_keeps_the_server_and_an_idle_one_does_not(users, openssh, keys_folder):
    """quick-idle stops a server after 1 idle minute (the culler looks every 10 s in the test lab)."""
    ivy = users("ivy")
    key = make_key(keys_folder, "ivy_key")
    KeysPage(ivy).register(key)
    ivy.ensure_stopped("quick-idle")
    busy = openssh.ssh("ivy+quick-idle", "for i in $(seq 18); do echo still-working; sleep 5; done", key=key, timeout=240)
    assert busy.returncode == 0 and busy.stdout.count("still-working") == 18, busy.stderr
    assert ivy.server("quick-idle").get("ready"), "the culler stopped a server whose SSH session was busy for 90 s"

    started = time.monotonic()
    idle = openssh.ssh("ivy+quick-idle", "sleep 600", key=key, timeout=300)
    waited = time.monotonic() - started
    assert idle.returncode != 0 and waited < 200, (idle.returncode, waited)
    ivy.wait_until_stopped("quick-idle", timeout=60)  # the culler asked the hub to stop it; the stop completes
