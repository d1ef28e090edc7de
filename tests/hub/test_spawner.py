"""CourseSpawner through a real hub, proxy, login provider and Docker engine."""

from __future__ import annotations

import json
import time

import docker.errors
import pytest

pytestmark = [
    pytest.mark.hub,
    pytest.mark.docker,
    pytest.mark.usefixtures("print_container_logs_on_failure", "hub_log_on_failure"),
]


def _container(docker_client, lab, user: str, course: str):
    return docker_client.containers.get(lab.names.container(user, course))


def _exec(container, script: str, user: str = "1000:1000") -> tuple[int, str]:
    result = container.exec_run(["bash", "-c", script], user=user)
    return result.exit_code, result.output.decode("utf-8", "replace").strip()


def test_student_gets_the_course_image_limits_and_storage(users, docker_client, build_settings, lab):
    alice = users("alice")
    alice.start_and_wait("intro-python")
    container = _container(docker_client, lab, "alice", "intro-python")
    attrs = container.attrs
    current = json.loads((build_settings.registry_dir / "intro-python.json").read_text())
    assert attrs["Config"]["Image"] == f"{build_settings.image_namespace}/course-intro-python:{current['current']}"
    assert attrs["Config"]["User"] == "1000:1000"
    host = attrs["HostConfig"]
    assert host["Memory"] == 1 << 30
    assert host["CpuQuota"] == 100_000 and host["CpuPeriod"] == 100_000
    assert "no-new-privileges" in host["SecurityOpt"] and host["CapDrop"] == ["ALL"]
    assert not host.get("Privileged")
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert set(mounts) == {"/home/jovyan/work", "/home/jovyan/data/datasets"}
    assert (
        mounts["/home/jovyan/work"]["Name"] == lab.names.home_volume("alice", "intro-python")
        and mounts["/home/jovyan/work"]["RW"]
    )
    assert mounts["/home/jovyan/data/datasets"]["Name"] == lab.names.data_volume("intro-python", "datasets")
    assert not mounts["/home/jovyan/data/datasets"]["RW"]
    assert not any("docker.sock" in m.get("Source", "") for m in attrs["Mounts"])
    assert list(attrs["NetworkSettings"]["Networks"]) == [alice.lab.network]
    labels = attrs["Config"]["Labels"]
    assert labels["org.teachlab.user"] == "alice" and labels["org.teachlab.course"] == "intro-python"

    code, output = _exec(
        container,
        "id -u; stat -c %u /home/jovyan/work; grep NoNewPrivs /proc/self/status | tr -d '\\t'; echo $NVIDIA_VISIBLE_DEVICES",
    )
    assert (code, output.split()) == (0, ["1000", "1000", "NoNewPrivs:1", "void"])  # a CPU course sees no GPU
    code, output = _exec(container, "touch /home/jovyan/data/datasets/student-was-here")
    assert code != 0 and "Read-only file system" in output
    code, _ = _exec(container, "echo hello > /home/jovyan/work/notes.txt")
    assert code == 0


def test_instructor_writes_course_data_that_students_read(users, docker_client, lab):
    prof, alice = users("prof"), users("alice")
    prof.start_and_wait("intro-python")
    instructor_container = _container(docker_client, lab, "prof", "intro-python")
    code, output = _exec(
        instructor_container,
        "echo 'week 1 data' > /home/jovyan/data/datasets/week1.csv && cat /home/jovyan/data/datasets/week1.csv",
    )
    assert (code, output) == (0, "week 1 data")
    alice.start_and_wait("intro-python")
    code, output = _exec(_container(docker_client, lab, "alice", "intro-python"), "cat /home/jovyan/data/datasets/week1.csv")
    assert (code, output) == (0, "week 1 data")


def test_work_survives_stop_start_and_container_removal(users, docker_client, lab):
    carol = users("carol")
    carol.start_and_wait("intro-python")
    first = _container(docker_client, lab, "carol", "intro-python")
    assert _exec(first, "echo 'my homework' > /home/jovyan/work/homework.py")[0] == 0
    assert carol.stop("intro-python").status_code in (202, 204)
    carol.wait_until_stopped("intro-python")
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(first.id)  # removed on stop; only the volume stays
    carol.start_and_wait("intro-python")
    second = _container(docker_client, lab, "carol", "intro-python")
    assert second.id != first.id
    assert _exec(second, "cat /home/jovyan/work/homework.py") == (0, "my homework")


