"""pgBackRest on the cluster: an online backup while writing, then a point-in-time restore to a fresh node."""
from __future__ import annotations

import datetime as dt
import time

import pytest

from personalizer.continuity import pitr
from personalizer.continuity.cluster import free_port_base


@pytest.fixture(scope="module")
def cluster(pg_session_cluster):
    """The session's cluster (these tests kill nothing), not a module's own."""
    return pg_session_cluster


def _archived(cluster, wal: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = cluster.psql("SELECT COALESCE(last_archived_wal, '') FROM pg_stat_archiver", database="postgres")
        if last.strip() >= wal:
            return
        time.sleep(0.3)
    raise AssertionError(f"WAL {wal} not archived within {timeout} s")


def test_online_backup_then_point_in_time_restore_to_a_fresh_node(cluster, tmp_path):
    cluster.psql("CREATE TABLE pitr_rows (v int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
    cluster.psql("INSERT INTO pitr_rows (v) SELECT generate_series(1, 10)")
    info = pitr.backup(cluster)
    assert info["type"] == "full"
    cluster.psql("INSERT INTO pitr_rows (v) SELECT generate_series(11, 20)")
    time.sleep(1.1)
    target = dt.datetime.now(dt.timezone.utc)   # the moment to go back to: 20 rows acknowledged
    time.sleep(1.1)
    cluster.psql("INSERT INTO pitr_rows (v) SELECT generate_series(21, 30)")   # a mistake after the target
    wal = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())", database="postgres").strip()
    _archived(cluster, wal)

    run_dir = cluster.run_dir / "restored"
    node = pitr.restore(cluster, run_dir, free_port_base(start=30000), target_time=target)
    try:
        assert node.psql("SELECT count(*), max(v) FROM pitr_rows") == "20|20"
        # the restored node is a primary of its own: it takes writes, and the cluster is untouched
        node.psql("INSERT INTO pitr_rows (v) VALUES (1000)")
        assert cluster.psql("SELECT count(*) FROM pitr_rows").strip() == "30"
    finally:
        node.stop()


def test_restore_refuses_a_folder_in_use(cluster, tmp_path):
    d = cluster.run_dir / "busy"
    d.mkdir()
    (d / "something").write_text("x")
    try:
        pitr.restore(cluster, d, 1)
    except pitr.ClusterError as exc:
        assert "not empty" in str(exc)
    else:
        raise AssertionError("a restore into a non-empty folder must be refused")
