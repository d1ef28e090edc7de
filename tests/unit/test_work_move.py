"""``teachlab work move``'s decisions (``spawner.cluster.workmove``): which copy moves, what is refused and how it
reads, the folder that takes earlier work, the summary line; and the command's own refusals before any engine is
asked. The moving itself (engines, node agents, the digest) runs in
tests/cluster/test_scale_out.py (its work-move test)."""

from __future__ import annotations

from datetime import date

import pytest

from spawner.cli.main import build_parser, run_handler
from spawner.cluster.workmove import (
    HeldWork,
    MoveDone,
    MoveRefused,
    choose_source,
    merge_folder,
    refuse_unless_fits,
    refuse_while_running,
)

VOLUME = "teachlab-home-alice---intro-python"
MIB = 1 << 20


def held(*nodes: str) -> list[HeldWork]:
    return [HeldWork(node, VOLUME) for node in nodes]


@pytest.mark.parametrize(
    ("found", "target", "source", "expected"),
    [
        pytest.param(held("worker-1"), "worker-2", None, "worker-1", id="the-only-copy"),
        pytest.param(held("worker-1", "worker-2"), "worker-2", None, "worker-1", id="merge-into-the-targets-own"),
        pytest.param(held("worker-1", "worker-2", "worker-3"), "worker-3", "worker-2", "worker-2", id="from-chooses"),
    ],
)
def test_the_copy_that_moves(found, target, source, expected):
    work = choose_source(found, user="alice", course="intro-python", target=target, source=source)
    assert work == HeldWork(expected, VOLUME)


@pytest.mark.parametrize(
    ("found", "target", "source", "message"),
    [
        pytest.param(
            [],
            "worker-2",
            None,
            "no node given holds work of alice for intro-python; check the names, and give every node's --engine",
            id="nowhere",
        ),
        pytest.param(
            held("worker-1", "worker-3"),
            "worker-2",
            None,
            f"alice's work for intro-python is on several nodes (worker-1: {VOLUME}, worker-3: {VOLUME}); "
            "say which with --from NODE",
            id="several",
        ),
        pytest.param(
            held("worker-2"),
            "worker-2",
            None,
            "alice's work for intro-python is on worker-2 already; nothing to move",
            id="there",
        ),
        pytest.param(
            held("worker-1"),
            "worker-2",
            "worker-3",
            "worker-3 holds no work of alice for intro-python (it is on: worker-1)",
            id="from-holds-nothing",
        ),
        pytest.param(
            held("worker-1"),
            "worker-1",
            "worker-1",
            "--from and --to both name worker-1: move the work from one node to another",
            id="from-is-to",
        ),
    ],
)
def test_refusals_are_one_line_that_says_what_to_do(found, target, source, message):
    with pytest.raises(MoveRefused) as refused:
        choose_source(found, user="alice", course="intro-python", target=target, source=source)
    assert str(refused.value) == message


def test_a_running_server_anywhere_refuses_the_move():
    refuse_while_running({"worker-1": [], "worker-2": []}, user="alice", course="intro-python")
    with pytest.raises(MoveRefused) as refused:
        refuse_while_running({"worker-1": [], "worker-2": ["teachlab-alice---intro-python"]}, user="alice", course="intro-python")
    assert str(refused.value) == (
        "alice's server for intro-python runs on worker-2 (teachlab-alice---intro-python): stop it first "
        "(the student, or an admin on the hub)"
    )


def test_earlier_work_that_does_not_fit_is_refused_with_both_sizes():
    refuse_unless_fits(100 * MIB, 100 * MIB, source="worker-1", target="worker-2")
    with pytest.raises(MoveRefused) as refused:
        refuse_unless_fits(300 * MIB, 120 * MIB, source="worker-1", target="worker-2")
    assert str(refused.value) == (
        "the work on worker-1 uses 300.0 MiB, more than the 120.0 MiB free in the work volume on worker-2; "
        "the student must make room there first"
    )


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        pytest.param(set(), "earlier-work-from-worker-1", id="plain"),
        pytest.param({"earlier-work-from-worker-1"}, "earlier-work-from-worker-1-2026-11-29", id="dated"),
        pytest.param(
            {"earlier-work-from-worker-1", "earlier-work-from-worker-1-2026-11-29"},
            "earlier-work-from-worker-1-2026-11-29-2",
            id="dated-again",
        ),
    ],
)
def test_the_folder_that_takes_earlier_work_never_overwrites_one(taken, expected):
    assert merge_folder("worker-1", taken.__contains__, date(2026, 11, 29)) == expected


def test_the_summary_says_what_moved_where_and_how_long_it_took():
    done = MoveDone("alice", "intro-python", "worker-1", "worker-2", 3 * MIB, "", 2.345)
    assert done.summary() == (
        "moved alice's work for intro-python: 3.0 MiB from worker-1 to worker-2, as the work folder, checked, in 2.3 s"
    )
    merged = MoveDone(
        "alice", "intro-python", "worker-1", "worker-2", 2 << 30, "earlier-work-from-worker-1", 9.0, "--keep-source"
    )
    assert merged.summary() == (
        "moved alice's work for intro-python: 2.0 GiB from worker-1 to worker-2, into earlier-work-from-worker-1/ of the "
        "work folder, checked, in 9.0 s; the source stays on worker-1 (--keep-source)"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(
            ["--to", "worker-2"], "error: --to worker-2: give its engine too, with --engine worker-2=URL", id="no-target-engine"
        ),
        pytest.param(
            ["--to", "worker-2", "--engine", "worker-2"],
            "error: --engine 'worker-2': write NODE=URL, e.g. --engine worker-1=ssh://admin@worker-1",
            id="malformed-engine",
        ),
    ],
)
def test_the_command_refuses_in_one_line_before_asking_any_engine(arguments, message, capsys):
    args = build_parser().parse_args(["work", "move", "alice", "intro-python", *arguments])
    assert run_handler(args) == 1
    assert capsys.readouterr().err.strip() == message


def test_an_engine_that_does_not_answer_is_one_line_naming_the_node(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    socket = tmp_path / "nothing-listens.sock"  # a Unix socket path nobody serves: no network is touched
    args = build_parser().parse_args(
        ["work", "move", "alice", "intro-python", "--to", "worker-2", "--engine", f"worker-2=unix://{socket}"]
    )
    assert run_handler(args) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: the engine of worker-2 (unix://{socket}) does not answer (")
    assert line.endswith("bring it up, or leave its --engine out")
