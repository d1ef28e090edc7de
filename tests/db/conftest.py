"""A real PostgreSQL server for the whole session (Debian's packages), one fresh database per test."""

from __future__ import annotations

import uuid

import pytest

from support.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres) -> str:
    return postgres.create_database(f"ledger_{uuid.uuid4().hex[:10]}")
