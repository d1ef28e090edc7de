"""Prometheus metrics of the lab, served by JupyterHub's own /hub/metrics (scope ``read:metrics``).

What admins watch at class start and during term: how long starts take and how many wait, per course;
how many servers run per course; GPUs held and free; GPU-hours used per course this term; warm servers
used and wasted. Gauges that need the hub's state or the ledger are read when scraped, from values the
catalog refresh keeps current (a scrape never waits for a database).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timezone

from jupyterhub.app import JupyterHub
from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..catalog import Catalog
from ..core.blocking import LEDGER, run_blocking
from ..gpu.cache import inventory_for, ledger_for
from ..gpu.quotas import term_window
from ..prewarm.records import WarmRecords
from .admission import all_waiting

SPAWN_SECONDS = Histogram(
    "teachlab_spawn_duration_seconds",
    "From pressing start to a server that answers, per course (queue, storage, container, boot).",
    ["course"],
    buckets=(1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610),
)


class LabCollector(Collector):
    """Gauges read from the hub's state at scrape time; ``snapshot`` returns {metric: {labels: value}}."""

    def __init__(self, snapshot: Callable[[], dict[str, dict[tuple[str, ...], float]]]):
        self.snapshot = snapshot

    DESCRIPTIONS = {
        "teachlab_spawn_queue_length": ("Starts waiting for a boot slot, per course.", ("course",)),
        "teachlab_servers_running": ("Servers running (or starting), per course.", ("course",)),
        "teachlab_gpus_held": ("GPUs (or MIG instances) held by servers now.", ()),
        "teachlab_gpus_free": ("GPUs (or MIG instances) free now.", ()),
        "teachlab_gpu_hours_used": ("GPU-hours used this term, per course.", ("course",)),
        "teachlab_warm_servers": (
            "Servers the class pre-warm started, per course and outcome (used, wasted, waiting).",
            ("course", "outcome"),
        ),
    }

    def collect(self) -> Iterable[GaugeMetricFamily]:
        values = self.snapshot()
        for name, (documentation, labels) in self.DESCRIPTIONS.items():
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            for label_values, value in sorted(values.get(name, {}).items()):
                family.add_metric(list(label_values), value)
            yield family


_registered: list[LabCollector] = []


def register_lab_collector(snapshot: Callable[[], dict[str, dict[tuple[str, ...], float]]]) -> None:
    """Serve the lab's gauges from ``snapshot`` (once per process; a second call replaces the source)."""
    if _registered:
        _registered[0].snapshot = snapshot
        return
    collector = LabCollector(snapshot)
    REGISTRY.register(collector)
    _registered.append(collector)


class LabGauges:
    """Keeps the gauges current: ``update`` runs after every catalog refresh (every few seconds) on the hub's
    event loop; the ledger is read in its own pool, the hub's users from memory."""

    def __init__(self, *, ledger_url: str, inventory_setting: object, today: Callable[[], object]):
        self.ledger_url = ledger_url
        self.inventory_setting = inventory_setting
        self.today = today
        self.values: dict[str, dict[tuple[str, ...], float]] = {}
        self._warm_records = None

    def snapshot(self) -> dict[str, dict[tuple[str, ...], float]]:
        return self.values

    async def update(self, catalog: Catalog) -> None:
        values: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in LabCollector.DESCRIPTIONS}
        for course in catalog.courses:
            values["teachlab_spawn_queue_length"][(course,)] = float(all_waiting(course))
            values["teachlab_servers_running"][(course,)] = 0.0
        if JupyterHub.initialized():
            for user in list(JupyterHub.instance().users.values()):
                for name, spawner in list(user.spawners.items()):
                    if spawner.active and name in catalog.courses:
                        values["teachlab_servers_running"][(name,)] += 1
        devices = await run_blocking(LEDGER, inventory_for, self.inventory_setting)
        if devices or any(course.gpu for course in catalog.courses.values()):
            ledger = await run_blocking(LEDGER, ledger_for, self.ledger_url)
            held = len(await run_blocking(LEDGER, ledger.holdings))
            values["teachlab_gpus_held"][()] = float(held)
            values["teachlab_gpus_free"][()] = float(max(0, len(devices) - held))
            for course in catalog.courses.values():
                if course.gpu:
                    since, end = term_window(course.term.start, course.term.end)
                    until = min(datetime.now(timezone.utc), end)
                    rows = await run_blocking(LEDGER, ledger.usage_report, course=course.slug, since=since, until=until)
                    values["teachlab_gpu_hours_used"][(course.slug,)] = sum(row.gpu_seconds for row in rows) / 3600
        if self._warm_records is None:
            self._warm_records = await run_blocking(LEDGER, WarmRecords.open, self.ledger_url)
        values["teachlab_warm_servers"] = await run_blocking(LEDGER, self._warm_records.outcome_counts)
        self.values = values
