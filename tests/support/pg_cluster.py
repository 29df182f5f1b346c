"""A Patroni cluster for a whole test session, and a fresh PostgreSQL schema per test (the contract suite).

Loaded as a pytest plugin (tests/conftest.py): the ``pg_session_cluster`` fixture is one cluster for the
whole session, shared by the store contract suite and the continuity tests that do not kill nodes.
``session_cluster()`` brings up ``personalizer.continuity.cluster`` once in a folder under /tmp that its
unprivileged user can reach; ``stop()`` stops every process and removes the folder. ``fresh_dsn(c)`` makes
an empty schema and returns the application's DSN with that schema as its search path (migrations then
create the tables there), so each test starts empty at the cost of one CREATE SCHEMA.
"""
from __future__ import annotations

import itertools
import os
import tempfile

import pytest

from personalizer.continuity.cluster import Cluster, free_port_base, missing_tools

_schemas = itertools.count(1)


def missing() -> list[str]:
    return missing_tools()


def session_cluster() -> Cluster:
    run_dir = tempfile.mkdtemp(prefix="cns-cluster-")
    os.chmod(run_dir, 0o755)
    c = Cluster(run_dir, port_base=free_port_base(start=27000))
    try:
        c.up(timeout=90)
    except BaseException:
        c.down(purge=True)
        raise
    return c


def fresh_dsn(c: Cluster) -> str:
    import psycopg

    schema = f"t{os.getpid()}_{next(_schemas)}"
    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return c.dsn() + f" options='-csearch_path={schema}'"


@pytest.fixture(scope="session")
def pg_session_cluster():
    """etcd + Patroni + PostgreSQL 15 primary and synchronous standby, once per session (issue 17)."""
    from tests.conftest import require
    require(missing())
    c = session_cluster()
    yield c
    c.down(purge=True)
