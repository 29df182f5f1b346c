"""pgBackRest on the local Patroni cluster: online full backups and point-in-time restore to a fresh node.

Every node archives its WAL to one repository (``<run>/backups``; ``archive_command`` set per node by
``cluster``). ``backup(cluster)`` creates the stanza when needed and takes a full online backup from the
current primary. ``restore(cluster, target_dir, port, target_time=)`` restores the latest backup into an
empty folder, replays the archived WAL up to ``target_time`` (or to the end of the archive) and starts
that PostgreSQL alone (no Patroni, archiving off, so it never writes into the cluster's repository): a
fresh node to check or to rebuild from. Standard library only; runs pgbackrest and pg_ctl as the
cluster's user.
"""
from __future__ import annotations

import datetime as _dt
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from personalizer.continuity.cluster import PG_BIN, SCOPE, Cluster, ClusterError


def _as_user(c: Cluster, argv: list[str], *, timeout: float = 300, env: dict | None = None) -> str:
    account = c._account()
    kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
                "PGPASSWORD": c.secrets()["superuser"], **(env or {})}
    if account:
        full_env["HOME"] = account.pw_dir
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=str(c.run_dir),
                       **kwargs)
    if r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise ClusterError(f"{Path(argv[0]).name} {argv[2] if len(argv) > 2 else ''} failed: "
                           f"{last[-1] if last else r.returncode}")
    return r.stdout


def _conf(c: Cluster) -> Path:
    leader = (c.cluster_json() or {}).get("leader")
    if not leader:
        raise ClusterError("no primary: bring the cluster up first (scripts/cluster status)")
    return c.write_pgbackrest_conf(leader)


def backup(c: Cluster, *, kind: str = "full") -> dict:
    """A full (or diff/incr) online backup from the primary; returns pgBackRest's info on it."""
    import json

    conf = _conf(c)
    base = ["pgbackrest", f"--config={conf}", f"--stanza={SCOPE}"]
    _as_user(c, base + ["stanza-create"])
    _as_user(c, base + [f"--type={kind}", "backup"], timeout=900)
    info = json.loads(_as_user(c, base + ["--output=json", "info"]))
    return info[0]["backup"][-1]


@dataclass
class RestoredNode:
    data_dir: Path
    port: int
    cluster: Cluster

    def psql(self, sql: str, database: str = "cns") -> str:
        env = {**os.environ, "PGPASSWORD": self.cluster.secrets()["superuser"]}
        r = subprocess.run([str(PG_BIN / "psql"), "-XAtq", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                            "-d", database, "-c", sql], capture_output=True, text=True, env=env, timeout=30)
        if r.returncode != 0:
            raise ClusterError(f"psql on the restored node failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def stop(self) -> None:
        try:
            _as_user(self.cluster, [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"],
                     timeout=60)
        except ClusterError:
            pass


def restore(c: Cluster, target_dir: Path, port: int, *, target_time: _dt.datetime | None = None,
            timeout: float = 120) -> RestoredNode:
    """Restore into the empty ``target_dir`` and start it on ``port`` once recovery reached the target."""
    target_dir = Path(target_dir)
    if target_dir.exists() and any(target_dir.iterdir()):
        raise ClusterError(f"{target_dir} is not empty: a restore goes into a fresh folder")
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    c._chown(target_dir, c._account())
    conf = _conf(c)
    argv = ["pgbackrest", f"--config={conf}", f"--stanza={SCOPE}", "restore", f"--pg1-path={target_dir}",
            "--archive-mode=off"]
    if target_time is not None:
        argv += ["--type=time", f"--target={target_time.astimezone(_dt.timezone.utc).isoformat(sep=' ')}",
                 "--target-action=promote"]
    else:
        argv += ["--type=default"]
    _as_user(c, argv, timeout=900)
    opts = (f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={target_dir} "
            f"-c archive_mode=off -c synchronous_standby_names='' -c hot_standby=on "
            f"-c primary_conninfo='' -c primary_slot_name=''")
    _as_user(c, [str(PG_BIN / "pg_ctl"), "-D", str(target_dir), "-l", str(target_dir / "restore.log"), "-o", opts,
                 "-w", "-t", str(int(timeout)), "start"], timeout=timeout + 10)
    node = RestoredNode(target_dir, port, c)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:   # promoted: recovery reached its target and ended
        try:
            if node.psql("SELECT pg_is_in_recovery()", database="postgres") == "f":
                return node
        except ClusterError:
            pass
        time.sleep(0.3)
    node.stop()
    raise ClusterError(f"the restored node did not finish recovery within {timeout:.0f} s; see "
                       f"{target_dir / 'restore.log'}")


__all__ = ["backup", "restore", "RestoredNode"]