def test_another_student_gets_403_and_cannot_reach_the_container(users, docker_client, lab):
    alice, bob = users("alice"), users("bob")
    alice.start_and_wait("intro-python")
    bob.start_and_wait("intro-python")
    assert alice.get_server_page("api/status", course="intro-python").status_code == 200
    assert bob.get_server_page("api/status", user="alice", course="intro-python").status_code == 403
    bob_in_browser = bob.session.get(lab.server_url("alice", "intro-python") + "lab", allow_redirects=True)
    assert bob_in_browser.status_code == 403

    alice_container = _container(docker_client, lab, "alice", "intro-python")
    alice_ip = alice_container.attrs["NetworkSettings"]["Networks"][lab.network]["IPAddress"]
    probe = (
        "import socket,sys\n"
        "def reach(host, port):\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=3).close(); return 'open'\n"
        "    except socket.timeout:\n"
        "        return 'timeout'\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
        f"print(reach('{alice_ip}', 8888), reach('{lab.gateway}', {lab.ports.hub}))\n"
    )
    result = _container(docker_client, lab, "bob", "intro-python").exec_run(["python", "-c", probe], user="1000:1000")
    to_alice, to_hub = result.output.decode().split()
    assert to_hub == "open"  # the same probe reaches the hub, so the refusal below is the network's doing
    # With icc off the bridge drops the packets: a timeout, not a refused port (which would mean alice's container
    # answered, and only her server happened not to listen).
    assert to_alice == "timeout"


# What the catalog of the test lab offers alice (cs101-students) now: every refusal lists it.
ALICES_COURSES = ("intro-python", "not-published", "offline-course", "tiny-disk", "versioned")
REFUSED_BY_JUPYTERHUB = ("Invalid server_name", "Body must be a JSON object")

