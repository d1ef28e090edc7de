"""The GPU ledger on a real PostgreSQL, under the same races as on SQLite (tests/unit/test_gpu_ledger.py).

Ledgers that share no in-process lock (one per thread, or one per process) are kept right only by the
ledger's PostgreSQL advisory lock: without it two writers read the same free device and the UNIQUE
constraint refuses the second, so a student is turned away while a GPU is free.
"""

from __future__ import annotations

import pytest
import sqlalchemy

from spawner.gpu import GpuLedger
from spawner.gpu.ledger import VERSION_TABLE
from support.ledger_races import (
    a_course_cap_holds_under_a_race,
    fifty_threads_never_share_a_device,
    two_processes_never_share_a_device,
)

pytestmark = pytest.mark.postgres


def test_open_migrates_an_empty_database_to_head(postgres_url):
    with GpuLedger.open(postgres_url) as ledger:
        assert ledger.holdings() == []
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as connection:
        tables = set(sqlalchemy.inspect(connection).get_table_names())
    engine.dispose()
    assert {
        "gpu_holdings",
        "gpu_usage_intervals",
        "gpu_course_quotas",
        "gpu_user_overrides",
        "gpu_audit_log",
        VERSION_TABLE,
    } <= tables


@pytest.mark.parametrize(
    "one_ledger_per_thread", [pytest.param(False, id="shared-ledger"), pytest.param(True, id="ledger-per-thread")]
)
def test_fifty_threads_never_share_a_device(postgres_url, one_ledger_per_thread):
    fifty_threads_never_share_a_device(postgres_url, one_ledger_per_thread=one_ledger_per_thread)


def test_two_processes_never_share_a_device(postgres_url):
    two_processes_never_share_a_device(postgres_url)


def test_a_course_cap_holds_under_a_race(postgres_url):
    a_course_cap_holds_under_a_race(postgres_url)
