"""GPU allocation under contention: the SQLite ledger against a naive read-then-write, in one run.

Each round, ``--concurrency`` threads (default 50, one per student) released together by a barrier
ask for one GPU each on a ``--devices``-GPU inventory (default 4). Rounds alternate between:

* ``ledger``: ``GpuLedger.allocate`` as the hub runs it (``BEGIN IMMEDIATE``, UNIQUE device constraint);
* ``naive_baseline``: the same ``allocate`` code with the serialization taken out: SQLAlchemy's default
  pysqlite transaction (reads outside a transaction, a deferred ``BEGIN`` before the first write) on
  the same tables without the UNIQUE constraint, so a race shows up as a device held twice.

Both use a file-backed SQLite database in WAL mode with the same busy timeout and connection pool.
Latency is one ``allocate`` call, measured in its thread; throughput is decisions (grants plus
refusals) per second of round wall time. Results go to ``bench/results/gpu_allocation.json``.

    .venv/bin/python bench/gpu_allocation.py [--rounds 40] [--concurrency 50] [--devices 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import Connection, MetaData, UniqueConstraint, create_engine, func, select

from spawner.gpu import AllocationRefused, GpuDevice, GpuLedger
from spawner.gpu.ledger import SQLITE_BUSY_TIMEOUT_SECONDS, holdings_table, metadata

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "gpu_allocation.json"
COURSE = "deep-learning"


class NaiveLedger(GpuLedger):
    """``GpuLedger`` minus its serialization: the read-then-write most code would write first."""

    @classmethod
    def create(cls, url: str) -> NaiveLedger:
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        without_unique = MetaData()
        for table in metadata.tables.values():
            copy = table.to_metadata(without_unique)
            copy.constraints -= {c for c in copy.constraints if isinstance(c, UniqueConstraint)}
        without_unique.create_all(engine)
        return cls(engine)

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        with self._engine.begin() as connection:
            yield connection


@dataclass
class Tally:
    """Everything one implementation did over all its rounds."""

    latencies: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    granted: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    double_assignments: int = 0
    rounds_with_double_assignments: int = 0

    def summary(self) -> dict:
        decisions = self.granted + self.refused
        percentiles = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return {
            "decisions": decisions,
            "decisions_per_second": round(decisions / self.wall_seconds, 1),
            "latency_ms": {
                "p50": round(percentiles[49] * 1000, 2),
                "p99": round(percentiles[98] * 1000, 2),
                "max": round(max(self.latencies) * 1000, 2),
            },
            "granted": self.granted,
            "refused": self.refused,
            "errors": len(self.errors),
            "error_examples": sorted(set(self.errors))[:3],
            "double_assignments": self.double_assignments,
            "rounds_with_double_assignments": self.rounds_with_double_assignments,
        }


def run_round(ledger: GpuLedger, tally: Tally, round_number: int, concurrency: int, devices: list[GpuDevice]) -> None:
    barrier = threading.Barrier(concurrency + 1)
    term = (date.today() - timedelta(days=30), date.today() + timedelta(days=30))
    lock = threading.Lock()

    def student(number: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            ledger.allocate(
                username=f"r{round_number}-student-{number}",
                course=COURSE,
                server_name=COURSE,
                count=1,
                devices=devices,
                term_start=term[0],
                term_end=term[1],
            )
            outcome = "granted"
        except AllocationRefused:
            outcome = "refused"
        except Exception as exc:  # noqa: BLE001 - the naive baseline may fail outright; count it, don't stop the run
            outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        elapsed = time.perf_counter() - started
        with lock:
            tally.latencies.append(elapsed)
            if outcome == "granted":
                tally.granted += 1
            elif outcome == "refused":
                tally.refused += 1
            else:
                tally.errors.append(outcome)

    threads = [threading.Thread(target=student, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    tally.wall_seconds += time.perf_counter() - started

    with ledger._transaction(write=False) as connection:
        counts = (
            connection.execute(select(func.count()).select_from(holdings_table).group_by(holdings_table.c.device_uuid))
            .scalars()
            .all()
        )
    doubles = sum(count - 1 for count in counts)
    tally.double_assignments += doubles
    tally.rounds_with_double_assignments += doubles > 0
    ledger.reconcile({}, spawn_grace=timedelta(0))  # release everything before the next round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="rounds per implementation")
    parser.add_argument("--concurrency", type=int, default=50, help="simultaneous allocate calls per round")
    parser.add_argument("--devices", type=int, default=4, help="GPUs in the inventory")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    args = parser.parse_args()

    devices = [
        GpuDevice(uuid=f"GPU-bench-{i}", index=i, model="NVIDIA H100 80GB HBM3", memory_bytes=80 << 30)
        for i in range(args.devices)
    ]
    tallies = {"ledger": Tally(), "naive_baseline": Tally()}
    with tempfile.TemporaryDirectory() as folder:
        ledgers = {
            "ledger": GpuLedger.open(f"sqlite:///{folder}/ledger.sqlite"),
            "naive_baseline": NaiveLedger.create(f"sqlite:///{folder}/naive.sqlite"),
        }
        for ledger in ledgers.values():
            ledger.set_course_quota(COURSE, max_concurrent_gpus=None, gpu_hours_per_student=20, actor="bench")
        for round_number in range(args.rounds):
            for name, ledger in ledgers.items():  # alternate, so drift on the machine hits both alike
                run_round(ledger, tallies[name], round_number, args.concurrency, devices)
        for ledger in ledgers.values():
            ledger.close()

    results = {
        "benchmark": "gpu_allocation",
        "setup": {
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "devices": args.devices,
            "database": "SQLite file, WAL",
            "sqlite_version": sqlite3.sqlite_version,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor_count": os.cpu_count(),
        },
        **{name: tally.summary() for name, tally in tallies.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")

    print(f"GPU allocation: {args.rounds} rounds x {args.concurrency} concurrent requests on {args.devices} GPUs")
    for name in tallies:
        row = results[name]
        print(
            f"  {name:15} {row['decisions_per_second']:8.1f} decisions/s  p50 {row['latency_ms']['p50']:7.2f} ms  "
            f"p99 {row['latency_ms']['p99']:7.2f} ms  granted {row['granted']:4}  errors {row['errors']:3}  "
            f"double assignments {row['double_assignments']}"
        )
    print(f"  written to {args.output}")


if __name__ == "__main__":
    main()