UNTRUSTED_START_REQUESTS = [
    # (id, server name as sent in the URL, JSON body, expected status, text the answer must contain).
    # Options are checked first, so option cases use a course that never starts.
    ("unknown-course", "nope", None, 400, "There is no course named 'nope'"),
    # JupyterHub 6 itself refuses a name that is no valid server name (400, "Invalid server_name"), before the
    # spawner sees it; CourseSpawner's own check stays as the second line (tests/unit/test_course_spawner.py).
    ("template-in-name", "{username}", None, 400, "Invalid server_name: '{username}'"),
    ("format-spec-in-name", "{0.__class__}", None, 400, "Invalid server_name"),
    # ".." in the URL is resolved by the proxy and the hub before any server name exists: the request
    # becomes POST /users/alice, which is not an endpoint (404); nothing is started.
    ("dotdot-name", "..", None, 404, ""),
    ("encoded-dotdot", "%2E%2E", None, 404, ""),
    ("double-encoded-dotdot", "%252E%252E", None, 400, "Invalid server_name: '%2E%2E'"),
    ("encoded-slash", "intro-python%2F..%2F..", None, 400, "Invalid server_name: 'intro-python/../..'"),
    ("uppercase-course", "INTRO-PYTHON", None, 400, "Invalid server_name: 'INTRO-PYTHON'"),
    ("underscore-course", "intro_python", None, 400, "Invalid server_name: 'intro_python'"),
    ("double-dash", "intro--python", None, 400, "Invalid server_name"),
    ("trailing-space", "intro-python%20", None, 400, "Invalid server_name: 'intro-python '"),
    ("newline", "intro-python%0A", None, 400, "Invalid server_name"),
    ("unicode-lookalike", "%C3%AFntro-python", None, 400, "Invalid server_name"),
    ("shell-injection", "%24%28id%29", None, 400, "Invalid server_name: '$(id)'"),
    ("sql-ish", "x%27%20OR%201%3D1", None, 400, "Invalid server_name"),
    ("oversized-name", "a" * 300, None, 400, "Invalid server_name"),
    ("ended-term", "ended-course", None, 400, "ended on 2025-06-30"),
    ("not-enrolled", "quick-idle", None, 400, "you are not enrolled in 'quick-idle'"),
    ("unpublished", "not-published", None, 503, "has no published environment yet"),
    ("image-option", "not-published", {"image": "alpine"}, 400, "Unknown server option(s) 'image'"),
    ("cmd-option", "not-published", {"cmd": ["sh", "-c", "id"]}, 400, "Unknown server option(s) 'cmd'"),
    ("volumes-option", "not-published", {"volumes": {"/": "/host"}}, 400, "Unknown server option(s) 'volumes'"),
    ("privileged-option", "not-published", {"privileged": True}, 400, "Unknown server option(s) 'privileged'"),
    ("user-option", "not-published", {"user": "0:0"}, 400, "Unknown server option(s) 'user'"),
    ("mem-option", "not-published", {"mem_limit": "100G"}, 400, "Unknown server option(s) 'mem_limit'"),
    ("env-option", "not-published", {"environment": {"LD_PRELOAD": "/x"}}, 400, "Unknown server option(s) 'environment'"),
    ("gpu-option", "not-published", {"course": "intro-python", "gpu": 4}, 400, "Unknown server option(s) 'gpu'"),
    ("other-course-option", "not-published", {"course": "data-analysis"}, 400, "Option 'course' must name this server's course"),
    ("template-course-option", "not-published", {"course": "{username}"}, 400, "Option 'course' must name this server's course"),
    ("dotdot-course-option", "not-published", {"course": ".."}, 400, "Option 'course' must name this server's course"),
    (
        "slash-course-option",
        "not-published",
        {"course": "intro-python/../x"},
        400,
        "Option 'course' must name this server's course",
    ),
    ("oversized-option", "not-published", {"course": "x" * 100_000}, 400, "Option 'course' must name this server's course"),
    ("number-option", "not-published", {"course": 7}, 400, "Option 'course' must name this server's course"),
    ("list-body", "not-published", ["course"], 400, "Body must be a JSON object"),  # JupyterHub 6 checks the body too
    ("oversized-key", "not-published", {"k" * 5000: 1}, 400, "Unknown server option(s) '" + "k" * 64 + "'"),
]


@pytest.mark.parametrize("name, body, status, text", [pytest.param(*case[1:], id=case[0]) for case in UNTRUSTED_START_REQUESTS])
def test_untrusted_start_requests_are_refused(users, docker_client, name, body, status, text, lab):
    alice = users("alice")
    response = alice.api("POST", f"/users/alice/servers/{name}", **({} if body is None else {"data": json.dumps(body)}))
    assert response.status_code == status, response.text
    assert text in response.text
    if status == 400 and not text.startswith(REFUSED_BY_JUPYTERHUB):
        assert response.json()["message"].endswith(f"Your courses: {', '.join(ALICES_COURSES)}")
    assert "Traceback" not in response.text
    leaked = docker_client.containers.list(
        all=True, filters={"label": ["org.teachlab.user=alice", f"org.teachlab.lab={lab.hub_settings().lab_id}"]}
    )
    assert all(c.labels["org.teachlab.course"] in ("intro-python",) for c in leaked)


def test_default_server_is_refused_with_the_choices(users):
    response = users("alice").api("POST", "/users/alice/server")
    assert response.status_code == 400
    assert "each course is its own server" in response.json()["message"]


def test_progress_tells_the_student_what_happens(users):
    from concurrent.futures import ThreadPoolExecutor

    dave = users("dave")
    dave.ensure_stopped("intro-python")
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(dave.start, "intro-python")  # answers only once the spawn is done (or slow)
        deadline = time.monotonic() + 60
        while not dave.server("intro-python").get("pending"):
            assert time.monotonic() < deadline, "dave's start never became pending"
            time.sleep(0.05)
        stream = dave.api("GET", "/users/dave/servers/intro-python/progress", stream=True)
        assert started.result().status_code in (201, 202)
    messages = []
    for line in stream.iter_lines(decode_unicode=True):
        if line.startswith("data:"):
            event = json.loads(line[5:])
            messages.append(event.get("message", ""))
            if event.get("ready") or event.get("failed"):
                break
    text = "\n".join(messages)
    for expected in ("Checking your access", "Preparing storage", "Creating your container", "Waiting for JupyterLab"):
        assert expected in text, text
    dave.wait_until_ready("intro-python")


