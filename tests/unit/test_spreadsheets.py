"""CSV cells that would run as formulas in a spreadsheet are neutralised (spawner/core/spreadsheets.py)."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta, timezone

import pytest

from spawner.cli.main import main
from spawner.core.spreadsheets import neutralise
from spawner.gpu import GpuLedger, declared_inventory


@pytest.mark.parametrize("cell", ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_formula_starts_become_text(cell):
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["alice", "deep-learning", "1.5", "a=b", " =x"])
def test_everything_else_is_kept(cell):
    assert neutralise(cell) == cell


def test_gpu_usage_csv_neutralises_a_hostile_username(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    device = declared_inventory([{"uuid": "GPU-0", "index": 0, "model": "Fake GPU (tests)", "memory": "16G"}])
    clock = [datetime(2026, 10, 1, tzinfo=timezone.utc)]
    with GpuLedger.open(url, clock=lambda: clock[0]) as ledger:
        ledger.allocate(
            username="=cmd|' /C calc'!A0",
            course="deep-learning",
            server_name="deep-learning",
            count=1,
            devices=device,
            term_start=date(2026, 9, 1),
            term_end=date(2027, 8, 31),
        )
        clock[0] += timedelta(hours=1)
        ledger.release(username="=cmd|' /C calc'!A0", server_name="deep-learning", reason="test")
    assert main(["gpu", "usage", "--csv", "--ledger-url", url]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[1][:2] == ["deep-learning", "'=cmd|' /C calc'!A0"]
