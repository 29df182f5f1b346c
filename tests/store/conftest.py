"""The store implementations the contract suite runs over.

``STORES`` names each implementation and how to open a fresh, empty one; ``open_store`` is the fixture the
contract tests use (parametrized: every test runs once per implementation). The continuity work (issue 17)
adds PostgreSQL here: an entry whose opener fails, never skips, under CI when PostgreSQL is missing.
"""
from __future__ import annotations

import contextlib
import itertools

import pytest

from personalizer.store import MemoryRequestStore, SqliteRequestStore
from tests.support import pg_cluster


class Clock:
    """A settable clock: the store's time (created_at, claim times, …) comes from here."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


_counter = itertools.count()


async def _sqlite(tmp_path, clock):
    return await SqliteRequestStore.open(tmp_path / f"requests-{next(_counter)}.sqlite", synchronous="OFF",
                                         clock=clock)


async def _memory(tmp_path, clock):
    return MemoryRequestStore(clock=clock)


async def _postgresql(tmp_path, clock, cluster):
    from personalizer.store.postgres import PostgresRequestStore
    return await PostgresRequestStore.open(pg_cluster.fresh_dsn(cluster), clock=clock, max_connections=4)


STORES = {"sqlite": _sqlite, "memory": _memory, "postgresql": _postgresql}

# pg_session_cluster: tests/support/pg_cluster.py (a plugin of tests/conftest.py)


@pytest.fixture(params=sorted(STORES))
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_store(store_kind, tmp_path, clock, request):
    """``async with open_store() as store``: a fresh store of this run's implementation, closed after."""
    extra = (request.getfixturevalue("pg_session_cluster"),) if store_kind == "postgresql" else ()

    @contextlib.asynccontextmanager
    async def opener():
        store = await STORES[store_kind](tmp_path, clock, *extra)
        try:
            yield store
        finally:
            await store.close()
    return opener