def test_instructor_role_manages_only_their_course_students(users):
    prof, erin, frank, admin = users("prof"), users("erin"), users("frank"), users("admin")
    erin.start_and_wait("intro-python")
    frank.start_and_wait("data-analysis")
    listed = {user["name"] for user in prof.api("GET", "/users").json()}
    assert "erin" in listed and "frank" not in listed
    opened = prof.open_server("erin", "intro-python")  # through the hub's OAuth consent, as in a browser
    assert opened.status_code == 200 and "started" in opened.json()
    assert prof.stop("intro-python", user="erin").status_code in (202, 204)
    erin.wait_until_stopped("intro-python")
    assert prof.start("intro-python", user="erin").status_code in (201, 202)
    prof.wait_until_ready("intro-python", user="erin")
    assert prof.stop("data-analysis", user="frank").status_code in (403, 404)
    assert prof.open_server("frank", "data-analysis").status_code == 403
    assert frank.server("data-analysis").get("ready")
    assert admin.stop("data-analysis", user="frank").status_code in (202, 204)


def test_instructor_of_one_course_cannot_touch_the_students_other_course(users):
    """holly takes intro-python (prof teaches it) and data-analysis (prof does not)."""
    prof, holly = users("prof"), users("holly")
    holly.start_and_wait("intro-python")
    holly.start_and_wait("data-analysis")
    assert prof.open_server("holly", "intro-python").status_code == 200
    assert prof.open_server("holly", "data-analysis").status_code == 403
    assert prof.stop("data-analysis", user="holly").status_code in (403, 404)
    assert holly.server("data-analysis").get("ready")
    assert prof.stop("intro-python", user="holly").status_code in (202, 204)
    holly.stop("data-analysis")


def test_ended_term_is_not_offered_to_students_but_instructors_keep_it(users, lab):
    alice, prof = users("alice"), users("prof")
    home = alice.session.get(f"{lab.public_url}/hub/home").text
    assert 'id="course-intro-python"' in home and "ended-course" not in home
    assert 'id="course-not-published"' in home and "not published yet" in home
    prof_home = prof.session.get(f"{lab.public_url}/hub/home").text
    assert 'id="course-ended-course"' in prof_home
    prof.start_and_wait("ended-course")
    assert prof.stop("ended-course").status_code in (202, 204)


def test_a_new_version_needs_no_hub_restart_and_running_servers_keep_theirs(
    users, docker_client, build_settings, hub_catalog, lab
):
    from spawner.catalog import load_course
    from spawner.images.publish import publish_course
    from support.catalogs import add_pip_requirements

    fiona = users("fiona")
    fiona.start_and_wait("versioned")
    before = _container(docker_client, lab, "fiona", "versioned").attrs["Config"]["Image"]
    add_pip_requirements(hub_catalog / "versioned", "six==1.16.0")
    published = publish_course(load_course(hub_catalog / "versioned"), settings=build_settings, client=docker_client)
    assert published.outcome == "published" and published.image != before
    assert _container(docker_client, lab, "fiona", "versioned").attrs["Config"]["Image"] == before
    fiona.stop("versioned")
    fiona.wait_until_stopped("versioned")
    fiona.start_and_wait("versioned")
    assert _container(docker_client, lab, "fiona", "versioned").attrs["Config"]["Image"] == published.image


def test_idle_servers_are_culled_after_the_course_limit(users):
    ivy, bob = users("ivy"), users("bob")
    started = time.monotonic()
    ivy.start_and_wait("quick-idle")
    bob.start_and_wait("intro-python")
    ivy.wait_until_stopped("quick-idle", timeout=200)
    assert time.monotonic() - started >= 55  # not before its 1-minute limit
    assert bob.server("intro-python").get("ready")  # intro-python's limit is 60 minutes
